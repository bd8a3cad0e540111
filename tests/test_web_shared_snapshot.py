"""A large filtered answer shared with a second connection in the request's snapshot
(tally/web/shared_snapshot.py): the same numbers as one connection's count, never a view the
request's snapshot does not see, an error on either connection counted again in more chunks, and
no connection taken that the pool cannot spare."""

from __future__ import annotations

import datetime
import random
import threading

import psycopg
import pytest

from tally.db import QUERIES
from tally.web import filtered, shared_snapshot
from tally.web.stats import StatsReader
from tests import pooler
from tests.test_web import roll_up
from tests.test_web_carried import GOAL_CASES, answers, chunks_cancelled, send_events, us_view
from tests.test_web_exact import FILTER_CASES, arrivals, insert_raw, random_visits


@pytest.fixture
def shared(monkeypatch) -> list[bool]:
    return share_every_answer(monkeypatch)


def share_every_answer(monkeypatch) -> list[bool]:
    """Every answer counted afresh from here on is shared (in chunks of 10 views, when the pool
    spares a connection); for each, whether it was."""
    monkeypatch.setattr(filtered, "CHUNK_VIEWS", 10)
    monkeypatch.setattr(filtered, "SHARED_FROM_VIEWS", 0)
    uses: list[bool] = []
    count_chunks = shared_snapshot.count_chunks

    def spied(cur, other, chunks, count_chunk):
        uses.append(other is not None)
        return count_chunks(cur, other, chunks, count_chunk)

    monkeypatch.setattr(shared_snapshot, "count_chunks", spied)
    return uses


def load(conn: psycopg.Connection, seed: int) -> None:
    """Views rolled up and a tail after them, views without an id, and events."""
    rng = random.Random(seed)
    batches = arrivals(rng, random_visits(rng, 500), chunks=1)
    insert_raw(conn, batches[0])
    roll_up(conn)
    insert_raw(conn, batches[1])
    insert_raw(conn, [(*view[:4], None, *view[5:]) for view in batches[1][:5]])
    send_events(conn, rng, 20)


@pytest.mark.parametrize("tz", ["UTC", "Asia/Kathmandu"])
def test_an_answer_shared_with_a_second_connection_is_the_whole_count(pool, conn, monkeypatch, tz):
    load(conn, 51)
    cases = [*FILTER_CASES, *GOAL_CASES]
    whole = answers(StatsReader(pool, retention_days=30), cases, tz)  # one connection, one statement
    uses = share_every_answer(monkeypatch)
    assert answers(StatsReader(pool, retention_days=30), cases, tz) == whole
    assert uses and all(uses)


def test_the_second_connection_sees_what_the_request_saw_not_what_committed_since(
    pool, conn, shared, monkeypatch
):
    """A view committed after the request's snapshot, before the second connection joins it (at
    the export), is not counted; the next request counts it."""
    insert_raw(conn, [us_view(visitor, datetime.timedelta(minutes=visitor)) for visitor in range(1, 41)])
    before = StatsReader(pool, retention_days=30).stats_for_window(3, filters={"country": "US"})
    original = psycopg.Cursor.execute

    def execute(self, query, params=None, *args, **kwargs):
        if query == QUERIES["export_snapshot"]:  # views of ids in every chunk commit meanwhile
            insert_raw(conn, [us_view(visitor, datetime.timedelta(seconds=5)) for visitor in range(1, 41)])
        return original(self, query, params, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    during = StatsReader(pool, retention_days=30).stats_for_window(3, filters={"country": "US"})
    monkeypatch.setattr(psycopg.Cursor, "execute", original)
    after = StatsReader(pool, retention_days=30).stats_for_window(3, filters={"country": "US"})
    assert shared == [True, True, True]
    assert during["total_views"] == before["total_views"] == 40
    assert during["top_paths"] == before["top_paths"]
    assert after["total_views"] == 80


def test_a_chunk_past_the_timeout_on_the_second_connection_is_counted_again_in_halves(
    pool, conn, shared, monkeypatch
):
    """A chunk past the timeout on the second connection is undone alone (its savepoint there)
    and counted again in halves; the request's chunk stays counted."""
    insert_raw(conn, arrivals(random.Random(52), random_visits(random.Random(52), 300), chunks=1)[0])
    monkeypatch.setattr(filtered, "SHARED_FROM_VIEWS", 10**12)
    whole = StatsReader(pool, retention_days=30).stats_for_window(5, filters={"country": "US"})
    monkeypatch.setattr(filtered, "SHARED_FROM_VIEWS", 0)
    # Chunk 1 of 2 is the second connection's.
    tried = chunks_cancelled(monkeypatch, lambda chunks, chunk: chunks < 4 and chunk == 1)
    answer = StatsReader(pool, retention_days=30).stats_for_window(5, filters={"country": "US"})
    whole.pop("generated_at"), answer.pop("generated_at")
    assert answer == whole
    assert sorted(tried) == [(2, 0), (2, 1), (4, 1), (4, 3)]
    assert shared == [False, True]  # the whole count alone, then shared


def test_no_connection_left_to_the_views_is_lent_a_replicas_pool_lends_all_but_one(
    pool, conn, shared, database_url
):
    """The primary's pool lends only while more than two idle besides the request's (the views'
    and events' inserts hold one each); a replica's, which takes no writes, while more than one."""
    from tally.config import from_env
    from tally.db import web_pool

    insert_raw(conn, [us_view(visitor, datetime.timedelta(minutes=visitor)) for visitor in range(1, 41)])
    with web_pool(from_env({"DATABASE_URL": database_url}, process_type="web")) as replica_like:
        replica_like.wait(timeout=30)  # every connection open: what it lends counts its idle ones
        for lender in (pool, replica_like):
            # The request's connection and one held: two of the four idle.
            held = lender.getconn()
            try:
                reader = StatsReader(pool, retention_days=30)  # nothing kept: counted
                answer = reader.stats_for_window(3, filters={"country": "US"}, pool=lender)
            finally:
                lender.putconn(held)
            assert answer["total_views"] == 40
    assert shared == [False, True]
    assert pool.get_stats()["pool_size"] == 4  # the premise: WEB_POOL_SIZE's default


def test_an_error_on_the_second_connection_fails_the_request_and_returns_the_connection(
    pool, conn, shared, monkeypatch
):
    """Not an answer short of the second connection's chunks: its error is the request's, and
    both connections are back in the pool."""
    insert_raw(conn, [us_view(visitor, datetime.timedelta(minutes=visitor)) for visitor in range(1, 41)])
    original = psycopg.Cursor.execute

    def execute(self, query, params=None, *args, **kwargs):
        if query == QUERIES["filtered_answer"] and threading.current_thread().name == "shared-snapshot":
            raise psycopg.OperationalError("the server closed the connection")
        return original(self, query, params, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    idle = pool.get_stats()["pool_available"]
    with pytest.raises(psycopg.OperationalError, match="closed the connection"):
        StatsReader(pool, retention_days=30).stats_for_window(3, filters={"country": "US"})
    assert shared == [True]
    assert pool.get_stats()["pool_available"] == idle


@pytest.mark.skipif(pooler.missing() is not None, reason=str(pooler.missing()))
def test_through_a_transaction_pooler_the_second_connection_joins_the_same_snapshot(
    database_url, conn, shared, monkeypatch
):
    """Behind PgBouncer in transaction mode (Heroku's connection pooling) each transaction has a
    server connection of its own while it runs: the export and the import meet on the same
    server, and the answer is the one connection's (a view committed between them not counted)."""
    from tally.config import from_env
    from tally.db import web_pool

    insert_raw(conn, [us_view(visitor, datetime.timedelta(minutes=visitor)) for visitor in range(1, 41)])
    original = psycopg.Cursor.execute

    def execute(self, query, params=None, *args, **kwargs):
        if query == QUERIES["export_snapshot"]:
            insert_raw(conn, [us_view(visitor, datetime.timedelta(seconds=5)) for visitor in range(1, 41)])
        return original(self, query, params, *args, **kwargs)

    with pooler.PgBouncer(database_url, pool_size=3, round_robin=True) as bouncer:
        config = from_env({"DATABASE_URL": bouncer.url, "DATABASE_POOLER": "transaction"}, process_type="web")
        with web_pool(config) as pooled:
            pooled.wait(timeout=30)  # every connection open: a pool lends only while some are idle
            monkeypatch.setattr(psycopg.Cursor, "execute", execute)
            answer = StatsReader(pooled, retention_days=30).stats_for_window(3, filters={"country": "US"})
            monkeypatch.setattr(psycopg.Cursor, "execute", original)
            after = StatsReader(pooled, retention_days=30).stats_for_window(3, filters={"country": "US"})
    assert shared == [True, True]
    assert answer["total_views"] == 40 and after["total_views"] == 80
