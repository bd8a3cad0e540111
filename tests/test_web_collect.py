"""Collecting from websites through the real WSGI app: POST /api/collect, GET /tally.js,
sites, crawlers and visitors (issue 11), on the session's database. The clients send the
owner's token (stats are private); /api/collect needs none and ignores it."""

from __future__ import annotations

import gzip
import io
import json
import logging
import socket
import subprocess
import time
import wsgiref.util
from pathlib import Path

import psycopg
import pytest
import webtest

from tally.sites import DEFAULT_SITE
from tally.web.collect import MAX_BODY_BYTES
from tally.web.tracker import SOURCE, served_source
from tally.web.visitors import client_address, hashed
from tests.conftest import free_port
from tests.test_jobs import defer, run_queued_jobs
from tests.test_web import TOKEN, make_client, roll_up, stored

BROWSER = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
)
OTHER_BROWSER = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1) AppleWebKit/605.1.15 (KHTML, like Gecko) Safari/605.1.15"
)
ADDRESS = "203.0.113.77"
OTHER_ADDRESS = "198.51.100.23"


def sites_client(database_url: str, pool) -> webtest.TestApp:
    """The app as the owner reads it, accepting views of three sites only."""
    sites = "example.com,www.example.com,shop.example.org"
    return make_client(database_url, pool, owner=True, ADMIN_TOKEN=TOKEN, SITES=sites)


@pytest.fixture
def client(database_url, pool):
    return sites_client(database_url, pool)


@pytest.fixture
def open_client(database_url, pool):
    """SITES unset: any site is accepted."""
    return make_client(database_url, pool, owner=True, ADMIN_TOKEN=TOKEN)


def beacon(
    client, url: str, referrer: str | None = "", *, agent: str = BROWSER, address: str = ADDRESS, **kw
):
    """Send what tally.js sends: a text/plain body, from a browser behind a router."""
    headers = {"User-Agent": agent, "X-Forwarded-For": address, "Origin": "https://example.com"}
    body = json.dumps({"url": url, "referrer": referrer})
    return client.post("/api/collect", body, headers=headers, content_type="text/plain;charset=UTF-8", **kw)


def rows(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute("SELECT site, path, source, referrer FROM page_views ORDER BY id").fetchall()


# --- storing a view -----------------------------------------------------------------------------


def test_a_beacon_stores_its_site_path_source_and_referrer(client, conn):
    response = beacon(
        client,
        "https://WWW.Example.com:8443/blog/post?utm_source=newsletter&x=1#top",
        "https://news.ycombinator.com/item?id=42&token=secret",
    )
    assert response.status_int == 201 and response.json == {"stored": 1}
    assert response.headers["Access-Control-Allow-Origin"] == "https://example.com"  # the page's
    assert rows(conn) == [
        ("www.example.com", "/blog/post", "newsletter", "https://news.ycombinator.com/item")
    ]
    assert conn.execute("SELECT visitor IS NOT NULL FROM page_views").fetchone()[0]


@pytest.mark.parametrize(
    ("query", "source"),
    [("?ref=producthunt", "producthunt"), ("?source=rss", "rss"), ("?utm_source=a&ref=b", "a"), ("", None)],
)
def test_the_source_comes_from_utm_source_ref_or_source(client, conn, query, source):
    beacon(client, f"https://example.com/{query}", status=201)
    assert rows(conn)[0][2] == source


@pytest.mark.parametrize(
    ("query", "source"),
    [("?utm_source=%0A&ref=hn", "hn"), ("?utm_source=" + "x" * 300, "x" * 256), ("?utm_source=%0A", None)],
)
def test_a_source_no_one_can_read_is_left_out_never_the_view(client, conn, query, source):
    """A stray newline in a mail's link, or a source past 256 characters: the view is stored
    (it was a 400, and the visitor's view lost), its source cut or left out as medium's is."""
    beacon(client, f"https://example.com/{query}", status=201)
    assert rows(conn)[0][2] == source


def test_a_long_query_string_loses_no_view(client, conn):
    """A shop's filters (or an app's state) make a page's address longer than the 2,048
    characters kept of a path: the view is stored all the same, and so is the next page's, whose
    referrer is that address. Only what is kept (the path, the referrer without its query) must
    fit; a referrer whose path alone is too long keeps its origin, which is what stats report."""
    filters = "&filters=" + "color%3Ared%2Cblue%2Csize%3Am%2C" * 70  # 2,240 characters
    shoes = "https://example.com/shoes?utm_source=ads" + filters
    beacon(client, shoes, status=201)
    beacon(client, "https://example.com/cart", shoes, status=201)
    beacon(client, "https://example.com/a", "https://ref.test/" + "p" * 3000 + "?q=1", status=201)
    assert rows(conn) == [
        ("example.com", "/shoes", "ads", None),
        ("example.com", "/cart", None, "https://example.com/shoes"),
        ("example.com", "/a", None, "https://ref.test/"),
    ]
    response = beacon(client, "https://example.com/" + "p" * 3000 + "?q=1", status=400)
    assert "longer than 2048" in response.json["error"] and len(rows(conn)) == 3


def test_a_path_is_stored_as_a_browser_sends_it_however_it_was_sent(client, conn):
    """Browsers encode every character past ASCII (`/caf%C3%A9`); a server's framework may send
    the page decoded (`/café`), a link may write its escapes in lower case: one page, one row,
    stored, listed and exported as browsers send it, and found by a filter in any of the forms
    (the dashboard shows it as it reads), with views an import inserted by SQL as the page
    reads. The server's view has no visitor id."""
    page = "/caf%C3%A9/%E6%97%A5%E6%9C%AC"
    beacon(client, f"https://example.com{page}?utm_source=x", status=201)
    beacon(client, "https://example.com/café/日本", status=201)
    beacon(client, "https://example.com/caf%c3%a9/%e6%97%a5%e6%9c%ac", status=201)
    client.post_json("/api/pageviews", {"path": "/café/日本", "site": "example.com"}, status=201)
    assert [row[1] for row in rows(conn)] == [page] * 4
    # An import by SQL stores what it is given: a row of its own, which a filter finds too.
    conn.execute("INSERT INTO page_views (site, path) VALUES ('example.com', '/café/日本')")
    stats = "/api/stats?days=1&site=example.com"
    for _ in range(2):  # in the tail, then rolled up
        assert client.get(stats).json["top_paths"] == [
            {"path": page, "views": 4, "visitors": 1},
            {"path": "/café/日本", "views": 1, "visitors": 0},
        ]
        for path in (page, "/café/日本", "/caf%c3%a9/%e6%97%a5%e6%9c%ac", "/café/%E6%97%A5%E6%9C%AC"):
            assert client.get(stats, {"path": path}).json["total_views"] == 5, path
            assert client.get(stats, {"goal_path": path}).json["visitors"] == 1, path
        assert f"{page},4,1" in client.get("/api/export?days=1&site=example.com").text
        filtered_export = client.get(
            "/api/export", {"days": "1", "site": "example.com", "path": "/café/日本"}
        )
        assert f"{page},4,1" in filtered_export.text and "/café/日本,1,0" in filtered_export.text
        roll_up(conn)


def test_a_path_too_long_once_encoded_is_stored_as_sent(client, conn):
    """2,000 characters past ASCII fit the limit as sent, not encoded (six characters each): the
    view is kept as sent, not lost, and a filter as sent finds it."""
    long = "/" + "é" * 2000
    client.post_json("/api/pageviews", {"path": long, "site": "example.com"}, status=201)
    beacon(client, "https://example.com" + long, status=201)
    assert [row[1] for row in rows(conn)] == [long, long]
    assert client.get("/api/stats?days=1&site=example.com", {"path": long}).json["total_views"] == 2


def test_the_referrer_keeps_no_user_name_or_password(client, conn):
    beacon(client, "https://example.com/", "https://user:pw@Ref.Test:8443/x?q=1#f", status=201)
    beacon(client, "https://example.com/", "http://me@[2001:db8::1]/p", status=201)
    assert [row[3] for row in rows(conn)] == ["https://ref.test:8443/x", "http://[2001:db8::1]/p"]


def test_json_is_accepted_as_well_as_text(client, conn):
    headers = {"User-Agent": BROWSER}
    client.post_json("/api/collect", {"url": "https://example.com/a"}, headers=headers, status=201)
    assert rows(conn) == [("example.com", "/a", None, None)]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "says"),
    [
        ('{"url": "https://example.com/"}', "application/x-www-form-urlencoded", 415, "text/plain"),
        ("not json", "text/plain", 400, "must be JSON"),
        ("[1, 2]", "text/plain", 400, "JSON object"),
        ('{"referrer": ""}', "text/plain", 400, '"url" is missing'),
        ('{"url": 5}', "text/plain", 400, '"url" must be a string'),
        ('{"url": "ftp://example.com/"}', "text/plain", 400, "http or https"),
        ('{"url": "/relative"}', "text/plain", 400, "http or https"),
        ('{"url": "https://exa mple.com/"}', "text/plain", 400, "host name"),
        ('{"url": "https:// example.com/"}', "text/plain", 400, "host name"),  # spaces were stripped
        ('{"url": "https://example.com\u3000/"}', "text/plain", 400, "host name"),
        ('{"url": "https://example.com:99999/"}', "text/plain", 400, "not a valid URL"),
        ('{"url": "https://example.com/", "extra": 1}', "text/plain", 400, 'Unknown field "extra"'),
        ('{"url": "https://example.com/\\u0000"}', "text/plain", 400, "control character"),
        ('{"url": "https://example.com/", "referrer": "not a url"}', "text/plain", 400, '"referrer" must be'),
        ('{"url": "https://example.com/", "referrer": 3}', "text/plain", 400, '"referrer" must be a string'),
        ('{"url": "https://example.com/' + "a" * 3000 + '"}', "text/plain", 400, "longer than"),
        ("\xff", "text/plain", 400, "UTF-8"),
    ],
)
def test_bad_input_is_refused_clearly_and_stores_nothing(client, conn, body, content_type, status, says):
    response = client.post(
        "/api/collect",
        body.encode("latin-1") if body == "\xff" else body.encode(),
        headers={"User-Agent": BROWSER},
        content_type=content_type,
        status=status,
    )
    assert says in response.json["error"]
    assert response.headers["Access-Control-Allow-Origin"] == "*"  # the page's script may read why
    assert stored(conn) == 0


def test_a_body_over_the_limit_is_refused(client, conn):
    body = json.dumps(
        {"url": "https://example.com/", "referrer": "https://a.example/" + "x" * MAX_BODY_BYTES}
    )
    response = client.post("/api/collect", body, content_type="text/plain", status=413)
    assert "larger than" in response.json["error"] and stored(conn) == 0


def test_the_cors_preflight_is_answered(client):
    response = client.options(
        "/api/collect",
        headers={
            "Origin": "https://example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
        status=204,
    )
    # The page's origin back, with credentials allowed: sendBeacon with a JSON Blob sends them,
    # and a credentialed request refuses `*` (tests/test_collect_browser.py).
    assert response.headers["Access-Control-Allow-Origin"] == "https://example.com"
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert response.headers["Vary"] == "Origin"
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "Content-Type" in response.headers["Access-Control-Allow-Headers"]
    assert int(response.headers["Access-Control-Max-Age"]) > 0
    for origin in (None, "null", "https://example.com\x7f", "https://example.com/path"):
        headers = {"Access-Control-Request-Method": "POST", **({"Origin": origin} if origin else {})}
        response = client.options("/api/collect", headers=headers, status=204)
        assert response.headers["Access-Control-Allow-Origin"] == "*", origin
        assert "Access-Control-Allow-Credentials" not in response.headers, origin


def test_the_tracker_and_its_answers_load_on_a_cross_origin_isolated_page(client):
    """A page sent with Cross-Origin-Embedder-Policy: require-corp (as a site using
    SharedArrayBuffer is) loads another origin's no-cors script only with
    Cross-Origin-Resource-Policy: cross-origin: Chromium refused tally.js there
    (ERR_BLOCKED_BY_RESPONSE), so such a site counted nothing, and every beacon's answer too."""
    beacon_answer = beacon(client, "https://example.com/a", status=201)
    refused = beacon(client, "https://elsewhere.example/a", status=403)
    preflight = client.options("/api/collect", headers={"Origin": "https://example.com"}, status=204)
    for response in (client.get("/tally.js"), beacon_answer, refused, preflight):
        assert response.headers["Cross-Origin-Resource-Policy"] == "cross-origin"


# --- SITES ------------------------------------------------------------------------------------


def test_a_site_not_in_sites_is_refused_and_stores_nothing(client, conn):
    response = beacon(client, "https://evil.example.net/", status=403)
    assert "evil.example.net" in response.json["error"] and "SITES" in response.json["error"]
    beacon(client, "https://example.com.evil.net/", status=403)
    beacon(client, "https://sub.example.com/", status=403)  # only the names listed
    assert stored(conn) == 0
    beacon(client, "https://SHOP.example.org/cart", status=201)
    assert rows(conn) == [("shop.example.org", "/cart", None, None)]


def test_without_sites_any_site_is_accepted(open_client, conn):
    beacon(open_client, "https://anything.example/", status=201)
    assert rows(conn)[0][0] == "anything.example"


def test_server_side_senders_name_a_site_of_sites(client, conn):
    """With SITES set, a view that names no site is refused: the default site is not one of
    them, and anyone could otherwise post into the all-sites stats (1,000 views a request)."""
    client.post_json("/api/pageviews", [{"path": "/b", "site": "Example.COM"}], status=201)
    assert [row[:2] for row in rows(conn)] == [("example.com", "/b")]
    for body in ({"path": "/a"}, [{"path": "/a", "site": "example.com"}, {"path": "/a"}]):
        response = client.post_json("/api/pageviews", body, status=403)
        assert "Name the site" in response.json["error"]
    response = client.post_json("/api/pageviews", {"path": "/c", "site": "other.example"}, status=403)
    assert "SITES" in response.json["error"]
    # The refusal names the site the sender named, not "default" (which sorts first).
    response = client.post_json(
        "/api/pageviews", [{"path": "/c", "site": "other.example"}, {"path": "/d"}], status=403
    )
    assert "other.example" in response.json["error"]
    response = client.post_json("/api/pageviews", {"path": "/c", "site": "example.com:80"}, status=400)
    assert "host name" in response.json["error"]
    assert stored(conn) == 1


def test_without_sites_server_side_senders_may_name_no_site(open_client, conn):
    views = [{"path": "/a"}, {"path": "/b", "site": "example.com"}]
    open_client.post_json("/api/pageviews", views, status=201)
    assert [row[:2] for row in rows(conn)] == [(DEFAULT_SITE, "/a"), ("example.com", "/b")]


def test_the_default_site_is_the_columns_default(conn):
    conn.execute("INSERT INTO page_views (path, viewed_at) VALUES ('/import', now())")
    assert conn.execute("SELECT site FROM page_views").fetchone()[0] == DEFAULT_SITE


# --- crawlers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "agent",
    [
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0",
        "Mozilla/5.0 (compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)",
        "curl/8.5.0",
        "",
    ],
)
def test_crawlers_are_answered_counted_and_not_stored(client, conn, agent):
    response = beacon(client, "https://example.com/", agent=agent)
    assert response.status_int == 202 and response.json["stored"] == 0
    assert stored(conn) == 0
    assert conn.execute("SELECT site, hits FROM crawler_hits_daily").fetchall() == [("example.com", 1)]
    body = client.get("/api/stats?days=1").json
    assert body["crawlers_filtered"] == 1 and body["total_views"] == 0


# --- visitors -------------------------------------------------------------------------------


def test_five_hits_from_one_client_and_one_from_another_are_two_visitors(client, conn):
    for path in ("/", "/a", "/b", "/a", "/c"):
        # A client may put anything in X-Forwarded-For; the router appends the real address last.
        beacon(client, f"https://example.com{path}", address=f"10.0.0.{len(path)}, {ADDRESS}", status=201)
    beacon(client, "https://example.com/", address=OTHER_ADDRESS, status=201)
    body = client.get("/api/stats?days=1").json
    assert body["total_views"] == 6 and body["visitors"] == 2
    assert body["daily"][-1]["visitors"] == 2
    roll_up(conn)  # the same once rolled up, and with one more hit in the tail
    beacon(client, "https://example.com/d", status=201)
    body = client.get("/api/stats?days=1").json
    assert body["total_views"] == 7 and body["visitors"] == 2
    roll_up(conn)
    assert client.get("/api/stats?days=1").json["visitors"] == 2


def test_a_visitor_is_per_site_address_and_user_agent(client):
    beacon(client, "https://example.com/", status=201)
    beacon(client, "https://example.com/", agent=OTHER_BROWSER, status=201)
    beacon(client, "https://www.example.com/", status=201)
    assert client.get("/api/stats?days=1").json["visitors"] == 3
    assert client.get("/api/stats?days=1&site=example.com").json["visitors"] == 2


def test_the_client_address_is_the_routers_last_entry():
    assert client_address("1.1.1.1, 2.2.2.2", "10.0.0.1") == "2.2.2.2"
    assert client_address(None, "10.0.0.1") == "10.0.0.1"
    assert client_address(" , ", "10.0.0.1") == "10.0.0.1"


def test_a_new_salt_makes_new_visitor_ids():
    assert hashed(b"a" * 32, "example.com", ADDRESS, BROWSER) == hashed(
        b"a" * 32, "example.com", ADDRESS, BROWSER
    )
    assert hashed(b"a" * 32, "example.com", ADDRESS, BROWSER) != hashed(
        b"b" * 32, "example.com", ADDRESS, BROWSER
    )


def test_two_processes_making_the_days_salt_at_once_get_the_same_one(database_url, pool):
    """The first beacons of a day from two web processes (or two threads, as a page's view and
    its first event): one makes the salt, the other waits for it and uses it (it got a 500)."""
    import threading

    from tally.web.visitors import VisitorIds

    today = "(now() AT TIME ZONE 'UTC')::date"  # the day the web reads the salt of
    with psycopg.connect(database_url) as other:  # the other process's insert, not committed yet
        made = bytes(
            other.execute(f"INSERT INTO visitor_salts (day) VALUES ({today}) RETURNING salt").fetchone()[0]
        )
        got: list[bytes] = []
        waiting = threading.Thread(target=lambda: got.append(VisitorIds(pool)._learn().salt))
        waiting.start()
        waiting.join(0.5)
        assert waiting.is_alive()  # it waits on the other's row
        other.commit()
        waiting.join(10)
    assert got == [made]


def test_salts_rotate_daily_and_go_after_two_days(client, conn):
    conn.execute("INSERT INTO visitor_salts (day) SELECT current_date - n FROM generate_series(1, 5) n")
    from jobs import visitor_salts

    defer(visitor_salts.rotate_visitor_salts)
    run_queued_jobs()
    days = [row[0] for row in conn.execute("SELECT day - current_date FROM visitor_salts ORDER BY day")]
    assert days == [-1, 0, 1]  # yesterday's, today's, tomorrow's; older ones deleted
    salts = [bytes(row[0]) for row in conn.execute("SELECT salt FROM visitor_salts")]
    assert len(set(salts)) == 3 and all(len(salt) == 32 for salt in salts)
    beacon(client, "https://example.com/", status=201)
    assert conn.execute("SELECT count(*) FROM visitor_salts").fetchone()[0] == 3  # today's, as made


def test_the_clock_schedules_the_salt_rotation():
    import procrastinate

    import jobs
    from jobs import schedule
    from tally.config import from_env

    # An app of its own: registering on jobs.app would make every test worker defer ticks.
    app = procrastinate.App(connector=jobs.app.connector)
    schedule.register_schedule(app, from_env({"SALT_SCHEDULE": "7 * * * *"}, process_type="clock"))
    schedules = {task.task.name: task.cron for task in app.periodic_registry.periodic_tasks.values()}
    assert schedules["rotate_visitor_salts"] == "7 * * * *"


# --- no personal data ---------------------------------------------------------------------


def pg_dump(database_url: str, test_server) -> str:
    from tally import localdb

    bin_dir = test_server.bin_dir or Path(localdb.POSTGRES_VERSIONS[localdb.PG_VERSION])
    return subprocess.run(
        [str(bin_dir / "pg_dump"), "--no-owner", "--dbname", database_url],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def test_no_address_and_no_user_agent_reach_the_database_or_the_logs(
    client, conn, database_url, test_server, caplog
):
    caplog.set_level(logging.DEBUG)
    agent = BROWSER + " Unique/4242"
    for path in ("/", "/pricing"):
        beacon(client, f"https://example.com{path}", "https://www.google.com/", agent=agent, status=201)
    beacon(client, "https://example.com/", agent="Googlebot/2.1 Unique/4242", status=202)
    beacon(client, "https://bad.example/", agent=agent, status=403)
    client.post(
        "/api/collect",
        "{",
        headers={"User-Agent": agent, "X-Forwarded-For": ADDRESS},
        content_type="text/plain",
        status=400,
    )
    roll_up(conn)
    dump = pg_dump(database_url, test_server)
    assert "/pricing" in dump and "example.com" in dump  # the dump holds the views
    for secret in (ADDRESS, "Unique/4242", "Googlebot", "Chrome/120"):
        assert secret not in dump, secret
        assert secret not in caplog.text, secret


# --- stats, sites ----------------------------------------------------------------------------


def test_stats_are_per_site_or_for_all(client, conn):
    for url in ("https://example.com/a", "https://example.com/b", "https://www.example.com/a"):
        beacon(client, url, status=201)
    conn.execute("INSERT INTO page_views (path, viewed_at) VALUES ('/import', now())")  # the default site
    assert client.get("/api/stats?days=1").json["total_views"] == 4
    body = client.get("/api/stats?days=1&site=EXAMPLE.com").json
    assert body["site"] == "example.com" and body["total_views"] == 2
    assert {row["path"] for row in body["top_paths"]} == {"/a", "/b"}
    assert client.get(f"/api/stats?days=1&site={DEFAULT_SITE}").json["total_views"] == 1
    assert client.get("/api/stats?days=1&site=nothing.example").json["total_views"] == 0
    for bad in ("a/b", "example.com:80", "x" * 300):
        assert "site" in client.get(f"/api/stats?site={bad}", status=400).json["error"]


def test_sources_and_referrers_are_counted_by_name_and_domain(client, conn):
    beacon(client, "https://example.com/?utm_source=news", "https://www.google.com/search?q=x", status=201)
    beacon(client, "https://example.com/a?ref=hn", "https://news.ycombinator.com/", status=201)
    roll_up(conn)
    beacon(client, "https://example.com/b?utm_source=news", "https://google.co.uk/", status=201)
    beacon(client, "https://example.com/c", "https://www.example.com/a", status=201)  # the site's own
    beacon(client, "https://example.com/d", "https://duckduckgo.com/", status=201)
    beacon(client, "https://example.com/e", "https://WWW.Bing.com/search?q=tally", status=201)
    beacon(client, "https://example.com/f", "https://search.brave.com/search?q=tally", status=201)
    beacon(client, "https://example.com/g", "https://www.news.ycombinator.com/", status=201)
    # A search engine's other hosts are no search: mail, the browser maker's site.
    beacon(client, "https://example.com/h", "https://mail.google.com/mail/u/0/", status=201)
    beacon(client, "https://example.com/i", "https://brave.com/download/", status=201)
    beacon(client, "https://example.com/j", "https://uk.search.yahoo.com/search?p=tally", status=201)
    body = client.get("/api/stats?days=1&site=example.com").json
    assert body["top_sources"] == [
        {"source": "news", "views": 2, "visitors": 1},
        {"source": "hn", "views": 1, "visitors": 1},
    ]
    assert body["top_referrers"] == [
        # google.com (rolled up) and google.co.uk (not yet): one search engine, one visitor, under
        # its domain (DESIGN.md: referrers by domain)
        {"referrer": "google.com", "views": 2, "visitors": 1},
        {"referrer": "news.ycombinator.com", "views": 2, "visitors": 1},  # www. folded
        {"referrer": "bing.com", "views": 1, "visitors": 1},
        {"referrer": "brave.com", "views": 1, "visitors": 1},
        {"referrer": "duckduckgo.com", "views": 1, "visitors": 1},
        {"referrer": "mail.google.com", "views": 1, "visitors": 1},
        {"referrer": "search.brave.com", "views": 1, "visitors": 1},
        {"referrer": "search.yahoo.com", "views": 1, "visitors": 1},  # uk.search.yahoo.com
    ]
    for name in ("google.com", "Google"):  # as the API lists it, or as the dashboard does
        google = client.get(f"/api/stats?days=1&site=example.com&referrer={name}").json
        assert (google["total_views"], google["top_paths"], google["filters"]) == (
            2,
            [{"path": "/", "views": 1, "visitors": 1}, {"path": "/b", "views": 1, "visitors": 1}],
            {"referrer": "google.com"},
        )
    roll_up(conn)
    body = client.get("/api/stats?days=1&site=example.com").json
    assert body["top_referrers"][0] == {"referrer": "google.com", "views": 2, "visitors": 1}
    # A filter by any of its domains is the engine's, as the panel lists it.
    by_domain = client.get("/api/stats?days=1&site=example.com&referrer=google.co.uk").json
    assert (by_domain["filters"], by_domain["total_views"]) == ({"referrer": "google.com"}, 2)
    # People read its name: the dashboard, with a link that filters by it.
    page = client.get("/?days=1&site=example.com").text
    assert ">Google<" in page and "google.co.uk" not in page


def test_a_visitor_from_two_of_a_search_engines_domains_is_one_of_its_visitors(client, conn):
    """The search engine's name is stored with the view, so the rollups count an id once under
    it: in the tail, after a rollup, and with views of both sides of one."""
    beacon(client, "https://example.com/a", "https://www.google.de/", status=201)
    beacon(client, "https://example.com/b", "https://www.google.com/search?q=x", status=201)
    beacon(client, "https://example.com/c", "https://www.bing.com/", status=201)
    stored = conn.execute("SELECT path, search_engine FROM page_views ORDER BY path").fetchall()
    assert stored == [("/a", "Google"), ("/b", "Google"), ("/c", "Bing")]
    expected = [
        {"referrer": "google.com", "views": 2, "visitors": 1},
        {"referrer": "bing.com", "views": 1, "visitors": 1},
    ]
    assert client.get("/api/stats?days=1&site=example.com").json["top_referrers"] == expected
    roll_up(conn)
    assert client.get("/api/stats?days=1&site=example.com").json["top_referrers"] == expected
    beacon(client, "https://example.com/d", "https://google.co.uk/", status=201)
    google = {"referrer": "google.com", "views": 3, "visitors": 1}
    body = client.get("/api/stats?days=1&site=example.com").json
    assert (body["visitors"], body["top_referrers"][0]) == (1, google)
    roll_up(conn)
    body = client.get("/api/stats?days=1&site=example.com").json
    assert (body["visitors"], body["top_referrers"][0]) == (1, google)


def test_views_stored_without_a_search_engines_name_read_under_it(client, conn):
    """Views stored before the name was (or by SQL) keep their domain, read by name: each
    domain's visitors added up, as before."""
    conn.execute(
        "INSERT INTO page_views (site, path, referrer, visitor) VALUES"
        " ('example.com', '/a', 'https://google.de/', 7), ('example.com', '/b', 'https://google.fr/', 8)"
    )
    beacon(client, "https://example.com/c", "https://www.google.de/", status=201)
    roll_up(conn)
    body = client.get("/api/stats?days=1&site=example.com").json
    assert body["top_referrers"] == [{"referrer": "google.com", "views": 3, "visitors": 3}]
    google = client.get("/api/stats?days=1&site=example.com&referrer=Google").json
    assert google["total_views"] == 3
    assert [row["path"] for row in google["top_paths"]] == ["/a", "/b", "/c"]


def test_sites_lists_each_site_with_its_views(client, conn):
    beacon(client, "https://example.com/", status=201)
    beacon(client, "https://example.com/a", status=201)
    roll_up(conn)
    beacon(client, "https://example.com/b", status=201)
    beacon(client, "https://shop.example.org/", status=201)
    conn.execute("INSERT INTO page_views (path, viewed_at) VALUES ('/old', now() - interval '40 days')")
    assert client.get("/api/sites").json == {
        "days": 30,
        "sites": [{"site": "example.com", "views": 3}, {"site": "shop.example.org", "views": 1}],
    }


@pytest.mark.parametrize("rolled_up", [True, False])
def test_sites_leave_out_views_dated_ahead(client, conn, rolled_up):
    """A view dated days or centuries ahead (a clock far off, a backfill's typo) is of no day of
    the last 30: /api/sites counted every view from 30 days ago on, with no end."""
    beacon(client, "https://example.com/", status=201)
    conn.execute(
        "INSERT INTO page_views (site, path, viewed_at) VALUES"
        " ('example.com', '/', now() + interval '3 days'),"
        " ('ahead.example', '/', '8999-12-31 00:00+00')"
    )
    if rolled_up:
        roll_up(conn)
    assert client.get("/api/sites").json == {"days": 30, "sites": [{"site": "example.com", "views": 1}]}


@pytest.mark.parametrize("rolled_up", [True, False])
def test_sites_count_a_view_later_in_the_bucket_of_now_alike_rolled_up_or_not(client, conn, rolled_up):
    """A view dated minutes ahead, in the 15-minute bucket of now, counted once rolled up (the
    rollups' buckets were read up to the one of now, whole) and not in the tail (read up to now):
    both read to the end of the bucket of now. (Counting the bucket of now raw to now instead
    counted twice the views rolled up before migration 0005, by the hour, in the hour of now.)"""
    conn.execute(
        "INSERT INTO page_views (site, path, viewed_at) VALUES ('example.com', '/', now()),"
        " ('example.com', '/', date_bin('15 minutes', now(), '2000-01-01 00:00+00')"
        "   + interval '15 minutes' - interval '1 microsecond')"
    )
    if rolled_up:
        roll_up(conn)
    assert client.get("/api/sites").json == {"days": 30, "sites": [{"site": "example.com", "views": 2}]}


def test_the_dashboard_switches_sites_and_draws_visitors(client, conn):
    beacon(client, "https://example.com/", status=201)
    beacon(client, "https://example.com/a", address=OTHER_ADDRESS, status=201)
    beacon(client, "https://shop.example.org/", status=201)
    page = client.get("/?days=7&site=example.com").text
    assert 'data-site="shop.example.org"' in page and 'href="/?days=7&amp;site=shop.example.org"' in page
    assert 'id="total-views">2<' in page and 'id="total-visitors">2<' in page
    assert 'data-visitors="2"' in page
    assert 'id="total-views">3<' in client.get("/?days=7").text


# --- the tracker ---------------------------------------------------------------------------


def raw_get(app, path: str, environ: dict) -> tuple[str, dict, bytes]:
    """A GET straight through the WSGI app (WebTest would undo the gzip encoding)."""
    request = {"REQUEST_METHOD": "GET", "PATH_INFO": path, **environ}
    wsgiref.util.setup_testing_defaults(request)
    answer: dict = {}

    def start_response(status, headers, exc_info=None):
        answer.update(status=status, headers={name.lower(): value for name, value in headers})

    body = b"".join(app(request, start_response))
    return answer["status"], answer["headers"], body


def test_the_tracker_is_the_repositorys_source_small_and_cacheable(client):
    plain = client.get("/tally.js", headers={"Accept-Encoding": "identity"}, status=200)
    # The repository's readable source without its comments and indentation (no build step;
    # tests/test_collect_browser.py runs what is served in Chromium).
    assert plain.body == served_source(SOURCE.read_text()).encode()
    assert b"//" not in plain.body.replace(b"://", b"") and b"\n  " not in plain.body
    assert plain.headers["Content-Type"].startswith("text/javascript")
    assert "max-age" in plain.headers["Cache-Control"]
    status, headers, body = raw_get(client.app, "/tally.js", {"HTTP_ACCEPT_ENCODING": "gzip, br"})
    assert status == "200 OK"
    assert headers["content-encoding"] == "gzip" and headers["vary"] == "Accept-Encoding"
    assert gzip.decompress(body) == plain.body
    assert len(body) <= 1024, f"tally.js is {len(body)} bytes gzipped"  # DESIGN.md: at most 1 KB
    assert headers["etag"] != plain.headers["ETag"]
    client.get("/tally.js", headers={"If-None-Match": plain.headers["ETag"]}, status=304)
    again = client.get("/tally.js", headers={"If-None-Match": '"stale"'}, status=200)
    assert again.body == plain.body


def test_the_tracker_sends_text_plain_beacons_and_guards_automation_and_localhost():
    source = SOURCE.read_text()
    for needed in (
        "sendBeacon",
        "pushState",
        "pageshow",
        "prerenderingchange",
        "popstate",
        "navigator.webdriver",
        "data-allow-local",
        "file:",
        "localhost",
        "/api/collect",
    ):
        assert needed in source, needed
    assert "cookie" not in source.replace("No cookie", "") and "localStorage" not in source


# --- headers as real clients send them ----------------------------------------------------------

# As a WSGI server hands it over (latin-1 text of the bytes): "été" in Latin-1, not UTF-8.
NOT_UTF8_AGENT = "Mozilla/5.0 (Linux; Android 9) MyApp/1.2 (\xe9t\xe9 Unique/4242)"


def test_a_user_agent_that_is_not_utf8_is_counted_and_never_logged(client, conn, caplog):
    caplog.set_level(logging.DEBUG)
    beacon(client, "https://example.com/", agent=NOT_UTF8_AGENT, status=201)
    beacon(client, "https://example.com/a", agent=NOT_UTF8_AGENT, status=201)  # the same visitor
    beacon(client, "https://example.com/", agent="Googlebot/2.1 (\xff Unique/4242)", status=202)
    beacon(client, "https://example.com/", address=f"{OTHER_ADDRESS}\xff, \xe9\x00", status=201)
    body = client.get("/api/stats?days=1").json
    assert (body["total_views"], body["visitors"], body["crawlers_filtered"]) == (3, 2, 1)
    for secret in ("Unique/4242", "MyApp", ADDRESS, OTHER_ADDRESS):
        assert secret not in caplog.text, secret


def post_raw(app, environ: dict) -> str:
    """A POST straight through the WSGI app, its environ as given (WebTest sets Content-Length itself)."""
    body = json.dumps({"url": "https://example.com/"}).encode()
    request = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/api/collect",
        "CONTENT_TYPE": "text/plain",
        "HTTP_USER_AGENT": BROWSER,
        "wsgi.input": io.BytesIO(body),
        **environ,
    }
    wsgiref.util.setup_testing_defaults(request)
    answer: dict = {}
    b"".join(app(request, lambda status, headers, exc_info=None: answer.update(status=status)))
    return answer["status"]


@pytest.mark.parametrize("length", ["abc", "-1", "1e3", "9" * 40, " ", "\xff"])
def test_a_content_length_that_is_not_a_number_is_refused(client, conn, length):
    assert post_raw(client.app, {"CONTENT_LENGTH": length}).startswith("400 ")
    assert post_raw(client.app, {"CONTENT_LENGTH": "31"}).startswith("201 ")
    assert stored(conn) == 1


def test_requests_waitress_cannot_read_are_answered_in_json(start_process, conn):
    """DESIGN.md: all JSON, errors `{"error": ...}`. A Content-Length that is no number, a NUL
    in a header or a body declared past the server's limit never reach the app: waitress
    answered them in plain text."""
    port = free_port()
    web = start_process(["web.py"], {"PORT": str(port)})
    web.wait_for_line("Serving on")
    for headers, status in (
        (b"Content-Length: abc\r\n", 400),
        (b"Content-Length: 5\r\nContent-Length: 6\r\n", 400),
        (b"X-Odd: a\x00b\r\nContent-Length: 2\r\n", 400),
        (b"Content-Length: 3000000\r\n", 413),
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(b"POST /api/collect HTTP/1.1\r\nHost: localhost\r\n" + headers + b"\r\n{}")
            answer = sock.makefile("rb").read()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert int(head.split()[1]) == status, answer
        assert b"Content-Type: application/json" in head, answer
        assert json.loads(body)["error"], answer
        if status == 413:  # in the app's words, as its own 413 under the limit
            assert json.loads(body)["error"].startswith("The body is larger than 2097152 bytes"), answer
    assert stored(conn) == 0


def test_web_py_answers_any_header_bytes_and_never_logs_them(start_process, conn):
    """Through waitress, which hands headers over as latin-1: raw bytes on a socket."""
    port = free_port()
    web = start_process(["web.py"], {"PORT": str(port), "LOG_LEVEL": "DEBUG", "ADMIN_TOKEN": TOKEN})
    web.wait_for_line("Serving on")
    body = b'{"url": "https://example.com/"}'

    def send(request_line: bytes, headers: bytes, payload: bytes = b"") -> int:
        length = b"Content-Length: %d\r\n" % len(payload) if payload else b""
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(request_line + b"\r\nHost: localhost\r\nConnection: close\r\n" + length + headers)
            sock.sendall(b"\r\n" + payload)
            answer = sock.makefile("rb").readline()
        return int(answer.split()[1])

    collect = b"POST /api/collect HTTP/1.1"
    text = b"Content-Type: text/plain\r\n"
    secret_agent = b"User-Agent: Mozilla/5.0 MyApp/1.2 (\xe9\xe8 Unique/4242)\r\n"
    address = b"X-Forwarded-For: \xff\xfe, 198.51.100.99\r\n"
    assert send(collect, text + secret_agent + address, body) == 201
    assert send(collect, text + b"User-Agent: Googlebot/2.1 \xff Unique/4242\r\n" + address, body) == 202
    assert send(collect, text + b"User-Agent: " + b"A" * 100_000 + b"\r\n" + address, body) == 202
    commas = b"X-Forwarded-For: " + b"," * 50_000 + b"\r\n"
    assert send(collect, text + b"User-Agent: " + BROWSER.encode() + b"\r\n" + commas, body) == 201
    assert send(collect, b"Content-Type: text/\xe9\r\n" + secret_agent + address, body) == 415
    assert send(b"GET /api/stats HTTP/1.1", b"Authorization: Bearer \xe9\xff\r\n" + secret_agent) == 403
    assert send(b"GET / HTTP/1.1", b"Cookie: tally_session=\xe9\xff; x=\x80\r\n" + secret_agent) < 500
    assert send(b"GET /tally.js HTTP/1.1", b"Accept-Encoding: \xff\r\nIf-None-Match: \xe9\r\n") == 200
    assert send(b"OPTIONS /api/collect HTTP/1.1", b"Origin: https://\xe9.example\r\n" + secret_agent) == 204
    assert stored(conn) == 2
    time.sleep(0.5)  # the last lines written
    for secret in ("Unique/4242", "MyApp", "198.51.100.99", "Traceback"):
        assert secret not in web.output(), secret


def test_sites_says_the_days_it_counted(client, conn, monkeypatch):
    """The answer's `days` is the window the sites were counted over, not a second copy of it."""
    monkeypatch.setattr("tally.web.stats.SITES_DAYS", 2)
    beacon(client, "https://example.com/", status=201)
    conn.execute(
        "INSERT INTO page_views (site, path, viewed_at)"
        " VALUES ('example.com', '/', now() - interval '5 days')"
    )
    assert client.get("/api/sites").json == {"days": 2, "sites": [{"site": "example.com", "views": 1}]}
