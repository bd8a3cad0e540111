"""The tail's moves carried forward (tally/web/tail_moves.py): kept moves brought up to date by
the (id, day)s that changed give what reading the whole tail gives, whatever arrived (ids back
on other days, events, a transaction that commits late), and are not used once raw rows went
or changed, or by a request that sees less than the kept moves saw."""

from __future__ import annotations

import datetime
import random

import psycopg
import pytest

from tally.web import tail_moves
from tally.web.stats import StatsReader
from tests.conftest import record_carried, request_bounds
from tests.test_visitor_days import insert_at, midnights, returning_visitors
from tests.test_web import roll_up
from tests.test_web_carried import answers, send_events, us_view
from tests.test_web_exact import arrivals, insert_raw, random_visits


@pytest.fixture
def carried_uses(monkeypatch) -> list[bool]:
    """Each time kept moves were found: whether they were carried forward (False: read whole)."""
    return record_carried(monkeypatch, tail_moves.TailMoves, "_carried")


def whole(pool, tz: str) -> list[dict]:
    """The answers of a reader that keeps nothing yet: every tail read whole."""
    return answers(StatsReader(pool, retention_days=30), [{}], tz)


@pytest.mark.parametrize(("seed", "tz"), [(41, "UTC"), (42, "Asia/Kathmandu"), (43, "America/St_Johns")])
def test_kept_moves_carried_forward_are_the_whole_tails_whatever_arrives(pool, conn, carried_uses, seed, tz):
    rng = random.Random(seed)
    batches = arrivals(rng, random_visits(rng, 700), chunks=5)
    today = conn.execute("SELECT (now() AT TIME ZONE 'UTC')::date").fetchone()[0]
    around = midnights(tz, today - datetime.timedelta(days=3), 3)  # ids back across midnights
    reader = StatsReader(pool, retention_days=30)  # keeps its tails' moves from one batch to the next
    insert_raw(conn, batches[0])
    roll_up(conn)
    answers(reader, [{}], tz)
    for number, batch in enumerate(batches[1:]):
        if number == 2:
            roll_up(conn)  # a new tail: read whole once, then carried again
        insert_raw(conn, batch)
        insert_at(conn, returning_visitors(rng, 40, around))
        insert_raw(conn, [(*view[:4], None, *view[5:]) for view in batch[:5]])  # views without an id
        send_events(conn, rng, 10)
        carried_uses.clear()
        day = conn.execute("SELECT (now() AT TIME ZONE %s)::date", (tz,)).fetchone()[0]
        found, counted = answers(reader, [{}], tz), whole(pool, tz)
        if conn.execute("SELECT (now() AT TIME ZONE %s)::date", (tz,)).fetchone()[0] != day:
            continue  # the zone's day turned between the two: windows of different days
        assert found == counted, number
        assert carried_uses and all(carried_uses), "kept moves were carried forward, not read again"


def test_nothing_recorded_since_reads_no_moves_again(pool, conn, monkeypatch):
    insert_raw(conn, [us_view(1, datetime.timedelta(minutes=5)), us_view(2, datetime.timedelta(minutes=9))])
    reader = StatsReader(pool, retention_days=30)
    first = reader.stats_for_window(2)
    read: list[dict] = []
    original = tail_moves.Moves.read.__func__

    def counting(cls, cur, bounds, days, as_of):
        read.append({"days": days, "as_of": as_of})
        return original(cls, cur, bounds, days, as_of)

    monkeypatch.setattr(tail_moves.Moves, "read", classmethod(counting))
    again = reader.stats_for_window(2)
    assert read == [] and again["visitors"] == first["visitors"] == 2
    insert_raw(conn, [us_view(3, datetime.timedelta(minutes=1))])
    assert reader.stats_for_window(2)["visitors"] == 3
    assert [bool(part["days"]) for part in read] == [True, True]  # the one changed (id, day), twice
    assert read[0]["as_of"] is not None and read[1]["as_of"] is None


def test_removed_or_changed_rows_make_the_tail_read_whole(pool, conn, carried_uses, ages_on_one_utc_day):
    insert_raw(conn, [us_view(n, datetime.timedelta(minutes=n)) for n in range(1, 6)])
    reader = StatsReader(pool, retention_days=30)
    assert reader.stats_for_window(2)["visitors"] == 5
    conn.execute("DELETE FROM page_views WHERE visitor = 2")
    assert reader.stats_for_window(2)["visitors"] == 4
    conn.execute("UPDATE page_views SET visitor = 1 WHERE visitor = 3")
    assert reader.stats_for_window(2)["visitors"] == 3
    assert carried_uses == []  # each time the kept moves were of other rows: read whole
    insert_raw(conn, [us_view(9, datetime.timedelta(minutes=1))])
    assert reader.stats_for_window(2)["visitors"] == 4
    assert carried_uses == [True]  # nothing removed since: carried again


def test_a_request_that_sees_less_than_the_kept_moves_reads_its_own(pool, conn, database_url):
    """A request whose snapshot began before the one moves were kept in does not see what they
    counted: it reads its tail whole, and its moves are its snapshot's."""
    insert_raw(conn, [us_view(1, datetime.timedelta(minutes=5))])
    reader = StatsReader(pool, retention_days=30)
    with psycopg.connect(database_url) as older:
        older.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with older.transaction(), older.cursor() as cur:
            cur.execute("SELECT 1")  # its snapshot: one id
            insert_raw(conn, [us_view(2, datetime.timedelta(minutes=4))])
            assert reader.stats_for_window(2)["visitors"] == 2  # kept, seeing two ids
            bounds, _ = request_bounds(cur)
            state = (bounds["watermark"], tuple(bounds["in_progress"]))
            visitors, _ = reader._tail_moves.read(cur, state, bounds)
            whole_site = {day: moved for dim, _value, day, moved in visitors if dim is None}
            assert sum(whole_site.values()) == 1


def test_views_of_a_transaction_running_when_moves_were_kept_count_once_it_commits(
    pool, conn, database_url, carried_uses, ages_on_one_utc_day
):
    """A transaction that ran when moves were kept commits later, with an xid below the
    snapshots that follow: its ids are found through the kept snapshot's list of running
    transactions, not lost and not counted twice."""
    insert_raw(conn, [us_view(3, datetime.timedelta(minutes=30))])
    reader = StatsReader(pool, retention_days=30)
    with psycopg.connect(database_url) as running:
        insert_raw(
            running, [us_view(4, datetime.timedelta(minutes=20)), us_view(3, datetime.timedelta(minutes=2))]
        )
        kept = reader.stats_for_window(2)
        insert_raw(conn, [us_view(5, datetime.timedelta(minutes=10))])
        carried_before = reader.stats_for_window(2)
        running.commit()
    carried_after = reader.stats_for_window(2)
    counted = StatsReader(pool, retention_days=30).stats_for_window(2)
    assert [kept["visitors"], carried_before["visitors"], carried_after["visitors"]] == [1, 2, 3]
    for key in ("visitors", "visits", "bounce_rate", "visit_duration_seconds", "daily", "top_paths"):
        assert carried_after[key] == counted[key], key
    assert carried_uses == [True, True]
