"""A second connection in a request's snapshot, to share the chunks of a large filtered answer.

A filtered answer that nothing kept counts its matching raw views (tally/web/filtered.py); a large
one, in chunks of ids, one statement after another on one connection: one core of PostgreSQL's
works while the others idle (the statement's plan has no parallel workers). Another connection
of the pool, in the very same snapshot (`pg_export_snapshot()` and `SET TRANSACTION SNAPSHOT`,
as `pg_dump --jobs` does; on a standby too, since PostgreSQL 10), counts chunks at the
same time: the same answer, sooner on two cores (how much depends on the machine:
docs/BENCHMARKS.md, "First answers shared and in memory").

It is borrowed only while more of the pool idles than its Lender leaves (the web's pool also
stores the beacons: one of its connections is always left to them), and never waited for:
without one the chunks are counted as before.

    >>> with second_cursor(Lender(pool, leave=2), cur) as other:      # doctest: +SKIP
    ...     parts = count_chunks(cur, other, chunks, count_chunk)     # doctest: +SKIP
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import psycopg
import psycopg_pool
from psycopg import sql

from tally.db import QUERIES
from tally.web.replica import WRITE_CONNECTIONS

Part = TypeVar("Part")
Chunk = TypeVar("Chunk")
# Connections of the primary's pool left idle for others: as many as reads there leave to the
# views' and events' inserts (a second read, which may then take one of them, leaves one); of a
# replica's, which takes no writes, one for the next read.
LEAVE_ON_PRIMARY = WRITE_CONNECTIONS
LEAVE_ON_REPLICA = 1
# The longest a request waits for the idle connection it saw (another thread may take it first).
BORROW_WAIT_SECONDS = 0.05


@dataclasses.dataclass(frozen=True)
class Lender:
    """A pool a read may borrow a second connection of, while more than `leave` of it idle."""

    pool: psycopg_pool.ConnectionPool
    leave: int


@contextlib.contextmanager
def second_cursor(lender: Lender | None, cur: psycopg.Cursor) -> Iterator[psycopg.Cursor | None]:
    """A cursor of another connection of the lender's pool, in a read-only REPEATABLE READ
    transaction with the snapshot of `cur`'s (which must be in one, outside any savepoint); None
    when the pool has none to spare now. The transaction ends (rolled back: it read only) with
    the block, and the connection goes back."""
    if lender is None or lender.pool.get_stats().get("pool_available", 0) <= lender.leave:
        yield None
        return
    pool = lender.pool
    try:
        conn = pool.getconn(timeout=BORROW_WAIT_SECONDS)
    except psycopg_pool.PoolTimeout:
        yield None
        return
    try:
        cur.execute(QUERIES["export_snapshot"])
        (snapshot_id,) = cur.fetchone()
        conn.isolation_level, conn.read_only = psycopg.IsolationLevel.REPEATABLE_READ, True
        with conn.transaction(force_rollback=True), conn.cursor() as other:
            # A utility statement takes no bound parameter: the id (the server's own) as a literal.
            other.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_id)))
            yield other
    finally:
        pool.putconn(conn)


def count_chunks(
    cur: psycopg.Cursor,
    other: psycopg.Cursor | None,
    chunks: list[Chunk],
    count_chunk: Callable[[psycopg.Cursor, Chunk], tuple[Part | None, list[Chunk]]],
) -> list[Part]:
    """Every chunk's part: `count_chunk(cursor, chunk)` gives it, or None and the chunks to count
    instead (a chunk past the statement timeout, in halves). The chunks are taken in turn by
    `cur` (in this thread) and `other` (in a thread of its own), each the next one as it ends
    one, so that a chunk counted again in halves holds up neither. The first error of either is
    raised once both stopped: the other ends the chunk it is counting (each statement is bounded
    by the web's statement timeout) and takes no more."""
    waiting = collections.deque(chunks)
    parts: list[Part] = []
    errors: list[BaseException] = []
    turns = threading.Condition()
    counting = 0

    def work(cursor: psycopg.Cursor) -> None:
        nonlocal counting
        while True:
            with turns:
                # Nothing waiting while the other counts: it may hand back halves.
                while not waiting and counting and not errors:
                    turns.wait(timeout=1)
                if errors or not waiting:
                    return
                chunk = waiting.popleft()
                counting += 1
            try:
                part, instead = count_chunk(cursor, chunk)
            except BaseException as error:  # raised in the request's thread, below
                with turns:
                    errors.append(error)
                    counting -= 1
                    turns.notify_all()
                return
            with turns:
                counting -= 1
                if part is not None:
                    parts.append(part)
                waiting.extend(instead)
                turns.notify_all()

    helper = None
    if other is not None:
        helper = threading.Thread(target=work, args=(other,), name="shared-snapshot", daemon=True)
        helper.start()
    work(cur)
    if helper is not None:
        helper.join()
    if errors:
        raise errors[0]
    return parts
