"""The visitors of the last 5 minutes carried forward (tally/web/current_visitors.py) are the
count the SQL query makes, arrivals by arrival, whatever arrives."""

from __future__ import annotations

import datetime
import gc
import random
import tracemalloc

import psycopg
import pytest

from tally.db import QUERIES
from tally.web import current_visitors
from tally.web.current_visitors import CurrentVisitors
from tally.web.stats import snapshot

SITES = ["a.example", "b.example"]


@pytest.fixture(autouse=True)
def carried_from_one_id(monkeypatch):
    """Kept from the first id on (a site counts in SQL under CARRY_FROM_IDS): these tests' few
    ids are carried forward."""
    monkeypatch.setattr(current_visitors, "CARRY_FROM_IDS", 1)


def arrive(conn: psycopg.Connection, rng: random.Random, now: datetime.datetime) -> None:
    """A few views and events about `now`: most in the window, some too old (late beacons),
    some ahead (a clock far off), some without an id, ids back from earlier steps."""
    for _ in range(rng.randint(0, 6)):
        at = now + datetime.timedelta(seconds=rng.choice([rng.uniform(-330, 5), rng.uniform(5, 400)]))
        site, visitor = rng.choice(SITES), rng.choice([None, *range(40)])
        if rng.random() < 0.2:
            conn.execute(
                "INSERT INTO events (site, name, path, visitor, occurred_at)"
                " VALUES (%s, 'Signup', '/', %s, %s)",
                (site, visitor, at),
            )
        else:
            conn.execute(
                "INSERT INTO page_views (site, path, visitor, viewed_at) VALUES (%s, '/', %s, %s)",
                (site, visitor, at),
            )


def counted(pool, kept: CurrentVisitors, site: str | None, now: datetime.datetime) -> tuple[int, int]:
    """The kept count and the query's, in one snapshot."""
    with snapshot(pool) as cur:
        carried = kept.count(cur, site, now)
        params = {"site": site, "five_minutes_ago": now - current_visitors.WINDOW, "now": now}
        cur.execute(QUERIES["current_visitors"], params)
        return carried, cur.fetchone()[0]


@pytest.fixture
def opened(database_url):
    """Connections a test opens and may leave in a transaction: closed (rolled back) before the
    tables are emptied for the next test, even when an assertion failed half way."""
    connections: list[psycopg.Connection] = []
    yield lambda: connections.append(psycopg.connect(database_url)) or connections[-1]
    for connection in connections:
        connection.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_carried_forward_it_is_the_querys_count_whatever_arrives(pool, conn, opened, seed, monkeypatch):
    rng = random.Random(seed)
    reads = []
    read_whole = current_visitors._read_whole
    monkeypatch.setattr(current_visitors, "_read_whole", lambda *args: reads.append(1) or read_whole(*args))
    kept = CurrentVisitors()
    now = conn.execute("SELECT now()").fetchone()[0]
    late = None  # a transaction that commits a few steps after it began
    for step in range(40):
        now += datetime.timedelta(seconds=rng.uniform(0, 40))
        arrive(conn, rng, now)
        if late is None and rng.random() < 0.2:
            late = opened()
            arrive(late, rng, now)
            late.execute(
                "INSERT INTO page_views (site, path, visitor, viewed_at) VALUES ('a.example', '/', 99, %s)",
                (now,),
            )
        elif late is not None and rng.random() < 0.3:
            late.commit()
            late = None
        if step == 25:  # an operator's DELETE: a kept count is read whole again
            conn.execute("DELETE FROM page_views WHERE visitor = 3")
        for site in (None, "a.example"):
            carried, query = counted(pool, kept, site, now)
            assert carried == query, (step, site)
    # Read whole at the first request of each site and after the DELETE, carried otherwise.
    assert len(reads) <= 6, len(reads)


def test_a_count_asked_at_an_earlier_time_is_read_whole(pool, conn):
    """A request whose now is before the kept window's end (its transaction began earlier)
    would lack the ids the kept window dropped."""
    now = conn.execute("SELECT now()").fetchone()[0]
    conn.execute(
        "INSERT INTO page_views (site, path, visitor, viewed_at)"
        " VALUES ('a.example', '/', 1, %s), ('a.example', '/', 2, %s)",
        (now - datetime.timedelta(minutes=4, seconds=50), now),
    )
    kept = CurrentVisitors()
    later = now + datetime.timedelta(seconds=20)
    assert counted(pool, kept, None, later) == (1, 1)  # id 1 has left the window
    assert counted(pool, kept, None, now) == (2, 2)


def test_a_request_whose_snapshot_is_older_than_the_kept_one_counts_its_own(pool, conn):
    """A kept count holds views an older snapshot does not see: carried into it, they would
    count there."""
    now = conn.execute("SELECT now()").fetchone()[0]
    kept = CurrentVisitors()
    assert counted(pool, kept, None, now) == (0, 0)
    with snapshot(pool) as older:
        older.execute("SELECT 1")  # its snapshot: no view yet
        conn.execute(
            "INSERT INTO page_views (site, path, visitor, viewed_at) VALUES ('a.example', '/', 7, %s)", (now,)
        )
        assert counted(pool, kept, None, now) == (1, 1)  # kept, with the view
        assert kept.count(older, None, now) == 0


def test_a_quiet_site_is_counted_by_the_query_and_a_busy_one_kept(pool, conn, monkeypatch):
    """Under CARRY_FROM_IDS ids the query costs what carrying would: nothing is kept."""
    monkeypatch.setattr(current_visitors, "CARRY_FROM_IDS", 3)
    now = conn.execute("SELECT now()").fetchone()[0]
    insert = (
        "INSERT INTO page_views (site, path, visitor, viewed_at)"
        " SELECT 'a.example', '/', n, %s FROM generate_series(%s::int, %s::int) n"
    )
    conn.execute(insert, (now, 1, 2))
    kept = CurrentVisitors()
    assert counted(pool, kept, None, now) == (2, 2) and kept._kept == {}
    conn.execute(insert, (now, 3, 4))
    assert counted(pool, kept, None, now) == (4, 4) and set(kept._kept) == {None}
    conn.execute("DELETE FROM page_views WHERE visitor > 1")
    assert counted(pool, kept, None, now) == (1, 1) and kept._kept == {}


def test_sites_a_reader_makes_up_leave_nothing_behind(pool, conn):
    """A public dashboard's reader may name any `?site=`: counting a site that has no visitor
    keeps nothing of it, so the web's memory does not grow with the names asked for (a lock kept
    per name grew by about 280 bytes each: 5 MB over 20,000 requests)."""
    now = conn.execute("SELECT now()").fetchone()[0]
    kept = CurrentVisitors()
    with snapshot(pool) as cur:
        for number in range(50):  # the statement prepared, the connection's buffers grown
            kept.count(cur, f"warm-{number}.example", now)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for number in range(3000):
                assert kept.count(cur, f"made-up-{number}.example", now) == 0
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    assert grown < 100_000, f"{grown:,} bytes kept for 3,000 sites"
