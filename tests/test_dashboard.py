"""The dashboard as a newcomer reads it (WebTest): failures' times in the owner's zone as the jobs
page writes them, the tag to copy on a fresh database, and what filtered figures over a window
longer than RETENTION_DAYS leave out. Panels, filters and chips: tests/test_dashboard_filters.py."""

from __future__ import annotations

import datetime
import html
import re
import zoneinfo

import psycopg
import pytest

from tally.web import dashboard
from tests.test_web import TOKEN, make_client, make_failed_job


def failed_at(conn: psycopg.Connection, at: str) -> int:
    """A failed job whose failure is dated `at`."""
    job_id = make_failed_job(conn)
    conn.execute(
        "UPDATE procrastinate_events SET at = %s WHERE job_id = %s AND type = 'failed'", (at, job_id)
    )
    return job_id


def test_recent_failures_show_their_time_in_the_owners_zone_as_the_jobs_page_does(database_url, pool, conn):
    """The dashboard printed `2026-12-06T09:46:22.168789+00:00` where the jobs page said
    `2026-12-06 15:16:22 IST` for the same failure."""
    client = make_client(database_url, pool, owner=True, ADMIN_TOKEN=TOKEN, TIMEZONE="Asia/Kolkata")
    job_id = failed_at(conn, "2026-12-06 09:46:22.168789+00")
    page = client.get("/")
    row = page.html.find(id="recent-failures").find("a", string=str(job_id)).find_parent("tr")
    cells = [cell.text for cell in row.find_all("td")]
    assert cells[3] == "2026-12-06 15:16:22 IST"
    jobs_row = client.get("/jobs").html.find("tr", attrs={"data-job-id": str(job_id)})
    assert "2026-12-06 15:16:22 IST" in jobs_row.text


def test_a_fresh_dashboard_offers_a_tag_with_this_servers_own_address(database_url, pool):
    """The tag to copy named `/tally.js`, which on another site loads from that site."""
    client = make_client(database_url, pool, owner=True, ADMIN_TOKEN=TOKEN)
    page = client.get("/", extra_environ={"HTTP_HOST": "tally.test:5000"}).text
    assert "&lt;script defer src=&quot;http://tally.test:5000/tally.js&quot;&gt;&lt;/script&gt;" in page
    # Behind Heroku's router, the address the browser used.
    behind = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "stats.example.com"}
    page = client.get("/", headers=behind).text
    assert "&lt;script defer src=&quot;https://stats.example.com/tally.js&quot;&gt;&lt;/script&gt;" in page
    # A host header is the client's to choose: it is text on the page, never markup.
    page = client.get("/", headers={"X-Forwarded-Host": 'x"><b id="bold">y'}).text
    assert 'id="bold"' not in page and "&lt;b id=&quot;bold&quot;&gt;" in page


def test_a_window_of_one_day_says_day(database_url, pool):
    client = make_client(database_url, pool, owner=True, ADMIN_TOKEN=TOKEN)
    page = client.get("/?days=1").html
    assert page.find("title").text.startswith("Tally: 0 views in 1 day")
    cards = [card.find("span").text for card in page.select(".card")[:2]]
    assert cards == ["Views, 1 day", "Visitors, 1 day"]
    assert [card.find("span").text for card in client.get("/?days=7").html.select(".card")[:2]] == [
        "Views, 7 days",
        "Visitors, 7 days",
    ]


def test_the_configured_public_address_wins_over_the_requests(database_url, pool):
    """TALLY_URL, when the web is given it, is the address sites must use (a dashboard opened
    through an SSH tunnel or an internal name would otherwise offer that one)."""
    client = make_client(database_url, pool, owner=True, ADMIN_TOKEN=TOKEN)
    stats = client.get("/api/stats", {"compare": "previous"}).json
    with_address = dashboard.render(stats, None, None, "web.1", tally_url="https://tally.example.com")
    assert "src=&quot;https://tally.example.com/tally.js&quot;" in with_address
    configured = make_client(
        database_url, pool, owner=True, ADMIN_TOKEN=TOKEN, TALLY_URL="https://t.example.com/"
    )
    page = configured.get("/", extra_environ={"HTTP_HOST": "internal:5000"}).text
    assert "src=&quot;https://t.example.com/tally.js&quot;" in page and "internal:5000" not in page


def cut_day(zone: str, retention_days: int) -> set[str]:
    """The day, in `zone`, in which the raw views kept begin; both candidates, as midnight may
    pass while the page is counted."""
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=retention_days)
    return {
        (now + datetime.timedelta(seconds=seconds)).astimezone(zoneinfo.ZoneInfo(zone)).date().isoformat()
        for seconds in (0, 60)
    }


def retention_note(page: str) -> str | None:
    found = re.search(r'<p id="retention-note"[^>]*>(.*?)</p>', page, re.S)
    return html.unescape(re.sub(r"\s+", " ", found.group(1))).strip() if found else None


def insert_views(conn: psycopg.Connection, ages: list[str]) -> None:
    conn.cursor().executemany(
        "INSERT INTO page_views (path, country, visitor, viewed_at)"
        " VALUES ('/a', 'DE', 1, now() - %s::interval)",
        [(age,) for age in ages],
    )


@pytest.fixture
def kolkata(database_url, pool):
    return make_client(
        database_url, pool, owner=True, ADMIN_TOKEN=TOKEN, RETENTION_DAYS="10", TIMEZONE="Asia/Kolkata"
    )


def test_a_filtered_window_longer_than_the_raw_views_kept_says_so(kolkata, conn):
    """/?days=90&referrer=Bing said "239 views in 90 days" and "(a dash) vs 0 before", an empty chart
    before the cut, and nothing of why."""
    insert_views(conn, ["1 hour", "3 days"])
    page = kolkata.get("/", {"days": "30", "country": "DE"}).text
    note = retention_note(page)
    assert note is not None
    cut = re.fullmatch(
        r"Filtered figures count the raw views, kept 10 days: days before (\d{4}-\d\d-\d\d) count none\.",
        note,
    )
    assert cut and cut.group(1) in cut_day("Asia/Kolkata", 10)
    # The 30 days before lie wholly before the kept views: no "vs 0 before", as if none came.
    assert "vs 0 before" not in page
    assert page.count("period before not kept") == 6  # views, visitors, visits, bounce, duration, per visit
    assert 'id="views-change"' not in page

    # A week: the week before reaches past the 10 days kept, in part; its figures are real.
    page = kolkata.get("/", {"days": "7", "country": "DE"}).text
    assert retention_note(page) is not None
    assert "period before not kept" not in page and 'id="views-change"' in page

    # Within the days kept, or unfiltered (the rollups are kept 400 days): nothing to say.
    assert retention_note(kolkata.get("/", {"days": "3", "country": "DE"}).text) is None
    page = kolkata.get("/", {"days": "90"}).text
    assert retention_note(page) is None and "period before not kept" not in page


def test_no_worker_running_says_so_not_heartbeat_never(database_url, pool, conn):
    """procrastinate deletes a worker's row when it stops: the card said "heartbeat never" of a
    worker that beat a minute before."""
    client = make_client(database_url, pool, owner=True, ADMIN_TOKEN=TOKEN)
    conn.execute("DELETE FROM procrastinate_workers")
    card = client.get("/").html.find(id="worker-heartbeat").text
    assert card.startswith("no worker running") and "never" not in card
    conn.execute("INSERT INTO procrastinate_workers (last_heartbeat) VALUES (now() - interval '3 seconds')")
    assert client.get("/").html.find(id="worker-heartbeat").text == "heartbeat 3 s ago"


def test_the_visits_cards_write_the_period_before_as_they_write_this_one(database_url, pool, conn):
    """The bounce rate card read "2%" and "vs 0.25 before", the duration "203.9 s" and
    "vs 273.9 before": the period before's figures came as the API has them, a share and bare
    seconds."""
    client = make_client(database_url, pool, owner=True, ADMIN_TOKEN=TOKEN)
    # The week before: visitor 1 bounces, visitor 2 stays 90 s; this week: visitor 3 stays 60 s.
    conn.execute(
        "INSERT INTO page_views (path, visitor, viewed_at) VALUES"
        " ('/a', 1, now() - interval '9 days'),"
        " ('/a', 2, now() - interval '9 days'), ('/b', 2, now() - interval '9 days' + interval '90 seconds'),"
        " ('/a', 3, now() - interval '1 hour'), ('/b', 3, now() - interval '1 hour' + interval '60 seconds')"
    )
    conn.execute("SELECT tally_rollup_page_views()")
    stats = client.get("/api/stats", {"days": "7", "compare": "previous"}).json
    assert stats["previous"]["bounce_rate"] == 0.5 and stats["previous"]["visit_duration_seconds"] == 45
    page = client.get("/", {"days": "7"}).html

    def card(key: str) -> str:
        return " ".join(page.find(id=key).find_parent(class_="card").get_text(" ").split())

    assert card("bounce-rate") == "Bounce rate 0% -100% vs 50% before"
    assert card("visit-duration-seconds") == "Visit duration 60 s +33.3% vs 45 s before"
    assert card("visits") == "Visits 1 -50% vs 2 before"


def test_a_reader_may_stop_the_pages_reloads_and_its_links_keep_them_stopped(database_url, pool):
    """Each reload sends the keyboard's focus back to the top of the page, every 30 s, and the
    page runs no script that could pause it (WCAG 2.2.1: a way to turn it off). `refresh=off`
    stops them, and every link of the page keeps that but the export's and the toggle's."""
    client = make_client(database_url, pool, owner=True, ADMIN_TOKEN=TOKEN)
    client.post_json("/api/pageviews", [{"path": "/a", "referrer": "https://news.example/x"}])
    page = client.get("/?days=7&country=ZZ").html
    assert page.find("meta", attrs={"http-equiv": "refresh"})["content"] == "30"
    toggle = page.find(id="reloads-toggle")
    assert toggle.text == "stop reloading" and toggle["href"] == "/?days=7&refresh=off&country=ZZ"
    stopped = client.get(toggle["href"]).html
    assert stopped.find("meta", attrs={"http-equiv": "refresh"}) is None
    assert "does not reload itself" in stopped.text
    assert stopped.find(id="reloads-toggle")["href"] == "/?days=7&country=ZZ"
    links = [a["href"] for a in stopped.find_all("a") if a.get("href", "").startswith("/?")]
    kept = [href for href in links if "refresh=off" in href]
    assert len(links) >= 6 and len(kept) == len(links) - 1, links  # all but the toggle's
    assert all("refresh" not in a["href"] for a in stopped.find_all("a") if "export" in a.get("href", ""))
    assert "refresh must be off" in client.get("/?refresh=on", status=400).text
    client.get("/api/stats?refresh=off", status=400)  # the page's own: the API reloads nothing
