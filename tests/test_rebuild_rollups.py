"""`rebuild_rollups` (jobs/rebuild.py, migrations/0032): views deleted from page_views after they
were folded (a backfill run twice) leave the stats until the rollups of their days are rebuilt;
after the task every figure equals a brute-force count over the raw views, in any zone."""

from __future__ import annotations

import datetime
import random
import subprocess
import threading

import psycopg
import pytest

import jobs
from jobs import rebuild
from tests.conftest import VENV_BIN, process_environment, wait_until
from tests.test_jobs import defer, job_statuses, run_queued_jobs
from tests.test_web import roll_up
from tests.test_web_collect import sites_client
from tests.test_web_exact import PANELS, arrivals, assert_visits_exact, brute_force, insert_raw, random_visits

ZONES = ("UTC", "Asia/Kathmandu", "America/New_York", "Australia/Adelaide")
SITES = (None, "example.com")
WINDOWS = (1, 3, 12, 30)
DAY = datetime.timedelta(days=1)
COLUMNS = "site, path, source, referrer, visitor, medium, campaign, country, browser, os, device, viewed_at"


@pytest.fixture
def client(database_url, pool):
    return sites_client(database_url, pool)


def returning_visitors(rng: random.Random, ids: int) -> list[tuple]:
    """Views of ids that come back on several days (a backfill's, an import's: an id from
    /api/collect lives one day), some minutes either side of a UTC midnight, so their days'
    rows hold pairs with the day before."""
    views = []
    for _ in range(ids):
        site = rng.choice(["example.com", "shop.example.org"])
        visitor = rng.getrandbits(62)
        country = rng.choice([None, "DE", "NP"])
        for back in rng.sample(range(0, 12), rng.randrange(2, 7)):
            # `now() - age`: a quarter of the days' views a few minutes from a UTC midnight.
            now = datetime.datetime.now(datetime.UTC)
            midnight = now.replace(hour=0, minute=0, second=0, microsecond=0) - back * DAY
            at = midnight + datetime.timedelta(minutes=rng.choice([-7, 3, 20]) if rng.random() < 0.25 else 0)
            at += (
                datetime.timedelta(minutes=rng.randrange(0, 23 * 60))
                if at == midnight
                else datetime.timedelta()
            )
            for minutes in range(rng.randrange(1, 4)):
                age = now - at - datetime.timedelta(minutes=minutes * rng.choice([2, 40]))
                if age > datetime.timedelta():
                    views.append(
                        (
                            site,
                            f"/r{rng.randrange(0, 5)}",
                            None,
                            None,
                            visitor,
                            None,
                            None,
                            country,
                            "Firefox",
                            None,
                            None,
                            age,
                        )
                    )
    return views


def load_views(conn: psycopg.Connection, seed: int) -> None:
    """Views over 12 days, folded by several rollups."""
    rng = random.Random(seed)
    batches = arrivals(rng, random_visits(rng, 900), chunks=3)
    batches[0] += returning_visitors(rng, 120)
    for batch in batches:
        insert_raw(conn, batch)
        roll_up(conn)


def duplicate_backfill(conn: psycopg.Connection, since: datetime.date) -> int:
    """The views since `since` inserted once more by SQL (the operator's mistake), folded, then
    deleted again; how many."""
    (last_id,) = conn.execute("SELECT max(id) FROM page_views").fetchone()
    conn.execute(
        f"INSERT INTO page_views ({COLUMNS}) SELECT {COLUMNS} FROM page_views"
        " WHERE viewed_at >= %s::date::timestamp AT TIME ZONE 'UTC'",
        (since,),
    )
    roll_up(conn)
    return conn.execute("DELETE FROM page_views WHERE id > %s", (last_id,)).rowcount


def figures_differ(client, conn) -> list[tuple]:
    """Each (zone, days, site, figure) where the stats and the brute-force count disagree."""
    wrong = []
    for tz in ZONES:
        for days in WINDOWS:
            for site in SITES:
                body = client.get(
                    "/api/stats", {"days": str(days), "tz": tz, **({"site": site} if site else {})}
                ).json
                expected = brute_force(conn, days, site, tz)
                daily = {day["day"]: (day["views"], day["visitors"]) for day in body["daily"] if day["views"]}
                if daily != expected["daily"]:
                    wrong.append((tz, days, site, "daily"))
                wrong += [(tz, days, site, key) for key in PANELS.values() if body[key] != expected[key]]
                try:
                    assert_visits_exact(body, expected, None)
                except AssertionError:
                    wrong.append((tz, days, site, "visits"))
    return wrong


def utc_today(conn: psycopg.Connection) -> datetime.date:
    return conn.execute("SELECT (now() AT TIME ZONE 'UTC')::date").fetchone()[0]


def test_a_rebuild_after_a_duplicate_backfill_was_deleted_makes_every_figure_exact(client, conn):
    load_views(conn, 1)
    assert figures_differ(client, conn) == []
    since = utc_today(conn) - 5 * DAY
    assert duplicate_backfill(conn, since) > 500
    wrong = figures_differ(client, conn)
    assert {figure for *_, figure in wrong} >= {"daily", "top_paths", "visits"}, wrong
    assert {tz for tz, *_ in wrong} == set(ZONES)

    # The operator's line (README, "Rebuilding the rollups"), through the procrastinate CLI.
    subprocess.run(
        [
            str(VENV_BIN / "procrastinate"),
            "--app=jobs.app",
            "defer",
            "rebuild_rollups",
            f'{{"since": "{since}"}}',
        ],
        env=process_environment(),
        check=True,
        capture_output=True,
        timeout=60,
    )
    run_queued_jobs()

    assert job_statuses(conn) == [("rebuild_rollups", "succeeded")]
    assert figures_differ(client, conn) == []
    # Folded in the rebuild's own transaction: nothing is left for the stats' tail to group.
    assert conn.execute("SELECT count(*) FROM page_view_tail_days").fetchone()[0] == 0
    state = conn.execute("SELECT watermark, in_progress FROM page_view_rollup_state").fetchone()
    assert (
        conn.execute(
            "SELECT count(*) FROM page_views WHERE recorded_xid >= %s OR recorded_xid = ANY (%s)", state
        ).fetchone()[0]
        == 0
    )
    assert roll_up(conn) == 0


def test_a_rebuild_names_the_search_engines_of_the_views_stored_without_one(client, conn):
    """Views stored without a search engine's name (before the column was, or by SQL) count an
    id from two of Google's domains twice on a day; a rebuild stores the name with the views of
    its days, which then count it once. The days before it keep their views as they were."""
    today = utc_today(conn)
    noon = datetime.datetime.combine(today, datetime.time(12), datetime.UTC)
    views = [
        (path, referrer, noon - back * DAY + datetime.timedelta(minutes=minutes))
        for back in (2, 1)
        for path, referrer, minutes in (
            ("/a", "https://www.google.de/", 0),
            ("/b", "https://google.com/search", 1),
            ("/c", "https://mail.google.com/mail/", 2),  # no search: stays a domain
        )
    ]
    conn.cursor().executemany(
        "INSERT INTO page_views (site, path, referrer, visitor, viewed_at)"
        " VALUES ('example.com', %s, %s, 7, %s)",
        views,
    )
    roll_up(conn)

    def referrers() -> list[dict]:
        return client.get("/api/stats?days=3&site=example.com").json["top_referrers"]

    assert referrers() == [
        {"referrer": "google.com", "views": 4, "visitors": 4},  # two a day: one per domain
        {"referrer": "mail.google.com", "views": 2, "visitors": 2},
    ]
    defer(jobs.app.tasks["rebuild_rollups"], task_kwargs={"since": (today - DAY).isoformat()})
    run_queued_jobs()
    assert job_statuses(conn) == [("rebuild_rollups", "succeeded")]
    assert referrers() == [
        {"referrer": "google.com", "views": 4, "visitors": 3},  # one on the day rebuilt
        {"referrer": "mail.google.com", "views": 2, "visitors": 2},
    ]
    stored = conn.execute(
        "SELECT (viewed_at AT TIME ZONE 'UTC')::date, path, search_engine FROM page_views ORDER BY 1, 2"
    ).fetchall()
    before, rebuilt = today - 2 * DAY, today - DAY
    assert stored == [
        (before, "/a", None),
        (before, "/b", None),
        (before, "/c", None),
        (rebuilt, "/a", "Google"),
        (rebuilt, "/b", "Google"),
        (rebuilt, "/c", None),
    ]
    assert figures_differ(client, conn) != []  # the day before `since` still counts it twice
    defer(jobs.app.tasks["rebuild_rollups"], task_kwargs={"since": before.isoformat()})
    run_queued_jobs()
    assert referrers()[0] == {"referrer": "google.com", "views": 4, "visitors": 2}
    assert figures_differ(client, conn) == []


def test_a_rebuild_stores_the_paths_of_its_days_as_browsers_send_them(client, conn):
    """Views and events stored with a path decoded or its escapes in lower case (sent by a server
    before the release that stores paths as browsers send them, or by SQL) are a row of their
    own beside the same page as browsers send it; a rebuild stores the paths of its days as the
    web now does, and those days count the page once, their visits' entry pages too."""
    today = utc_today(conn)
    noon = datetime.datetime.combine(today, datetime.time(12), datetime.UTC)
    page = "/caf%C3%A9"
    views = [
        (path, 7, noon - back * DAY + datetime.timedelta(minutes=minutes))
        for back in (2, 1)
        for path, minutes in (("/café", 0), (page, 1), ("/caf%c3%a9", 2), ("/a%2Fb", 3))
    ]
    conn.cursor().executemany(
        "INSERT INTO page_views (site, path, visitor, viewed_at) VALUES ('example.com', %s, %s, %s)", views
    )
    conn.execute(
        "INSERT INTO events (site, name, path, visitor, occurred_at)"
        " VALUES ('example.com', 'Signup', '/café', 7, %s)",
        (noon - DAY + datetime.timedelta(minutes=4),),
    )
    roll_up(conn)

    def paths(days: int = 3) -> tuple[list[dict], list[dict]]:
        body = client.get(f"/api/stats?days={days}&site=example.com").json
        return body["top_paths"], body["top_entry_pages"]

    one_a_day = {"views": 2, "visitors": 2}
    assert paths() == (
        [{"path": path, **one_a_day} for path in sorted(("/café", page, "/caf%c3%a9", "/a%2Fb"))],
        [{"path": "/café", "visits": 2}],
    )
    defer(jobs.app.tasks["rebuild_rollups"], task_kwargs={"since": (today - DAY).isoformat()})
    run_queued_jobs()
    assert job_statuses(conn) == [("rebuild_rollups", "succeeded")]
    assert paths(days=2) == (
        [{"path": page, "views": 3, "visitors": 1}, {"path": "/a%2Fb", "views": 1, "visitors": 1}],
        [{"path": page, "visits": 1}],
    )
    stored = conn.execute(
        "SELECT (viewed_at AT TIME ZONE 'UTC')::date, path FROM page_views ORDER BY 1, 2"
    ).fetchall()
    before, rebuilt = today - 2 * DAY, today - DAY
    assert stored == [(before, path) for path in sorted(("/café", page, "/caf%c3%a9", "/a%2Fb"))] + [
        (rebuilt, path) for path in ("/a%2Fb", page, page, page)
    ]
    assert conn.execute("SELECT path FROM events").fetchall() == [(page,)]
    assert paths()[0] == [  # the day before `since` keeps its forms
        {"path": page, "views": 4, "visitors": 2},
        {"path": "/a%2Fb", "views": 2, "visitors": 2},
        {"path": "/caf%c3%a9", "views": 1, "visitors": 1},
        {"path": "/café", "views": 1, "visitors": 1},
    ]


def test_events_deleted_after_they_were_folded_leave_the_stats_with_a_rebuild(client, conn):
    conn.execute(
        "INSERT INTO events (site, name, visitor, occurred_at)"
        " SELECT 'example.com', 'Signup', n % 7, now() - (n % 4) * interval '1 day'"
        " FROM generate_series(1, 40) n"
    )
    conn.execute(
        "INSERT INTO events (site, name, visitor, occurred_at)"
        " SELECT 'example.com', 'Signup', n % 7, now() - interval '1 day' FROM generate_series(1, 25) n"
    )
    roll_up(conn)
    conn.execute("DELETE FROM events WHERE id > 40")

    def signups() -> int:
        body = client.get("/api/stats", {"days": "7", "site": "example.com"}).json
        return {row["event"]: row["events"] for row in body["top_events"]}["Signup"]

    assert signups() == 65
    defer(jobs.app.tasks["rebuild_rollups"], task_kwargs={"since": (utc_today(conn) - 3 * DAY).isoformat()})
    run_queued_jobs()
    assert signups() == 40


def test_views_committed_during_a_rebuild_are_counted_once(client, conn, database_url):
    load_views(conn, 2)
    since = utc_today(conn) - 3 * DAY
    duplicate_backfill(conn, since)
    insert = (
        "INSERT INTO page_views (site, path, visitor, viewed_at) VALUES ('example.com', %s, %s, now() - %s)"
    )
    # A transaction that began before the rebuild and commits while it runs (its id is in the
    # rebuild's snapshots as running), one that begins and commits meanwhile, one that commits
    # after the rebuild; and a row lock on a view of the days, held by the test, that stops the
    # rebuild's UPDATE until the first two are in.
    with (
        psycopg.connect(database_url) as before,
        psycopg.connect(database_url) as after,
        psycopg.connect(database_url) as locker,
    ):
        before.execute(insert, ("/before", 11, datetime.timedelta(hours=1)))
        (held,) = locker.execute(
            "SELECT id FROM page_views WHERE viewed_at >= %s::date"
            " ORDER BY viewed_at DESC LIMIT 1 FOR UPDATE",
            (since,),
        ).fetchone()
        defer(jobs.app.tasks["rebuild_rollups"], task_kwargs={"since": since.isoformat()})
        worker = threading.Thread(target=run_queued_jobs)
        worker.start()
        try:
            wait_until(
                lambda: conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY (pg_blocking_pids(pid))",
                    (locker.info.backend_pid,),
                ).fetchone()[0],
                timeout=4,
                message="the rebuild to reach the held view",
            )
            before.commit()
            conn.execute(insert, ("/meanwhile", 12, datetime.timedelta(minutes=5)))
            after.execute(insert, ("/after", 13, datetime.timedelta(minutes=1)))
            locker.rollback()
        finally:
            worker.join(60)
        assert job_statuses(conn) == [("rebuild_rollups", "succeeded")], held
        after.commit()
    assert figures_differ(client, conn) == []  # "/after" from the tail
    roll_up(conn)
    assert figures_differ(client, conn) == []
    counted = conn.execute("SELECT sum(views) FROM page_view_buckets").fetchone()[0]
    assert counted == conn.execute("SELECT count(*) FROM page_views").fetchone()[0]
    paths = dict(
        conn.execute(
            "SELECT value, views FROM page_view_day_values WHERE dim = 'path' AND value LIKE '/%%e%%'"
        )
    )
    assert {path: paths.get(path) for path in ("/before", "/meanwhile", "/after")} == {
        "/before": 1,
        "/meanwhile": 1,
        "/after": 1,
    }


ROLLUP_TABLES = (
    "page_view_buckets",
    "page_view_day_values",
    "page_view_visit_buckets",
    "page_view_visit_days",
)


def everything(conn: psycopg.Connection) -> list:
    """The rollups, the views' and events' transaction ids, the tail's marks and the state."""
    tables = [*ROLLUP_TABLES, "page_view_tail_days", "page_view_rollup_state"]
    held = [sorted(map(str, conn.execute(f"SELECT t.* FROM {table} t"))) for table in tables]
    held.append(sorted(conn.execute("SELECT id, recorded_xid::text FROM page_views")))
    held.append(sorted(conn.execute("SELECT id, recorded_xid::text FROM events")))
    return held


@pytest.mark.parametrize(
    ("since", "says"),
    [
        (lambda today: today - 29 * DAY, "is before"),  # RETENTION_DAYS=30: the day before is cut into
        (lambda today: today - 400 * DAY, "is before"),
        (lambda today: today + DAY, "is after today"),
        (lambda today: "2026-13-01", "must be a date"),
        (lambda today: 20261101, "must be a date"),
    ],
)
def test_a_since_too_old_in_the_future_or_not_a_date_is_refused_and_changes_nothing(conn, since, says):
    load_views(conn, 3)
    conn.execute("INSERT INTO events (name, occurred_at) VALUES ('E', now() - interval '1 day')")
    duplicate_backfill(conn, utc_today(conn) - 2 * DAY)
    held = everything(conn)
    value = since(utc_today(conn))
    with jobs.app.open():
        job_id = jobs.app.tasks["rebuild_rollups"].defer(
            since=str(value) if isinstance(value, datetime.date) else value
        )
    run_queued_jobs()
    assert job_statuses(conn) == [("rebuild_rollups", "failed")]  # refused once, not retried
    (error,) = conn.execute("SELECT error FROM tally_job_errors WHERE job_id = %s", (job_id,)).fetchone()
    assert error.startswith("RebuildRefused") and says in error, error
    assert everything(conn) == held


def test_the_oldest_day_allowed_is_rebuilt_and_with_no_since_it_is_the_default(client, conn):
    load_views(conn, 4)
    oldest = utc_today(conn) - (jobs.settings.retention_days - 2) * DAY
    assert (
        conn.execute("SELECT tally_oldest_rebuild_day(%s)", (jobs.settings.retention_days,)).fetchone()[0]
        == oldest
    )
    defer(jobs.app.tasks["rebuild_rollups"], task_kwargs={"since": oldest.isoformat()})
    defer(jobs.app.tasks["rebuild_rollups"])
    run_queued_jobs()
    assert job_statuses(conn) == [("rebuild_rollups", "succeeded")] * 2
    assert figures_differ(client, conn) == []


def test_since_is_read_as_a_date_or_refused():
    assert rebuild.parse_since("2026-11-01") == datetime.date(2026, 11, 1)
    assert rebuild.parse_since(None) is None
    for wrong in ("yesterday", "2026-11-01T00:00", "", 3):
        with pytest.raises(rebuild.RebuildRefused, match="YYYY-MM-DD"):
            rebuild.parse_since(wrong)
