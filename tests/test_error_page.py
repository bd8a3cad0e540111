"""Errors of the HTML pages as a page for a browser, JSON for everyone else (tally/web/error_page.py)."""

from __future__ import annotations

import html
import re

import psycopg
import pytest
import webtest

import jobs
from tally import db
from tally.config import from_env
from tally.db import web_pool
from tally.web.app import build_app
from tests.test_web import OWNER, TOKEN, make_client

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
SHARE = "error-share-token"


@pytest.fixture
def owner(database_url, pool) -> webtest.TestApp:
    return make_client(database_url, pool, owner=True, ADMIN_TOKEN=TOKEN, PUBLIC_DASHBOARD="false")


def ways_out(page: str) -> dict[str, str]:
    """{label: address} of the page's links."""
    links = re.findall(r'<li><a href="([^"]*)">([^<]*)</a></li>', page)
    return {html.unescape(label): html.unescape(href) for href, label in links}


def test_a_dashboard_filter_past_the_time_limit_is_a_page_with_ways_out(database_url, conn, monkeypatch):
    conn.execute(
        "INSERT INTO page_views (path, country, viewed_at) SELECT '/p' || n % 50, 'DE', now() - n * "
        "interval '1 minute' FROM generate_series(1, 5000) n"
    )
    monkeypatch.setitem(db.WEB_SESSION_SETTINGS, "statement_timeout", "1ms")
    settings = from_env(
        {"DATABASE_URL": database_url, "ADMIN_TOKEN": TOKEN, "PUBLIC_DASHBOARD": "false"}, process_type="web"
    )
    with web_pool(settings) as hurried:
        client = webtest.TestApp(build_app(settings, hurried, jobs.app), extra_environ=OWNER)
        page = client.get("/?days=30&country=DE", headers=BROWSER, status=503)
        assert page.content_type == "text/html" and page.headers["Vary"] == "Accept"
        assert "took longer than" in page.text and "narrower filter" in page.text
        assert ways_out(page.text) == {
            "Try again": "/?days=30&country=DE",
            "The last 7 days": "/?country=DE&days=7",
            # Not "Without days=30": without it is the same window, and as slow.
            "Without country=DE": "/?days=30",
            "The dashboard, as it opens": "/",
        }
        # Not a browser: the contract's JSON, as before.
        assert "took longer than" in client.get("/?days=30&country=DE", status=503).json["error"]
        # Already 7 days or fewer: no link to the same page under another name.
        page = client.get("/?days=7&country=DE", headers=BROWSER, status=503)
        assert "The last 7 days" not in ways_out(page.text)


def test_a_bad_parameter_is_a_page_whose_links_keep_the_share_token_and_escape_values(database_url, pool):
    reader = make_client(database_url, pool, ADMIN_TOKEN=TOKEN, SHARE_TOKEN=SHARE, PUBLIC_DASHBOARD="false")
    hostile = '"><script>alert(1)</script>'
    page = reader.get("/", {"share": SHARE, "days": "abc", "path": hostile}, headers=BROWSER, status=400)
    assert "days must be a whole number" in page.text
    assert "<script>" not in page.text
    assert ways_out(page.text) == {
        "Without days=abc": f"/?share={SHARE}&path=%22%3E%3Cscript%3Ealert%281%29%3C%2Fscript%3E",
        f"Without path={hostile}": f"/?share={SHARE}&days=abc",
        "The dashboard, as it opens": f"/?share={SHARE}",
    }


def test_the_jobs_pages_errors_are_pages_too(owner):
    page = owner.get("/jobs/999999", headers=BROWSER, status=404)
    assert "There is no job 999999." in page.text and ways_out(page.text) == {"The jobs page": "/jobs"}
    page = owner.get("/jobs?status=lost", headers=BROWSER, status=400)
    assert "status must be one of" in page.text
    assert ways_out(page.text) == {"The jobs page, as it opens": "/jobs"}


def test_an_address_that_is_not_utf8_is_a_page_for_a_browser_too(owner):
    """The query is refused before any route (tally/web/headers.py): a browser got JSON."""
    for address in ("/?path=%FF", "/jobs?status=%FF", "/jobs/1?x=%FF", "/reports/preview?site=%FF"):
        page = owner.get(address, headers=BROWSER, status=400)
        assert page.content_type == "text/html", address
        assert "query string is not valid UTF-8" in page.text, address
    api = owner.get("/api/stats?path=%FF", headers=BROWSER, status=400)
    assert api.json == {"error": "The address's query string is not valid UTF-8."}
    assert owner.get("/?path=%FF", status=400).json["error"]  # no Accept: JSON


def test_the_api_and_clients_that_do_not_ask_for_html_keep_json(owner):
    assert owner.get("/api/stats?days=abc", headers=BROWSER, status=400).content_type == "application/json"
    assert owner.get("/?days=abc", status=400).json == {"error": "days must be a whole number from 1 to 366."}
    assert owner.get("/jobs/999999", headers={"Accept": "*/*"}, status=404).json["error"]


def test_a_reader_without_the_token_still_gets_the_login_form(database_url, pool):
    stranger = make_client(database_url, pool, ADMIN_TOKEN=TOKEN, PUBLIC_DASHBOARD="false")
    page = stranger.get("/?days=abc", headers=BROWSER, status=401)
    assert 'id="login-form"' in page.text and "error-message" not in page.text


def test_the_report_preview_answers_a_browser_with_a_page_and_the_way_to_the_dashboard(owner):
    page = owner.get("/reports/preview?site=a:b&period=weekly", headers=BROWSER, status=400)
    assert page.content_type == "text/html" and "site must be one host name" in page.text
    assert ways_out(page.text) == {
        "Without site=a:b": "/reports/preview?period=weekly",
        "Without period=weekly": "/reports/preview?site=a%3Ab",
        "The dashboard": "/",
    }
    assert owner.get("/reports/preview?site=a:b", status=400).json["error"]  # no Accept: JSON


def test_an_address_with_no_page_is_a_page_for_a_browser_and_json_for_the_rest(owner):
    """`/jobs/abc` (a job's page wants a number) answered a browser with JSON; the API stays JSON."""
    page = owner.get("/jobs/abc", headers={"Accept": "text/html"}, status=404)
    assert page.content_type == "text/html" and "There is nothing at this address." in page.text
    assert 'href="/jobs"' in page.text and 'href="/"' in page.text
    assert owner.get("/nowhere", headers={"Accept": "text/html"}, status=404).content_type == "text/html"
    assert owner.get("/jobs/abc", status=404).json == {"error": "There is nothing at this address."}
    api = owner.get("/api/nowhere", headers={"Accept": "text/html"}, status=404)
    assert api.json == {"error": "There is nothing at this address."}


def test_a_dashboard_that_meets_an_outage_keeps_refreshing_itself(owner, database_url):
    """The dashboard reloads itself every 30 s; a reload that meets a 503 (a database restart,
    a locked table) must keep reloading, or a screen left open shows the error until someone
    clicks, long after the database is back. A 400 is not retried: it will not change."""
    with psycopg.connect(database_url) as locker:
        locker.execute("LOCK TABLE page_view_day_values IN ACCESS EXCLUSIVE MODE")
        page = owner.get("/?days=30", headers=BROWSER, status=503)
    assert "locked" in page.text
    assert re.search(r'<meta http-equiv="refresh" content="30">', page.text)
    bad = owner.get("/?days=abc", headers=BROWSER, status=400)
    assert "http-equiv" not in bad.text


def test_a_count_too_slow_is_not_run_again_every_30_seconds(database_url, conn, monkeypatch):
    """A filter that passed the statement timeout (the busiest country of a month at 1M views)
    takes as long at the next reload: a tab left open on its page ran the same 5 s count every
    35 s, for as long as it stayed open, in one of the web's two read turns. Its page reloads
    after the Retry-After the answer gives (scripts read it too), not every 30 s."""
    monkeypatch.setitem(db.WEB_SESSION_SETTINGS, "statement_timeout", "1ms")
    conn.execute(
        "INSERT INTO page_views (path, country, viewed_at) SELECT '/p' || n % 50, 'DE', now() - n * "
        "interval '1 minute' FROM generate_series(1, 5000) n"
    )
    settings = from_env(
        {"DATABASE_URL": database_url, "ADMIN_TOKEN": TOKEN, "PUBLIC_DASHBOARD": "false"}, process_type="web"
    )
    with web_pool(settings) as hurried:
        client = webtest.TestApp(build_app(settings, hurried, jobs.app), extra_environ=OWNER)
        api = client.get("/api/stats?days=30&country=DE", status=503)
        wait = int(api.headers["Retry-After"])
        assert wait >= 300 and "took longer than" in api.json["error"]
        page = client.get("/?days=30&country=DE", headers=BROWSER, status=503)
        assert f'<meta http-equiv="refresh" content="{wait}">' in page.text
        assert 'content="30"' not in page.text
