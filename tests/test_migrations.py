"""The release step: idempotent, and safe when two run at once."""

from __future__ import annotations

import csv
import hashlib
import subprocess
import sys

import psycopg
import pytest

import migrations
from migrations import MIGRATIONS_DIR, apply_pending, procrastinate_files, tally_files
from tests.conftest import ROOT, defer_by_sql


def recorded(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT name FROM tally_migrations ORDER BY name")]


def test_first_run_installs_everything_and_second_run_nothing(fresh_database):
    applied = apply_pending(fresh_database)
    assert applied == ["procrastinate:schema.sql", *[p.name for p in tally_files()]]
    assert apply_pending(fresh_database) == []
    names = recorded(fresh_database)
    assert all(f"procrastinate:{p.name}" in names for p in procrastinate_files())
    with psycopg.connect(fresh_database) as conn:
        for table in ("page_views", "procrastinate_jobs", "procrastinate_periodic_defers"):
            assert conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is not None


def test_two_releases_at_once_apply_each_migration_once(fresh_database):
    env = {"DATABASE_URL": fresh_database, "PATH": "/usr/bin:/bin"}
    releases = [
        subprocess.Popen(
            [sys.executable, "-m", "migrations"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [release.communicate(timeout=60)[0] for release in releases]
    assert [release.returncode for release in releases] == [0, 0], outputs
    applied_lines = [line for out in outputs for line in out.splitlines() if "applying migration" in line]
    expected = 1 + len(tally_files())  # procrastinate's schema, then each of ours
    assert len(applied_lines) == expected, outputs
    assert len(recorded(fresh_database)) == len(set(recorded(fresh_database)))


def test_newer_procrastinate_migrations_are_applied_in_between(fresh_database):
    apply_pending(fresh_database)
    newest = procrastinate_files()[-1].name
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        # Pretend the database predates the newest shipped migration.
        conn.execute("DELETE FROM tally_migrations WHERE name = %s", (f"procrastinate:{newest}",))
    assert apply_pending(fresh_database) == [f"procrastinate:{newest}"]


def test_inspection_views_answer_in_psql(conn):
    for view in (
        "tally_job_overview",
        "tally_recent_failures",
        "tally_workers",
        "tally_running_jobs",
        "tally_periodic_ticks",
    ):
        conn.execute(f"SELECT * FROM {view}").fetchall()
    defer_by_sql(conn, "prune_finished_jobs")
    row = conn.execute(
        "SELECT task_name, status::text, jobs, oldest_waiting IS NOT NULL FROM tally_job_overview"
    )
    assert row.fetchall() == [("prune_finished_jobs", "todo", 1, True)]


def test_sites_and_visitors_carry_existing_views_and_rollups_over(fresh_database, monkeypatch):
    import migrations
    from tally.config import from_env
    from tally.db import web_pool
    from tally.web.stats import StatsReader

    before = [path for path in tally_files() if path.name < "0005"]
    monkeypatch.setattr(migrations, "tally_files", lambda: before)
    apply_pending(fresh_database)
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO page_views (path, viewed_at) SELECT '/a', now() - interval '2 days'"
            " FROM generate_series(1, 50)"
        )
        conn.execute("INSERT INTO page_views (path) SELECT '/b' FROM generate_series(1, 30)")
        conn.execute("SELECT tally_rollup_page_views()")
        conn.execute("INSERT INTO page_views (path) SELECT '/c' FROM generate_series(1, 5)")  # the tail
    monkeypatch.undo()
    assert apply_pending(fresh_database) == [path.name for path in tally_files() if path.name >= "0005"]
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        assert conn.execute("SELECT site, sum(views) FROM page_view_buckets GROUP BY 1").fetchall() == [
            ("default", 80)
        ]
        paths = conn.execute(
            "SELECT site, value, sum(views) FROM page_view_day_values"
            " WHERE dim = 'path' GROUP BY 1, 2 ORDER BY 2"
        )
        assert paths.fetchall() == [("default", "/a", 50), ("default", "/b", 30)]
        settings = from_env({"DATABASE_URL": fresh_database}, process_type="web")
        # The stats reader alone: build_app would bind jobs.app to this short-lived pool.
        with web_pool(settings) as pool:
            stats = StatsReader(pool, retention_days=30)
            body = stats.stats_for_window(7)
            assert body["total_views"] == 85 and body["visitors"] == 0
            assert stats.stats_for_window(7, site="default")["total_views"] == 85
            conn.execute("SELECT tally_rollup_page_views()")
            body = stats.stats_for_window(7)
            assert body["total_views"] == 85
            assert {row["path"]: row["views"] for row in body["top_paths"]} == {"/a": 50, "/b": 30, "/c": 5}
            assert stats.sites() == [{"site": "default", "views": 85}]


def test_visitor_days_carry_the_visitor_spans_over(fresh_database, monkeypatch):
    """Migration 0015 turns the spans of 0005/0007 into visitor days: an id of one UTC day
    exactly, an id seen on two days (a backfill) on those two days, its tail then added; 0017
    forms the visits of the views stored before it."""
    import migrations
    from tally.config import from_env
    from tally.db import web_pool
    from tally.web.stats import StatsReader
    from tests.test_web_exact import assert_visits_exact, brute_force

    before = [path for path in tally_files() if path.name < "0015"]
    monkeypatch.setattr(migrations, "tally_files", lambda: before)
    apply_pending(fresh_database)
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO page_views (site, path, country, visitor, viewed_at)"
            " SELECT 'example.com', '/p' || (n % 5), (ARRAY['DE', 'FR'])[1 + n % 2], n % 97,"
            "        date_trunc('day', now(), 'UTC') - interval '1 day' * (1 + (n % 97) % 6)"
            "        + interval '7 minutes' * (n % 200)"
            "   FROM generate_series(0, 1999) AS n"
        )
        conn.execute(  # ids 1000-1009: seen 4 days ago and 2 days ago, nothing between
            "INSERT INTO page_views (site, path, visitor, viewed_at)"
            " SELECT 'example.com', '/back', 1000 + n % 10, now() - interval '1 day' * (2 + 2 * (n % 2))"
            "   FROM generate_series(0, 39) AS n"
        )
        conn.execute("SELECT tally_rollup_page_views()")
        conn.execute(  # the tail: ids rolled up already
            "INSERT INTO page_views (site, path, visitor, viewed_at)"
            " SELECT 'example.com', '/tail', 1000 + n, now() - interval '2 days' FROM generate_series(0, 2) n"
        )
    monkeypatch.undo()
    assert apply_pending(fresh_database) == [path.name for path in tally_files() if path.name >= "0015"]
    settings = from_env({"DATABASE_URL": fresh_database}, process_type="web")
    with psycopg.connect(fresh_database, autocommit=True) as conn, web_pool(settings) as pool:
        stats = StatsReader(pool, retention_days=30)
        for roll_up_first in (False, True):
            if roll_up_first:
                conn.execute("SELECT tally_rollup_page_views()")
            body = stats.stats_for_window(7, tz="UTC")
            expected = brute_force(conn, 7, None, "UTC")
            daily = {day["day"]: (day["views"], day["visitors"]) for day in body["daily"] if day["views"]}
            assert daily == expected["daily"]
            for key in ("top_paths", "top_countries"):
                assert body[key] == expected[key], key
            assert_visits_exact(body, expected, roll_up_first)  # formed by 0017 of the views before it


# Ids that come back on the next days, at every hour, two sites (pairs of days in a row); and a
# tail of ids the rollups hold already, on their days.
RETURNING_IDS = (
    "INSERT INTO page_views (site, path, country, referrer, visitor, viewed_at)"
    " SELECT (ARRAY['example.com', 'other.org'])[1 + n % 2], '/p' || (n % 7),"
    "        (ARRAY['DE', 'FR', 'NP'])[1 + n % 3],"
    "        CASE WHEN n % 4 = 0 THEN 'https://news.example.net/a' END, (n / 2) % 11,"
    "        date_trunc('hour', now()) - interval '37 minutes' * n"
    "   FROM generate_series(0, 1499) AS n"
)
TAIL_OF_HELD_IDS = (
    "INSERT INTO page_views (site, path, visitor, viewed_at)"
    " SELECT 'example.com', '/tail', n, now() - interval '1 day' * n - interval '3 hours'"
    "   FROM generate_series(0, 20) n"
)


def assert_exact_in_zones(conn: psycopg.Connection, stats) -> None:
    """30 days' views and visitors per day and the paths, countries and referrers equal the
    brute-force count, in zones where a local day spans two UTC days, for all sites and one."""
    from tests.test_web_exact import brute_force

    for tz in ("UTC", "Asia/Kathmandu", "America/St_Johns"):
        for site in (None, "example.com"):
            body = stats.stats_for_window(30, site=site, tz=tz)
            expected = brute_force(conn, 30, site, tz)
            daily = {day["day"]: (day["views"], day["visitors"]) for day in body["daily"] if day["views"]}
            assert daily == expected["daily"], (tz, site)
            for key in ("top_paths", "top_countries", "top_referrers"):
                assert body[key] == expected[key], (key, tz, site)


def test_day_values_carry_the_rollups_over_with_the_same_answers(fresh_database, monkeypatch):
    """Migration 0020 turns the per-bucket, per-visitor-day rollups of 0007 and 0015 into one row
    per value and UTC day: every figure after it equals the brute-force count, in zones where a
    local day spans two UTC days, with ids seen on days in a row (overlaps), a tail rolled up
    before and after, and an export per path."""
    import migrations
    from tally.config import from_env
    from tally.db import web_pool
    from tally.web.export import daily_paths
    from tally.web.stats import StatsReader

    monkeypatch.setattr(migrations, "tally_files", lambda: [p for p in tally_files() if p.name < "0020"])
    apply_pending(fresh_database)
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute(RETURNING_IDS)
        conn.execute("SELECT tally_rollup_page_views()")
        conn.execute(TAIL_OF_HELD_IDS)
    monkeypatch.undo()
    assert apply_pending(fresh_database) == [path.name for path in tally_files() if path.name >= "0020"]
    settings = from_env({"DATABASE_URL": fresh_database}, process_type="web")
    with psycopg.connect(fresh_database, autocommit=True) as conn, web_pool(settings) as pool:
        overlaps = conn.execute("SELECT count(*) FROM page_view_day_overlaps").fetchone()[0]
        assert overlaps > 0  # the ids of days in a row came over as pairs
        stats = StatsReader(pool, retention_days=30)
        for roll_up_first in (False, True):
            if roll_up_first:
                conn.execute("SELECT tally_rollup_page_views()")
            assert_exact_in_zones(conn, stats)
            with daily_paths(pool, 30, None, "Asia/Kathmandu") as spool:
                exported = {
                    (row["day"], row["path"]): (int(row["views"]), int(row["visitors"]))
                    for row in csv.DictReader(spool)
                }
            naive = conn.execute(
                "SELECT (viewed_at AT TIME ZONE 'Asia/Kathmandu')::date::text, path, count(*),"
                "       count(DISTINCT (site, visitor)) FILTER (WHERE visitor IS NOT NULL)"
                "  FROM page_views WHERE viewed_at >= (date_trunc('day', now() AT TIME ZONE 'Asia/Kathmandu')"
                "       - interval '29 days') AT TIME ZONE 'Asia/Kathmandu' GROUP BY 1, 2"
            )
            assert exported == {(day, path): (views, visitors) for day, path, views, visitors in naive}


def test_the_pairs_move_into_their_day_rows_with_the_same_answers(fresh_database, monkeypatch):
    """Migration 0031 moves the pairs of ids seen on UTC days in a row from their table into
    their day's row: the same pairs (read through the view of the old name, which the release
    before reads until it is replaced, and whose delete does nothing), and every figure equal to
    the brute-force count in zones where a local day spans two UTC days."""
    import migrations
    from tally.config import from_env
    from tally.db import web_pool
    from tally.web.stats import StatsReader

    monkeypatch.setattr(migrations, "tally_files", lambda: [p for p in tally_files() if p.name < "0031"])
    apply_pending(fresh_database)
    pairs = "SELECT site, dim, value, first_bucket, prev_last, visitors FROM page_view_day_overlaps"
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute(RETURNING_IDS)
        conn.execute("SELECT tally_rollup_page_views()")
        before = sorted(conn.execute(pairs).fetchall())
        conn.execute(TAIL_OF_HELD_IDS)
    assert len(before) > 100
    monkeypatch.undo()
    assert apply_pending(fresh_database)[0] == "0031_day_pairs.sql"
    settings = from_env({"DATABASE_URL": fresh_database}, process_type="web")
    with psycopg.connect(fresh_database, autocommit=True) as conn, web_pool(settings) as pool:
        assert sorted(conn.execute(pairs).fetchall()) == before
        kind = conn.execute(
            "SELECT relkind FROM pg_class WHERE relname = 'page_view_day_overlaps'"
        ).fetchone()
        assert kind == ("v",)
        conn.execute("DELETE FROM page_view_day_overlaps WHERE first_bucket < now()")  # the old cleanup's
        assert sorted(conn.execute(pairs).fetchall()) == before
        stats = StatsReader(pool, retention_days=30)
        for roll_up_first in (False, True):
            if roll_up_first:
                conn.execute("SELECT tally_rollup_page_views()")
            assert_exact_in_zones(conn, stats)


def test_event_visitors_move_the_rolled_up_days_to_count_the_ids_of_events(fresh_database, monkeypatch):
    """Migration 0023 counts the ids of events among the site's visitors: what is rolled up
    before it moves as a rollup would have moved it, with ids on days in a row (overlaps),
    events before an id's first view and after its last, ids with events alone, and a tail
    folded after it, in zones where a local day spans two UTC days. Panel rows stay the views'."""
    import migrations
    from tally.config import from_env
    from tally.db import web_pool
    from tally.web.stats import StatsReader
    from tests.test_events import site_visitors_by_brute_force
    from tests.test_web_exact import brute_force

    monkeypatch.setattr(migrations, "tally_files", lambda: [p for p in tally_files() if p.name < "0023"])
    apply_pending(fresh_database)
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute(  # ids that come back on the next days, at every hour, two sites
            "INSERT INTO page_views (site, path, country, visitor, viewed_at)"
            " SELECT (ARRAY['example.com', 'other.org'])[1 + n % 2], '/p' || (n % 7),"
            "        (ARRAY['DE', 'FR', 'NP'])[1 + n % 3], (n / 2) % 11,"
            "        date_trunc('hour', now()) - interval '37 minutes' * n"
            "   FROM generate_series(0, 599) AS n"
        )
        # The same ids 0-10 at other times, and ids 20-25 with events alone; none older than
        # the oldest view (0023 moves only the days from the oldest view's on: older ones may
        # have lost views to retention). At 75 minutes apart the oldest event fell on the day
        # before the oldest view's whenever the test ran between 10:00 and 14:00 UTC.
        events = (
            "INSERT INTO events (site, name, visitor, occurred_at)"
            " SELECT (ARRAY['example.com', 'other.org'])[1 + n % 2], 'Signup',"
            "        (ARRAY[(n / 2) % 11, 20 + n % 6])[1 + n % 3 / 2],"
            "        date_trunc('hour', now()) - interval '70 minutes' * n - interval 'SHIFT minutes'"
            "   FROM generate_series(0, 299) AS n"
        )
        conn.execute(events.replace("SHIFT", "7"))
        conn.execute("SELECT tally_rollup_page_views()")
        conn.execute(events.replace("SHIFT", "11"))  # the tail
        before = site_visitors_by_brute_force(conn, "UTC")
    monkeypatch.undo()
    assert apply_pending(fresh_database) == [path.name for path in tally_files() if path.name >= "0023"]
    settings = from_env({"DATABASE_URL": fresh_database}, process_type="web")
    with psycopg.connect(fresh_database, autocommit=True) as conn, web_pool(settings) as pool:
        assert site_visitors_by_brute_force(conn, "UTC") == before
        stats = StatsReader(pool, retention_days=30)
        for roll_up_first in (False, True):
            if roll_up_first:
                conn.execute("SELECT tally_rollup_page_views()")
            for tz in ("UTC", "Asia/Kathmandu", "America/St_Johns"):
                body = stats.stats_for_window(30, tz=tz)
                daily = {day["day"]: day["visitors"] for day in body["daily"] if day["visitors"]}
                assert daily == site_visitors_by_brute_force(conn, tz), (tz, roll_up_first)
                assert body["top_paths"] == brute_force(conn, 30, None, tz)["top_paths"], tz


def test_uncountable_times_stored_before_are_deleted_and_stats_answer_again(fresh_database, monkeypatch):
    """Migration 0024: a view at 'infinity' (or past 9999) stored before it made every stats
    request fail and the rollup with it; the release deletes those rows and their tail marks,
    keeps the others, and refuses such times from then on."""
    import migrations
    from tally.config import from_env
    from tally.db import web_pool
    from tally.web.stats import StatsReader

    monkeypatch.setattr(migrations, "tally_files", lambda: [p for p in tally_files() if p.name < "0024"])
    apply_pending(fresh_database)
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO page_views (path, visitor, viewed_at) VALUES ('/inf', 1, 'infinity'),"
            " ('/far', 2, '20000-01-01 00:00+00'), ('/bc', 3, '0044-03-15 BC'), ('/now', 4, now())"
        )
        conn.execute("INSERT INTO events (name, visitor, occurred_at) VALUES ('Signup', 1, 'infinity')")
        with pytest.raises(psycopg.errors.DatetimeFieldOverflow):
            conn.execute("SELECT tally_rollup_page_views()")
    monkeypatch.undo()
    assert apply_pending(fresh_database) == [path.name for path in tally_files() if path.name >= "0024"]
    settings = from_env({"DATABASE_URL": fresh_database}, process_type="web")
    with psycopg.connect(fresh_database, autocommit=True) as conn, web_pool(settings) as pool:
        assert conn.execute("SELECT path FROM page_views").fetchall() == [("/now",)]
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0
        assert StatsReader(pool, retention_days=30).stats_for_window(1, tz="UTC")["total_views"] == 1
        assert conn.execute("SELECT tally_rollup_page_views()").fetchone()[0] == 1
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO page_views (path, viewed_at) VALUES ('/inf', 'infinity')")


def test_a_release_that_waits_for_another_says_for_whom(fresh_database, caplog):
    """An overlapping release waits for the lock; it printed nothing while it did."""
    import logging
    import threading

    from migrations import ADVISORY_LOCK_KEY

    apply_pending(fresh_database)
    with psycopg.connect(fresh_database, autocommit=True, application_name="other-release") as other:
        other.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        with caplog.at_level(logging.INFO, logger="tally.migrations"):
            waiting = threading.Thread(target=apply_pending, args=(fresh_database,))
            waiting.start()
            for _ in range(100):
                if "waiting for another release" in caplog.text:
                    break
                waiting.join(0.05)
            assert waiting.is_alive()
            other.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
            waiting.join(10)
    assert not waiting.is_alive()
    assert "waiting for another release to finish" in caplog.text and "other-release" in caplog.text


def test_a_release_waits_for_the_lock_within_a_bound_and_names_a_holder_that_is_no_release(
    fresh_database, caplog, monkeypatch
):
    """A release run through a pooler left the lock on a pooled server connection (another
    client's now, named web.5), held there for the pooler's server_lifetime: the next release
    said `waiting for another release to finish` and waited without a bound."""
    import logging
    import time

    import migrations

    apply_pending(fresh_database)
    monkeypatch.setattr(migrations, "RELEASE_LOCK_WAIT_SECONDS", 1.5)
    with psycopg.connect(fresh_database, autocommit=True, application_name="web.5") as stray:
        stray.execute("SELECT pg_advisory_lock(%s)", (migrations.ADVISORY_LOCK_KEY,))
        pid = stray.info.backend_pid
        started = time.monotonic()
        with (
            caplog.at_level(logging.INFO, logger="tally.migrations"),
            pytest.raises(migrations.ReleaseLockTimeout) as raised,
        ):
            apply_pending(fresh_database)
        assert time.monotonic() - started < 5
    assert f"server pid {pid}, web.5: not a release's session" in caplog.text
    assert f"gave up waiting for another release to finish after 1.5 s (server pid {pid}" in str(raised.value)
    assert "pg_terminate_backend" in str(raised.value)
    assert apply_pending(fresh_database) == []  # the holder gone, the next one goes on


def test_the_release_ignores_the_timeouts_set_on_the_role(fresh_database, start_process):
    """Behind a pooler that drops Tally's options the web's timeouts are set on the role (README
    "PgBouncer"); the release's migrations (a table rewritten, a function made) are not cut by them."""
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        name = conn.info.dbname
        conn.execute(f"ALTER DATABASE \"{name}\" SET statement_timeout = '1ms'")
        conn.execute(f"ALTER DATABASE \"{name}\" SET lock_timeout = '1ms'")
    release = start_process(["-m", "migrations"], {"DATABASE_URL": fresh_database})
    assert release.wait(120) == 0, release.output()[-3000:]
    assert "release done" in release.output()


def test_a_server_older_than_tally_needs_is_refused_before_any_change(fresh_database, monkeypatch):
    """The release passed on PostgreSQL 13 and the workers then failed to connect (the server
    knows no client_connection_check_interval), read as "unreachable". The release says so first;
    the server's version is real, the bound is moved past it."""
    with psycopg.connect(fresh_database) as conn:
        version = conn.info.server_version
        shown = conn.info.parameter_status("server_version")
    monkeypatch.setattr(migrations, "MIN_SERVER_VERSION", (version // 10000 + 1) * 10000)
    with pytest.raises(migrations.ServerTooOld) as refused:
        apply_pending(fresh_database)
    assert str(refused.value) == (
        f"Tally needs PostgreSQL {version // 10000 + 1} or later; this server is {shown}: nothing was applied"
    )
    assert recorded_tables(fresh_database) == []
    monkeypatch.undo()
    assert apply_pending(fresh_database)[0] == "procrastinate:schema.sql"


def recorded_tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]


def test_a_migration_is_never_edited_once_written_down():
    """A database records a migration by its file name only, so an edit to an applied file
    reaches no database that applied it: four migrations edited (and one renamed) after they
    were on main left databases of those commits failing every release, or answering 503 "run
    migrations" for good. migrations/released.sha256 holds each file's digest; change the
    schema with a new file, and add its line (`sha256sum 0029_x.sql`)."""
    listed = {}
    for line in (MIGRATIONS_DIR / "released.sha256").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name] = digest
    files = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in tally_files()}
    assert not set(listed) - set(files), "listed, but no such file: a migration is never removed"
    for name, digest in files.items():
        assert name in listed, f"add `{digest}  {name}` to migrations/released.sha256"
        assert listed[name] == digest, f"{name} was edited: write a new migration instead"
