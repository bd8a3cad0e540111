"""Group commit for the web's page views: the views of concurrent requests go in one INSERT.

A request that finds no insert in flight inserts its views itself, at once. A request
that arrives while one is in flight waits; when that insert ends, its leader hands the
lead to the first waiting request, which inserts the views of every request waiting then
in one statement and one commit, and wakes them. So a lone request costs one INSERT, as
before, and under load a few hundred requests a second share a few dozen INSERTs; 201
still means committed.

Served by Tally's waitress, no thread waits at all (tally/web/later.py): a request queues its
views with its `Later` and returns, its answer held; one of the writer's own two threads leads
the inserts of such requests and sends each one's answer once its group is committed (two: the
next group's INSERT starts while the last group's answers go out). Waking a waiting
thread per request cost the web's one core more than the rest of the request (docs/
ARCHITECTURE.md, "Answers after the commit").

When the last group held COMMIT_SIBLINGS requests or more, the web is busy and the next
leader first sleeps COMMIT_DELAY_SECONDS, so that the requests already on their way join
its INSERT: PostgreSQL's own commit_delay and commit_siblings, for the same reason. Each
INSERT, its round trip and its hand-offs cost the web's one core of Python about as much
as a dozen requests; bigger groups leave more of it to serve them. Below that load no
request waits: a beacon alone is stored at once.

A request waits for at most two inserts (the one in flight, then its own group's), and
each is bounded by the pool's wait for a connection, the web's lock and statement
timeouts and its TCP user timeout. A request still queued after QUEUE_WAIT_SECONDS (the
insert in flight is stuck on a lost network or a locked table) leaves the queue and fails
with `InsertQueueTimeout`, a 503: nothing of it was stored, and nothing will be.

    >>> writer = ViewWriter(pool)              # doctest: +SKIP
    >>> writer.write([("/", None)])            # doctest: +SKIP
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import psycopg_pool
from prometheus_client import Counter

from tally.db import QUERIES
from tally.dimensions import VIEW_FIELDS
from tally.logs import describe_error
from tally.sites import DEFAULT_SITE
from tally.web.later import Later

logger = logging.getLogger("tally.web.view_writer")


class View(
    collections.namedtuple(
        "View",
        (*VIEW_FIELDS, "salt_day"),
        defaults=(None, DEFAULT_SITE, *(None for _field in VIEW_FIELDS[3:]), None),
    )
):
    """One page view to store, its fields tally/dimensions.py's VIEW_FIELDS: path, referrer, site,
    visitor (the keyed hash of tally/web/visitors.py, never an address) and every other
    dimension's value (categories of the sender, never its address or user agent), then
    `salt_day`: the UTC day (ISO) of the visitor id's salt, on which the insert dates the view
    (None: dated now()). View("/a") and View(path, referrer, site) leave the rest None (the
    site: the default one)."""

    __slots__ = ()


# The longest a request waits for the insert in flight before it gives up (503); its own
# group's insert then has the rest of the 5 s request budget.
QUEUE_WAIT_SECONDS = 2.0
# Measured on both PostgreSQL builds (docs/BENCHMARKS.md): at 16 and 64 connections groups
# of about 5 requests grow to 10-12, and req/s by 5-8% at 16 and 12-19% at 64. Below 5,
# as at 4 connections, groups stay as they come: there the sleep would only add latency.
COMMIT_DELAY_SECONDS = 0.001
COMMIT_SIBLINGS = 5
# Threads that lead the inserts of held requests: two, so that the next group's INSERT starts
# while the last group's answers are still being sent.
WRITER_THREADS = 2


class InsertQueueTimeout(psycopg_pool.PoolTimeout):
    """The insert ahead of this request did not end in time; its views were not stored.

    A PoolTimeout: like a wait for a connection, the database did not serve it in time.
    """


def _held_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclasses.dataclass(eq=False, slots=True)
class _Request:
    views: Sequence[View]
    later: Later | None = None  # its answer is held: no thread waits for this request
    # A waiting request's (none for a held one): released once, when the request's views are
    # stored (or refused) or it is handed the lead. A bare lock is the cheapest wait there is
    # (threading.Event is a Condition, several locks and lines of Python a wait).
    woken: threading.Lock | None = None
    leads: bool = False  # woken to insert the next group, not because its views are stored
    error: BaseException | None = None


class ViewWriter:
    """Inserts page views (or, with another `insert`, other rows: custom events) for concurrent
    request threads, a group per INSERT."""

    def __init__(
        self,
        pool: psycopg_pool.ConnectionPool,
        inserts: Counter | None = None,
        stored: Counter | None = None,
        queue_wait_seconds: float = QUEUE_WAIT_SECONDS,
        commit_delay_seconds: float = COMMIT_DELAY_SECONDS,
        commit_siblings: int = COMMIT_SIBLINGS,
        insert: Callable[[psycopg.Connection, Sequence[Any]], None] | None = None,
    ):
        self.pool = pool
        self.insert = insert or execute_insert
        self.queue_wait_seconds = queue_wait_seconds
        self.commit_delay_seconds = commit_delay_seconds
        self.commit_siblings = commit_siblings
        self.inserts = inserts  # counts the INSERTs: views per INSERT shows the grouping
        self.stored = stored  # counts the rows committed
        self._lock = threading.Lock()
        self._waiting: list[_Request] = []
        self._in_flight = False
        self._last_group_size = 0
        # The threads that lead the inserts of held requests (none of theirs waits to), started
        # at the first; one release of `_writer_leads` per lead handed to them.
        self._writers: list[threading.Thread] = []
        self._writer_leads = threading.Semaphore(0)

    def write(self, views: Sequence[View], later: Later | None = None) -> None:
        """Store `views`, all or none. Without `later`: return once committed, or raise the
        database's error. With it: queue them and return at once; `later` is told how the insert
        ended (and on the request's second run, after a failed insert, this raises that error)."""
        if later is not None:
            if later.error is not None:
                raise later.error
            self._queue_held(_Request(views, later))
            return
        woken = _held_lock()
        request = _Request(views, woken=woken)
        with self._lock:
            self._waiting.append(request)
            request.leads = not self._in_flight
            self._in_flight = True
        if not request.leads and not woken.acquire(timeout=self.queue_wait_seconds):
            with self._lock:
                # Still queued (no leader took it, none handed it the lead): leave.
                if not request.leads and request in self._waiting:
                    self._waiting.remove(request)
                    raise InsertQueueTimeout(
                        f"the insert ahead did not end within {self.queue_wait_seconds:g} s"
                    )
            woken.acquire()  # taken into a group: bounded by that group's insert
        if request.leads:
            self._lead(request)
        if request.error is not None:
            raise request.error

    def _queue_held(self, request: _Request) -> None:
        assert request.later is not None
        request.later.park()  # before it is queued: the insert may end before this returns
        with self._lock:
            self._waiting.append(request)
            lead = not self._in_flight
            self._in_flight = True
            if not self._writers:
                self._writers = [
                    threading.Thread(target=self._lead_held, name=f"view-writer-{index}", daemon=True)
                    for index in range(WRITER_THREADS)
                ]
                for writer in self._writers:
                    writer.start()
        if lead:
            self._writer_leads.release()

    def _lead_held(self) -> None:
        """The writer's thread: lead each insert handed to it, for as long as the process runs."""
        while True:
            self._writer_leads.acquire()
            self._lead(None)

    def _take_waiting(self) -> list[_Request]:
        with self._lock:
            group, self._waiting = self._waiting, []
        return group

    def _lead(self, leader: _Request | None) -> None:
        group: list[_Request] | None = None
        inserted = False
        try:
            with self.pool.connection() as conn:
                if self._last_group_size >= self.commit_siblings:
                    time.sleep(self.commit_delay_seconds)  # busy: let the next ones join
                # The group is taken once a connection is in hand: the requests that
                # arrived while the pool checked it share this INSERT.
                group = self._take_waiting()
                self._last_group_size = len(group)
                self._insert(conn, group)
                inserted = True
        except Exception as error:  # no connection in time: the database is unreachable
            if group is None:
                group = self._take_waiting()
                for request in group:
                    request.error = error
            else:
                logger.warning("returning the connection after an insert failed: %s", error)
        finally:
            if group is None:  # not an Exception (the process is stopping): release them all
                group = self._take_waiting()
            if not inserted:  # the same: none of them may answer as if its views were stored
                stopped = InsertQueueTimeout("the web stopped before these views were stored")
                for request in group:
                    request.error = request.error or stopped
            with self._lock:
                unreachable = _unreachable(group[0].error) if group else None
                if unreachable is not None:
                    # The requests that queued meanwhile would meet the same wall (a lost
                    # network, a locked table): they fail now, not one insert later.
                    for request in self._waiting:
                        request.error = unreachable
                    group, self._waiting = group + self._waiting, []
                if not self._waiting:
                    self._in_flight = False
                elif self._waiting[0].later is None:
                    successor = self._waiting[0]
                    successor.leads = True
                    successor.woken.release()
                else:  # no thread waits for a held request: the writer's leads
                    self._writer_leads.release()
            for request in group:
                request.leads = False
                if request.later is not None:
                    _answer(request.later, request.error)
                elif request is not leader:
                    request.woken.release()

    def _insert(self, conn: psycopg.Connection, group: list[_Request]) -> None:
        try:
            self._insert_together(conn, group)
        except (psycopg.DataError, psycopg.IntegrityError) as error:
            # One request's views broke a constraint that validation missed: store each
            # request's views on their own, so the others are not refused with it.
            if len(group) == 1:
                group[0].error = error
                return
            logger.warning("%d requests' views refused together (%s): storing each alone", len(group), error)
            for request in group:
                try:
                    self._insert_together(conn, [request])
                except Exception as alone:
                    request.error = alone
        except Exception as error:  # the database is unreachable: every request says so
            for request in group:
                request.error = error

    def _insert_together(self, conn: psycopg.Connection, group: list[_Request]) -> None:
        rows = [view for request in group for view in request.views]
        self.insert(conn, rows)
        if self.inserts is not None:
            self.inserts.inc()
        if self.stored is not None:
            self.stored.inc(len(rows))


def _answer(later: Later, error: BaseException | None) -> None:
    """Tell a held request how its insert ended; its answer goes out now, or on its second run."""
    try:
        later.stored(error)
    except Exception as failure:  # one client's broken connection must not keep its group's answers
        logger.error("sending a held answer failed: %s", describe_error(failure))


def _unreachable(error: BaseException | None) -> BaseException | None:
    """`error` if it says the database could not serve an insert at all, else None."""
    if isinstance(error, psycopg.OperationalError | psycopg_pool.PoolTimeout | psycopg.InterfaceError):
        return error
    return None


def insert_views(pool: psycopg_pool.ConnectionPool, views: Sequence[View]) -> None:
    """Store `views` in one INSERT on a pooled (autocommit) connection: all or none."""
    with pool.connection() as conn:
        execute_insert(conn, views)


def execute_insert(conn: psycopg.Connection, views: Sequence[View]) -> None:
    """Store `views` in one INSERT on `conn` (in autocommit mode: all or none, committed)."""
    rows = [view if isinstance(view, View) else View(*view) for view in views]
    # One JSON document (a View is a tuple: an array), not a list per column: see the query.
    params = {"views": json.dumps(rows)}
    try:
        conn.execute(QUERIES["insert_page_views"], params)
    except psycopg.errors.CheckViolation as error:
        if error.diag.constraint_name is not None:
            raise  # a named CHECK: the views themselves are refused
        # A partition constraint (unnamed): maintain_partitions attached the views' day while
        # this INSERT waited on its lock (moving that day out of the default partition), and
        # the INSERT had routed them with the partitions it saw before, to the default one.
        # Nothing was stored; once more, with the day in place.
        logger.info("views routed to a partition their day just left: inserting them again")
        conn.execute(QUERIES["insert_page_views"], params)
