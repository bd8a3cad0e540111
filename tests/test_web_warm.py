"""Readers' answers read again as each rollup lands (tally/web/warm.py): the reader's next
request reads no rollup table, and its answer is the one a reader with nothing kept gets."""

from __future__ import annotations

import datetime
import logging
import time

import psycopg
import pytest

from tally.db import QUERIES
from tally.web import warm
from tally.web.replica import ReadRouter
from tally.web.stats import StatsReader
from tally.web.warm import WarmAnswers
from tests.conftest import wait_until
from tests.test_web import roll_up
from tests.test_web_carried import us_view
from tests.test_web_exact import insert_raw

# What a window reads of the rollup tables; a value beyond its most viewed (a tail's that might
# reach a panel) is looked up by a request when it comes: none do in these tests.
ROLLED_UP = {name for name in QUERIES if name.startswith("stats_rolled_up")} - {"stats_rolled_up_value_views"}


@pytest.fixture
def rolled_up_reads(monkeypatch) -> list[str]:
    """The names of the rollup tables' queries run from here on."""
    names = {QUERIES[name]: name for name in ROLLED_UP | {"stats_rolled_up_value_views"}}
    ran: list[str] = []
    original = psycopg.Cursor.execute

    def execute(self, query, params=None, *args, **kwargs):
        if isinstance(query, str) and query in names:
            ran.append(names[query])
        return original(self, query, params, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    return ran


def arrive(conn: psycopg.Connection, first: int, count: int) -> None:
    insert_raw(conn, [us_view(first + n, datetime.timedelta(minutes=n)) for n in range(count)])


def without_time(answer: dict) -> dict:
    answer.pop("generated_at")
    answer["previous"].pop("generated_at", None)
    return answer


def test_after_a_rollup_a_readers_answer_is_read_before_the_reader_asks(pool, conn, rolled_up_reads):
    reader = StatsReader(pool, retention_days=30)
    warm_answers = WarmAnswers(reader, ReadRouter(pool))
    arrive(conn, 0, 30)
    roll_up(conn)
    reader.stats_for_window(30, compare=True)  # the dashboard's: remembered
    reader.stats_for_window(7, filters={"country": "US"})  # filtered: carried forward, not warmed
    assert warm_answers.warm_once() == 1  # the state, first seen
    assert warm_answers.warm_once() == 0  # nothing moved
    arrive(conn, 100, 20)
    roll_up(conn)
    rolled_up_reads.clear()
    assert warm_answers.warm_once() == 1
    assert set(rolled_up_reads) == ROLLED_UP  # read, by the warm-up
    rolled_up_reads.clear()
    answer = reader.stats_for_window(30, compare=True)
    assert rolled_up_reads == []  # the reader's request read no rollup table
    assert warm_answers.reads.served() == {"replica": 0, "primary": 0}  # the metric counts readers
    whole = StatsReader(pool, retention_days=30).stats_for_window(30, compare=True)
    assert without_time(answer) == without_time(whole) and answer["total_views"] == 50


def test_only_the_unfiltered_windows_of_now_readers_asked_for_lately_are_warmed(pool, conn, monkeypatch):
    reader = StatsReader(pool, retention_days=30)
    warm_answers = WarmAnswers(reader, ReadRouter(pool))
    today = conn.execute("SELECT (now() AT TIME ZONE 'UTC')::date").fetchone()[0]
    reader.stats_for_window(7, filters={"country": "US"})
    reader.stats_for_window(7, last_day=today - datetime.timedelta(days=7))  # a report's past week
    reader.stats_for_window(7, remember=False)  # the warm-up's own
    assert reader.recently_asked(60) == [] and warm_answers.warm_once() == 0
    reader.stats_for_window(7, "example.com", "Asia/Kathmandu")
    reader.stats_for_window(30)
    assert reader.recently_asked(60) == [
        (30, None, "UTC", False),
        (7, "example.com", "Asia/Kathmandu", False),
    ]
    monkeypatch.setattr(warm, "KEEP_WARM_SECONDS", 0.0)  # asked too long ago: left to the next reader
    assert warm_answers.warm_once() == 0


def test_the_thread_outlives_a_database_it_cannot_reach_and_stops_when_told(database_url, caplog):
    from tally.config import from_env
    from tally.db import web_pool

    bad_url = "postgresql://postgres@/postgres?host=/nonexistent-tally-socket-dir"
    settings = from_env({"DATABASE_URL": bad_url}, process_type="web")
    caplog.set_level(logging.DEBUG, logger="tally.web.warm")
    with web_pool(settings) as unreachable:
        reader = StatsReader(unreachable, retention_days=30)
        reader._asked[(30, None, "UTC", True)] = float("inf")  # a reader asked
        warm_answers = WarmAnswers(reader, ReadRouter(unreachable), poll_seconds=0.05)
        warm_answers.start()
        try:
            said = lambda: [r.getMessage() for r in caplog.records if r.name == "tally.web.warm"]  # noqa: E731
            wait_until(lambda: len(said()) >= 2, 10, 0.05, "two failed looks")
            assert warm_answers._thread.is_alive()
            assert all(line.startswith("answers not warmed") for line in said())
        finally:
            warm_answers.close()
        assert not warm_answers._thread.is_alive()


def test_a_warm_up_takes_no_readers_turn_and_waits_for_none(pool):
    """Readers share the primary's turns (two of the web's four connections; the rest wait, up to
    a share of the threads, then 503). A warm-up counted as one of them made a reader's 503 in
    CI's pooler test, eight readers at once. It takes a turn only if one is free at once."""
    from tally.web.replica import ReadsBusy

    reads = ReadRouter(pool)
    held = [reads._primary_slots.acquire(blocking=False) for _ in range(reads.read_slots)]
    assert all(held)  # every turn taken by readers
    try:
        started = time.monotonic()
        with pytest.raises(ReadsBusy, match="waits for none"):
            reads.run(lambda p: 1, background=True)
        assert time.monotonic() - started < 0.5 and reads._primary_readers == 0
    finally:
        for _ in held:
            reads._primary_slots.release()
    assert reads.run(lambda p: 1, background=True) == 1 and reads.served() == {"replica": 0, "primary": 0}
