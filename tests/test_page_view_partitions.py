"""page_views in daily partitions (migrations/0019): days ahead, a default partition that
refuses no time, maintain_partitions, retention by dropping days, and the conversion of a
live table by the release step."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import threading
import time

import psycopg
import psycopg.rows
import pytest

import jobs
import migrations
from jobs import page_views, partitions
from migrations import apply_pending, tally_files
from tally.config import from_env
from tally.db import web_pool
from tests.conftest import wait_until
from tests.test_jobs import defer, run_queued_jobs

CONVERSION_VIEWS = int(os.environ.get("TALLY_TEST_CONVERSION_VIEWS", "300000"))


def partition_names(conn: psycopg.Connection) -> list[str]:
    return [
        row[0]
        for row in conn.execute("SELECT name FROM tally_page_view_partitions ORDER BY starts NULLS LAST")
    ]


def rolled_up_views(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT coalesce(sum(views), 0) FROM page_view_buckets").fetchone()[0]


@pytest.fixture
def own_partitions(conn):
    """The session database's partitions as they were: days a test makes go afterwards."""
    before = set(partition_names(conn))
    yield
    for name in set(partition_names(conn)) - before:
        conn.execute(f'DROP TABLE "{name}"')  # names from the catalog, never input


def utc_today() -> datetime.date:
    return datetime.datetime.now(datetime.UTC).date()


def test_a_new_database_has_days_ahead_and_a_default_partition(fresh_database):
    apply_pending(fresh_database)
    with psycopg.connect(fresh_database) as conn:
        names = partition_names(conn)
        kind = conn.execute("SELECT relkind FROM pg_class WHERE oid = 'page_views'::regclass").fetchone()[0]
    today = utc_today()
    assert kind == "p"
    assert names == [partitions.partition_name(today + datetime.timedelta(days=n)) for n in range(8)] + [
        "page_views_default"
    ]


def test_a_view_at_any_time_is_stored_and_counted(conn):
    conn.execute(
        "INSERT INTO page_views (path, viewed_at) VALUES ('/old', now() - interval '400 days'),"
        " ('/ahead', now() + interval '400 days'), ('/now', now()), ('/epoch', '1970-01-01'),"
        " ('/far', '8999-12-31 23:59:59+00'), ('/first', '1000-01-01 00:00+00')"
    )
    conn.execute("SELECT tally_rollup_page_views()")
    where = dict(conn.execute("SELECT path, tableoid::regclass::text FROM page_views").fetchall())
    assert where["/now"] == partitions.partition_name(utc_today())
    assert {where[p] for p in ("/old", "/ahead", "/epoch", "/far", "/first")} == {"page_views_default"}
    assert rolled_up_views(conn) == 6


@pytest.mark.parametrize(
    "when", ["infinity", "-infinity", "20000-01-01 00:00+00", "0044-03-15 BC", "9000-01-01 00:00+00"]
)
def test_a_time_no_reader_can_count_is_refused_by_name_and_nothing_breaks(conn, pool, own_partitions, when):
    """Any time from the year 1000 to 8999 is stored; past that a CHECK names the column (an
    'infinity' was stored once, and every stats request then answered 500, the rollup and
    cleanup failed, and maintain_partitions could not name its day)."""
    from tally.web.stats import StatsReader

    for table, column, extra in (("page_views", "viewed_at", ""), ("events", "occurred_at", ", 'Signup'")):
        with pytest.raises(psycopg.errors.CheckViolation, match=f"{table}_{column}_in_range"):
            names = "path, visitor" + (", name" if extra else "")
            conn.execute(f"INSERT INTO {table} ({names}, {column}) VALUES ('/x', 7{extra}, %s)", (when,))
    conn.execute(
        "INSERT INTO page_views (path, visitor, viewed_at) VALUES ('/edge', 7, '8999-12-31 23:59:59+00'),"
        " ('/edge', 8, '1000-01-01 00:00+00'), ('/now', 9, now())"
    )
    conn.execute(
        "INSERT INTO events (name, visitor, occurred_at) VALUES ('Signup', 7, '8999-12-31 23:59:59+00'),"
        " ('Signup', 8, '1000-01-01 00:00+00')"
    )
    stats = StatsReader(pool, retention_days=30)
    assert stats.stats_for_window(1, tz="UTC")["total_views"] >= 1  # the tail, with those days in it
    assert conn.execute("SELECT tally_rollup_page_views()").fetchone()[0] == 3
    assert stats.stats_for_window(1, tz="Pacific/Kiritimati", filters={"path": "/now"})["total_views"] == 1
    defer(partitions.maintain_partitions)
    defer(page_views.cleanup_old_page_views)
    run_queued_jobs()
    assert (
        conn.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE status <> 'succeeded'"
            " AND task_name IN ('maintain_partitions', 'cleanup_old_page_views')"
        ).fetchone()[0]
        == 0
    )


def test_maintain_partitions_moves_caught_views_into_their_days_without_refolding(conn, own_partitions):
    conn.execute(
        "INSERT INTO page_views (path, viewed_at)"
        " SELECT '/p', now() - interval '3 days' - n * interval '1 min' FROM generate_series(1, 40) n"
    )
    conn.execute("INSERT INTO page_views (path, viewed_at) VALUES ('/ahead', now() + interval '20 days')")
    conn.execute("INSERT INTO page_views (path, viewed_at) VALUES ('/expired', now() - interval '90 days')")
    conn.execute("SELECT tally_rollup_page_views()")
    conn.execute("INSERT INTO page_views (path, viewed_at) VALUES ('/tail', now() - interval '3 days')")

    defer(partitions.maintain_partitions)
    run_queued_jobs()

    left = conn.execute("SELECT path FROM page_views_default").fetchall()
    assert left == [("/expired",)]  # past retention: cleanup's, not a day to make
    names = partition_names(conn)
    for days in (-3, 20):
        assert partitions.partition_name(utc_today() + datetime.timedelta(days=days)) in names
    assert conn.execute("SELECT count(*) FROM page_views").fetchone()[0] == 43
    # The moved views kept their transaction ids: the rollup folds the tail view only.
    assert conn.execute("SELECT tally_rollup_page_views()").fetchone()[0] == 1
    assert rolled_up_views(conn) == 43


def test_maintain_partitions_names_the_days_it_left_behind_a_lock(
    conn, database_url, own_partitions, caplog, monkeypatch
):
    """It said only "0 day(s) made" after 9 s of losing to a long read."""
    monkeypatch.setattr(partitions, "ATTEMPTS", 2)
    monkeypatch.setattr(partitions, "PAUSE_SECONDS", 0.01)
    day = utc_today() - datetime.timedelta(days=3)
    conn.execute("INSERT INTO page_views (path, viewed_at) VALUES ('/late', %s::date + time '01:00')", (day,))
    with psycopg.connect(database_url) as reader:
        reader.execute("LOCK TABLE page_views_default IN ACCESS SHARE MODE")  # a long read of it
        with caplog.at_level(logging.INFO, logger="jobs"):
            defer(partitions.maintain_partitions)
            run_queued_jobs()
    said = [record.getMessage() for record in caplog.records if record.name == "jobs.partitions"]
    left = [m for m in said if m.startswith("left for the next run")]
    assert len(left) == 1 and partitions.partition_name(day) in left[0], said
    assert conn.execute("SELECT count(*) FROM page_views_default").fetchone()[0] == 1  # moved next time


def test_a_rollup_that_meets_a_day_being_moved_out_of_the_default_partition_loses_none(
    conn, database_url, own_partitions
):
    # A backfill's views wait in the default partition; maintain_partitions moves their day out
    # (at :03, when the minutely rollup runs too). The rollup that started during the move
    # waited on its locks, planned with the partitions it saw before (not the new day) and read
    # after the move (the default one emptied): it folded none of them and moved its watermark
    # past them, so stats never counted them and retention dropped them as rolled up.
    day = utc_today() - datetime.timedelta(days=3)
    conn.execute(
        "INSERT INTO page_views (path, viewed_at)"
        " SELECT '/moved', %s::date + n * interval '1 min' FROM generate_series(1, 50) n",
        (day,),
    )
    mover = psycopg.connect(database_url)  # its transaction stays open: the move is under way
    try:
        mover.execute("SELECT tally_ensure_day_partition(%s)", (day,))
        folded: list[int] = []

        def rollup() -> None:
            with psycopg.connect(database_url, autocommit=True) as other:
                folded.append(other.execute("SELECT tally_rollup_page_views()").fetchone()[0])

        roller = threading.Thread(target=rollup)
        roller.start()
        time.sleep(0.5)  # the rollup is waiting on the move
        mover.commit()
        roller.join(10)
    finally:
        mover.close()
    conn.execute("SELECT tally_rollup_page_views()")
    assert conn.execute("SELECT count(*) FROM page_views WHERE path = '/moved'").fetchone()[0] == 50
    assert rolled_up_views(conn) == 50, folded


def test_a_view_sent_while_its_day_is_moved_out_of_the_default_partition_is_stored(
    conn, database_url, pool, own_partitions
):
    # Today's partition missing (the worker or clock stopped for over a week): today's views
    # wait in the default partition, and maintain_partitions moves them out while beacons
    # arrive. An INSERT that waited on the move's lock was routed with the partitions it saw
    # before (the default one) and failed its partition constraint: a 500, the view lost.
    from tally.web.view_writer import View, insert_views

    today = utc_today()
    name = partitions.partition_name(today)
    conn.execute(f'ALTER TABLE page_views DETACH PARTITION "{name}"')  # a name, never input
    conn.execute(f'DROP TABLE "{name}"')
    insert_views(pool, [View("/before")])
    mover = psycopg.connect(database_url)  # its transaction stays open: the move is under way
    errors: list[Exception] = []

    def send() -> None:
        try:
            insert_views(pool, [View("/during")])
        except Exception as error:
            errors.append(error)

    try:
        mover.execute("SELECT tally_ensure_day_partition(%s)", (today,))
        sender = threading.Thread(target=send)
        sender.start()
        time.sleep(0.3)  # the insert is waiting on the move
        mover.commit()
        sender.join(10)
    finally:
        mover.close()
    assert errors == []
    stored = dict(conn.execute("SELECT path, tableoid::regclass::text FROM page_views").fetchall())
    assert stored == {"/before": name, "/during": name}


def test_cleanup_drops_whole_days_and_keeps_no_view_past_retention_plus_a_day(conn, own_partitions, caplog):
    for days_ago in range(41):  # made when they lay ahead, as maintain_partitions does
        day = utc_today() - datetime.timedelta(days=days_ago)
        conn.execute("SELECT tally_ensure_day_partition(%s)", (day,))
    conn.execute(
        "INSERT INTO page_views (path, viewed_at) SELECT '/d' || n % 40,"
        " now() - (n % 40) * interval '1 day' - (n % 24) * interval '1 hour' FROM generate_series(1, 4000) n"
    )
    conn.execute("INSERT INTO page_views (path, viewed_at) VALUES ('/caught', now() - interval '90 days')")
    conn.execute("SELECT tally_rollup_page_views()")
    assert conn.execute("SELECT count(*) FROM page_views_default").fetchone()[0] == 1
    kept = conn.execute(
        "SELECT count(*) FROM page_views WHERE viewed_at > now() - interval '30 days'"
    ).fetchone()[0]
    in_expired_days = conn.execute(
        "SELECT count(*) FROM page_views WHERE path LIKE '/d%%'"
        " AND viewed_at < ((now() AT TIME ZONE 'UTC')::date - 30)::timestamp AT TIME ZONE 'UTC'"
    ).fetchone()[0]

    defer(page_views.cleanup_old_page_views)
    with caplog.at_level(logging.INFO, logger="jobs"):
        run_queued_jobs()

    oldest = conn.execute("SELECT now() - min(viewed_at) FROM page_views").fetchone()[0]
    assert oldest <= datetime.timedelta(days=31)
    assert (
        conn.execute(
            "SELECT count(*) FROM page_views WHERE viewed_at > now() - interval '30 days'"
        ).fetchone()[0]
        == kept
    )
    dropped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dropped ")]
    expected = [
        partitions.partition_name(utc_today() - datetime.timedelta(days=n)) for n in range(40, 30, -1)
    ]
    # Days 31 to 40 ago went whole, in one group, not row by row.
    assert dropped == [f"dropped 10 day(s) of page views, {in_expired_days} views: {', '.join(expected)}"]
    assert conn.execute("SELECT count(*) FROM page_views_default").fetchone()[0] == 0  # rows deleted there
    assert rolled_up_views(conn) == 4001  # stats keep what retention drops


def test_cleanup_detaches_every_expired_day_before_it_drops_one(conn, own_partitions, caplog):
    """The views of all expired days are gone from page_views before any file is removed
    (most of the job's time), and a day holding a view not yet folded goes in the same run,
    after the job's own fold: one drop of 26 days, not three groups each detached and dropped."""
    for days_ago in range(31, 57):
        conn.execute(
            "SELECT tally_ensure_day_partition(%s)", (utc_today() - datetime.timedelta(days=days_ago),)
        )
    conn.execute(
        "INSERT INTO page_views (path, viewed_at) SELECT '/old', now() - (31 + n % 25) * interval '1 day'"
        " FROM generate_series(1, 500) n"
    )
    conn.execute("SELECT tally_rollup_page_views()")
    conn.execute("INSERT INTO page_views (path, viewed_at) VALUES ('/late', now() - interval '56 days')")

    defer(page_views.cleanup_old_page_views)
    with caplog.at_level(logging.INFO, logger="jobs"):
        run_queued_jobs()

    said = [r.getMessage() for r in caplog.records if r.name.startswith("jobs.")]
    dropped = [line for line in said if line.startswith("dropped ")]
    assert len(dropped) == 1 and dropped[0].startswith("dropped 26 day(s) of page views, 501 views: "), said
    assert not [line for line in said if line.startswith("left for the next cleanup")], said
    assert conn.execute("SELECT count(*) FROM page_views WHERE path IN ('/old', '/late')").fetchone()[0] == 0
    assert rolled_up_views(conn) == 501  # the late view was folded before its day went


def test_a_partition_with_views_not_rolled_up_is_not_dropped(conn, own_partitions):
    day = utc_today() - datetime.timedelta(days=50)
    conn.execute("INSERT INTO page_views (path, viewed_at) VALUES ('/late', %s)", (day,))
    name = conn.execute("SELECT tally_ensure_day_partition(%s)", (day,)).fetchone()[0]
    detach = "SELECT views, detached FROM tally_detach_rolled_up_partitions(ARRAY[%s::regclass], %s, %s)"
    state = conn.execute("SELECT watermark, in_progress FROM page_view_rollup_state").fetchone()
    assert conn.execute(detach, (name, *state)).fetchone() == (0, [])
    assert name in partition_names(conn)
    conn.execute("SELECT tally_rollup_page_views()")
    state = conn.execute("SELECT watermark, in_progress FROM page_view_rollup_state").fetchone()
    assert conn.execute(detach, (name, *state)).fetchone() == (1, [name])
    assert name not in partition_names(conn)
    assert conn.execute("SELECT tally_drop_detached_days()").fetchone()[0] == [name]
    assert conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0] is None


def test_a_drop_that_waits_on_a_reader_never_holds_up_ingest_long(
    conn, database_url, own_partitions, monkeypatch
):
    monkeypatch.setattr(partitions, "ATTEMPTS", 3)
    day = utc_today() - datetime.timedelta(days=60)
    conn.execute("INSERT INTO page_views (path, viewed_at) VALUES ('/old', %s)", (day,))
    name = conn.execute("SELECT tally_ensure_day_partition(%s)", (day,)).fetchone()[0]
    conn.execute("SELECT tally_rollup_page_views()")
    reader = psycopg.connect(database_url)  # a long read of the whole table, as a report does
    reader.execute("SELECT count(*) FROM page_views").fetchone()
    latencies: list[float] = []
    stop = threading.Event()

    def insert_views() -> None:
        with psycopg.connect(database_url, autocommit=True) as writer:
            while not stop.is_set():
                started = time.monotonic()
                writer.execute("INSERT INTO page_views (path) VALUES ('/live')")
                latencies.append(time.monotonic() - started)
                time.sleep(0.005)

    inserter = threading.Thread(target=insert_views)
    inserter.start()
    try:
        with jobs.app.open():
            connector = jobs.app.connector.get_sync_connector()
            state = connector.execute_query_one("SELECT watermark, in_progress FROM page_view_rollup_state")
            cutoff = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
            assert partitions.drop_expired_partitions(connector, cutoff, state) == 0
    finally:
        stop.set()
        inserter.join()
        reader.close()
    assert name in partition_names(conn)  # left for the next cleanup
    assert len(latencies) > 20 and max(latencies) < 0.5, max(latencies)


def test_the_release_converts_a_live_table_losing_nothing(fresh_database, monkeypatch):
    """The issue's case at a smaller scale (TALLY_TEST_CONVERSION_VIEWS; docs/BENCHMARKS.md has 5M):
    views go on arriving while migration 0019 runs; none is lost or doubled, no insert waits
    more than 2 s, and stats equal a count of the raw views before and after."""
    monkeypatch.setattr(migrations, "tally_files", lambda: [p for p in tally_files() if p.name < "0019"])
    apply_pending(fresh_database)
    monkeypatch.undo()
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO page_views (path, viewed_at, site, visitor) SELECT '/p' || n %% 500,"
            " now() - (n %% 40) * interval '1 day' - (n %% 1440) * interval '1 min', 'default', n %% 3000"
            " FROM generate_series(1, %s) n",
            (CONVERSION_VIEWS,),
        )
        conn.execute("INSERT INTO page_views (path, viewed_at) VALUES ('/ahead', now() + interval '5 days')")
        conn.execute("SELECT tally_rollup_page_views()")
        conn.execute(
            "INSERT INTO page_views (path, viewed_at) VALUES ('/ahead-tail', now() + interval '2 days')"
        )
        conn.execute("INSERT INTO page_views (path) VALUES ('/tail')")
        conn.execute("VACUUM ANALYZE page_views")

    stop = threading.Event()
    sent: list[str] = []
    latencies: list[float] = []
    errors: list[BaseException] = []

    def send_views(writer_id: int) -> None:
        with psycopg.connect(fresh_database, autocommit=True) as writer:
            n = 0
            while not stop.is_set():
                n += 1
                marker = f"/live/{writer_id}/{n}"
                ahead = "1 day" if n % 10 == 0 else "0"  # some dated tomorrow, past the bound
                started = time.monotonic()
                try:
                    writer.execute(
                        "INSERT INTO page_views (path, viewed_at) VALUES (%s, now() + %s::interval)",
                        (marker, ahead),
                    )
                except psycopg.Error as exc:  # every failure is the test's finding
                    errors.append(exc)
                    return
                latencies.append(time.monotonic() - started)
                sent.append(marker)
                time.sleep(0.005)

    def roll_up() -> None:  # the worker's rollup, every 200 ms
        with psycopg.connect(fresh_database, autocommit=True) as worker:
            while not stop.is_set():
                worker.execute("SELECT tally_rollup_page_views()")
                time.sleep(0.2)

    brackets: list[tuple[int, int, int]] = []

    def read_stats() -> None:
        """What stats read (rollups plus the tail, in one snapshot) against two counts of the raw
        views around it. In SQL, as every web version reads it: the release runs while the old
        code still serves."""
        window = (
            "date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' - interval '6 days'",
            "date_bin('15 minutes', now(), '2000-01-01 00:00+00') + interval '15 minutes'",
        )
        raw = f"SELECT count(*) FROM page_views WHERE viewed_at >= {window[0]} AND viewed_at < {window[1]}"
        rolled_up = (
            f"SELECT coalesce(sum(views), 0) FROM page_view_buckets WHERE bucket >= {window[0]}"
            f" AND bucket < {window[1]}"
        )
        tail = (
            "SELECT count(*) FROM page_views v, page_view_rollup_state s"
            " WHERE (v.recorded_xid >= s.watermark OR v.recorded_xid = ANY (s.in_progress))"
            f" AND viewed_at >= {window[0]} AND viewed_at < {window[1]}"
        )
        with psycopg.connect(fresh_database, autocommit=True) as counter:
            while not stop.is_set():
                before = counter.execute(raw).fetchone()[0]
                with counter.transaction():
                    counter.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    total = counter.execute(rolled_up).fetchone()[0] + counter.execute(tail).fetchone()[0]
                brackets.append((before, total, counter.execute(raw).fetchone()[0]))
                time.sleep(0.05)

    threads = [threading.Thread(target=send_views, args=(i,)) for i in range(3)]
    threads += [threading.Thread(target=roll_up), threading.Thread(target=read_stats)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(sent) > 30 and brackets, 10, message="live inserts and stats")
        started = time.monotonic()
        monkeypatch.setattr(migrations, "tally_files", lambda: [p for p in tally_files() if p.name < "0020"])
        assert apply_pending(fresh_database) == ["0019_page_view_partitions.sql"]
        monkeypatch.undo()
        logging.getLogger(__name__).info("converted in %.1f s", time.monotonic() - started)
        sent_then, read_then = len(sent), len(brackets)
        wait_until(lambda: len(sent) > sent_then + 30, 10, message="inserts after the switch")
        wait_until(lambda: len(brackets) > read_then + 3, 30, message="stats after the switch")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert max(latencies) < 2.0, max(latencies)
    with psycopg.connect(fresh_database, autocommit=True) as conn:  # a tail the checks below must find
        conn.execute("INSERT INTO page_views (path, viewed_at) VALUES ('/late', now() - interval '3 days')")
    assert all(before <= total <= after for before, total, after in brackets), [
        b for b in brackets if not b[0] <= b[1] <= b[2]
    ]

    with psycopg.connect(fresh_database, autocommit=True) as conn:
        unmarked = conn.execute(  # every view the rollup has not folded has its day marked
            "SELECT count(*) FROM page_views v, page_view_rollup_state s"
            " WHERE (v.recorded_xid >= s.watermark OR v.recorded_xid = ANY (s.in_progress))"
            "   AND NOT EXISTS (SELECT FROM page_view_tail_days t"
            "     WHERE t.xid = v.recorded_xid AND t.day = (v.viewed_at AT TIME ZONE 'UTC')::date)"
        )
        assert unmarked.fetchone()[0] == 0
        stored = [row[0] for row in conn.execute("SELECT path FROM page_views WHERE path LIKE '/live/%'")]
        assert sorted(stored) == sorted(sent)  # each once
        assert conn.execute("SELECT count(*) FROM page_views").fetchone()[0] == CONVERSION_VIEWS + 4 + len(
            sent
        )
        apply_pending(fresh_database)  # the releases after it convert the rollups (0020)
        conn.execute("SELECT tally_rollup_page_views()")
        assert rolled_up_views(conn) == CONVERSION_VIEWS + 4 + len(sent)
        kinds = dict(conn.execute("SELECT name, is_default FROM tally_page_view_partitions").fetchall())
        assert "page_views_legacy" in kinds and kinds["page_views_default"]
        assert conn.execute("SELECT count(*) FROM page_views_legacy").fetchone()[0] >= CONVERSION_VIEWS
        ahead = conn.execute(
            "SELECT path, tableoid::regclass::text FROM page_views WHERE path LIKE '/ahead%'"
        )
        assert sorted(ahead.fetchall()) == [
            ("/ahead", partitions.partition_name(utc_today() + datetime.timedelta(days=5))),
            ("/ahead-tail", partitions.partition_name(utc_today() + datetime.timedelta(days=2))),
        ]


def test_cleanup_with_a_converted_table_drops_the_legacy_partition_once_it_expires(
    fresh_database, monkeypatch
):
    monkeypatch.setattr(migrations, "tally_files", lambda: [p for p in tally_files() if p.name < "0019"])
    apply_pending(fresh_database)
    monkeypatch.undo()
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO page_views (path, viewed_at) SELECT '/p', now() - n * interval '1 day'"
            " FROM generate_series(0, 39) n"
        )
        apply_pending(fresh_database)
        conn.execute("SELECT tally_rollup_page_views()")
        state = conn.execute("SELECT watermark, in_progress FROM page_view_rollup_state").fetchone()
        batch = "SELECT tally_delete_expired_views_batch(now() - interval '30 days', %s, %s, 1000)"
        assert conn.execute(batch, state).fetchone()[0] == 10  # 30 to 39 days old, deleted from it
        assert conn.execute("SELECT count(*) FROM page_views").fetchone()[0] == 30
        # Its range ends at the next UTC midnight after the release: once that is past the
        # retention cutoff, it goes whole, as a day does.
        ends = conn.execute("SELECT ends FROM tally_page_view_partitions WHERE name = 'page_views_legacy'")
        assert ends.fetchone()[0] == datetime.datetime.combine(
            utc_today() + datetime.timedelta(days=1), datetime.time(), datetime.UTC
        )
        # The views a detach reports are the partition's live rows in the cumulative statistics,
        # which a session sends at most once a second: CI once read the 40 from before the delete.
        # PostgreSQL 14 has no pg_stat_force_next_flush: its collector takes a session's counts
        # when the session goes idle, at most every 500 ms, and answers from a file it rewrites.
        if conn.info.server_version >= 150000:
            conn.execute("SELECT pg_stat_force_next_flush()")
        else:
            live = "SELECT pg_stat_clear_snapshot(), pg_stat_get_live_tuples('page_views_legacy'::regclass)"
            wait_until(lambda: conn.execute(live).fetchone()[1] == 30, 10, 0.1, "the delete's statistics")
        detached = conn.execute(
            "SELECT views, detached FROM tally_detach_rolled_up_partitions('{page_views_legacy}', %s, %s)",
            state,
        )
        assert detached.fetchone() == (30, ["page_views_legacy"])
        assert conn.execute("SELECT tally_drop_detached_days()").fetchone()[0] == ["page_views_legacy"]
        assert "page_views_legacy" not in partition_names(conn)


def test_the_schedule_runs_maintain_partitions_hourly():
    from jobs.schedule import periodic_tasks

    schedule = {task.name: cron for task, cron in periodic_tasks(dataclasses.replace(jobs.settings)).items()}
    assert schedule["maintain_partitions"] == "3 * * * *"


def test_the_tail_is_read_from_its_marked_days_only(conn, pool):
    """Views not yet rolled up mark their UTC days (and stats prune the partitions to them); a
    view backfilled into an old day counts at once, and the rollup forgets the marks it folds."""
    from tally.web.stats import StatsReader

    stats = StatsReader(pool, retention_days=30)
    conn.execute("INSERT INTO page_views (path) VALUES ('/now')")
    conn.execute("INSERT INTO page_views (path, viewed_at) VALUES ('/old', now() - interval '20 days')")
    days = conn.execute("SELECT day FROM page_view_tail_days ORDER BY day").fetchall()
    assert [day for (day,) in days] == [utc_today() - datetime.timedelta(days=20), utc_today()]
    assert stats.stats_for_window(30)["total_views"] == 2
    plan = conn.execute(
        "EXPLAIN SELECT count(*) FROM page_views WHERE recorded_xid >= '0'"
        " AND viewed_at >= %s AND viewed_at < %s",
        (utc_today(), utc_today() + datetime.timedelta(days=1)),
    ).fetchall()
    scanned = [line for (line,) in plan if "on page_views_" in line]
    assert len(scanned) == 1, scanned  # today's partition alone, of all the days and the default one
    conn.execute("SELECT tally_rollup_page_views()")
    assert conn.execute("SELECT count(*) FROM page_view_tail_days").fetchone()[0] == 0
    assert stats.stats_for_window(30)["total_views"] == 2


def test_every_read_of_the_tail_is_planned_over_its_days_alone(conn):
    """Health's views waiting, /metrics' total and the search engines' domains read the tail by
    transaction id alone, and were planned over every day partition on each call: with a year of
    them (375), health took 48-62 ms where it took 5-7 (an outsider's audit). Each now reads the
    days the tail's marks span, as the stats' own tail queries do."""
    from tally.db import QUERIES

    conn.execute(
        "SELECT tally_ensure_day_partition(day::date) FROM generate_series("
        " (now() AT TIME ZONE 'UTC')::date - 60, (now() AT TIME ZONE 'UTC')::date, '1 day') AS day"
    )
    conn.execute("INSERT INTO page_views (path, referrer) VALUES ('/now', 'https://elsewhere.example/')")
    state = conn.cursor(row_factory=psycopg.rows.dict_row).execute(QUERIES["rollup_state"]).fetchone()
    params = {**state, "since": datetime.date.min}
    conn.execute("SET plan_cache_mode = force_custom_plan")  # as the web plans
    for name in ("views_waiting", "page_views_total", "referrer_domains"):
        plan = conn.execute("EXPLAIN " + QUERIES[name], params).fetchall()
        scanned = {line.split(" on ")[1].split()[0] for (line,) in plan if " on page_views_" in line}
        assert scanned == {partitions.partition_name(utc_today())}, (name, scanned)
    assert conn.execute(QUERIES["views_waiting"], params).fetchone()[0] == 1
    assert "elsewhere.example" in {row[0] for row in conn.execute(QUERIES["referrer_domains"], params)}


def test_a_filtered_answer_is_planned_over_its_windows_days_alone(conn, pool, monkeypatch):
    """A filtered answer bounded its visits' UTC days by date_trunc('day', ..., 'UTC'), which
    PostgreSQL 15 holds STABLE (18: IMMUTABLE): 15 planned every day partition, 87 ms with a year
    of them, and pruned them only as the query started. The bounds are values now."""
    from tally.db import QUERIES
    from tally.web.stats import StatsReader

    conn.execute(
        "SELECT tally_ensure_day_partition(day::date) FROM generate_series("
        " (now() AT TIME ZONE 'UTC')::date - 60, (now() AT TIME ZONE 'UTC')::date, '1 day') AS day"
    )
    conn.execute("INSERT INTO page_views (path, visitor) VALUES ('/a', 1)")
    answered: list[dict] = []
    original = psycopg.Cursor.execute

    def execute(self, query, params=None, *args, **kwargs):
        if query == QUERIES["filtered_answer"]:
            answered.append(params)
        return original(self, query, params, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    answer = StatsReader(pool, retention_days=30).stats_for_window(7, filters={"path": "/a"})
    assert answer["total_views"] == 1
    monkeypatch.undo()
    conn.execute("SET plan_cache_mode = force_custom_plan")  # as the web plans
    plan = [line for (line,) in conn.execute("EXPLAIN " + QUERIES["filtered_answer"], answered[0]).fetchall()]
    assert not [line for line in plan if "Subplans Removed" in line]  # pruned when planned, not as it ran
    days = {line.split(" on ")[1].split()[0] for line in plan if " on page_views_p" in line}
    assert partitions.partition_name(utc_today()) in days and len(days) <= 9, sorted(days)


def test_views_not_rolled_up_before_the_release_are_in_stats_after_it(fresh_database, monkeypatch):
    monkeypatch.setattr(migrations, "tally_files", lambda: [p for p in tally_files() if p.name < "0019"])
    apply_pending(fresh_database)
    monkeypatch.undo()
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO page_views (path, viewed_at) VALUES ('/a', now() - interval '9 days'), ('/b', now())"
        )
        apply_pending(fresh_database)
        days = conn.execute("SELECT day FROM page_view_tail_days ORDER BY day").fetchall()
        assert [day for (day,) in days] == [utc_today() - datetime.timedelta(days=9), utc_today()]
    from tally.web.stats import StatsReader

    with web_pool(from_env({"DATABASE_URL": fresh_database}, process_type="web")) as pool:
        assert StatsReader(pool, retention_days=30).stats_for_window(30)["total_views"] == 2


def test_maintain_partitions_reads_the_partitions_of_a_converted_table(fresh_database, monkeypatch):
    """A table converted by 0019 keeps its rows in page_views_legacy, whose range starts at
    -infinity: a time Python cannot hold. maintain_partitions' list of partitions failed on it
    (DataError: timestamp too small), every hour, until the legacy partition expired."""
    from psycopg.rows import dict_row

    from tally.db import QUERIES

    monkeypatch.setattr(migrations, "tally_files", lambda: [p for p in tally_files() if p.name < "0019"])
    apply_pending(fresh_database)
    monkeypatch.undo()
    with psycopg.connect(fresh_database, autocommit=True, row_factory=dict_row) as conn:
        conn.execute("INSERT INTO page_views (path, viewed_at) VALUES ('/a', now() - interval '2 days')")
        apply_pending(fresh_database)
        names = {row["name"] for row in conn.execute(QUERIES["page_view_partitions"])}
    assert "page_views_legacy" in names
    assert partitions.partition_name(utc_today() + datetime.timedelta(days=1)) in names


def test_a_partition_change_losing_to_traffic_stops_between_tries_when_asked(monkeypatch):
    """A drain's abort waited out up to 30 tries (9 s) of a detach losing to a long read."""
    from procrastinate.exceptions import ConnectorException, JobAborted

    monkeypatch.setattr(partitions, "PAUSE_SECONDS", 0.01)
    tries = []

    def locked() -> dict:
        tries.append(1)
        try:
            raise psycopg.errors.LockNotAvailable("canceling statement due to lock timeout")
        except psycopg.Error as error:
            raise ConnectorException("Database error.") from error

    assert partitions.with_retries(locked) is None and len(tries) == partitions.ATTEMPTS
    tries.clear()
    with pytest.raises(JobAborted):
        partitions.with_retries(locked, lambda: len(tries) >= 2)
    assert len(tries) == 2
