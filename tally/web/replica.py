"""The owner's reads from a streaming replica (DATABASE_REPLICA_URL), from the primary whenever
the replica cannot serve them well.

A read (the dashboard's, stats', the export's, sites') goes to the replica only while
tally/web/replica_check.py vouches for it (a standby of this database, within
REPLICA_MAX_LAG_SECONDS, checked in the last STALE_AFTER_SECONDS); else to the primary. A read
on the replica that fails on the connection goes again to the primary at once and marks the
replica unreachable. A replica that goes silent mid-read holds a request no longer than a check
takes to go stale: the read runs on a thread of its own, and the request reads from the primary
once the checker stops vouching for the replica. Reads on the primary leave connections to
writes. Writes never come here.

    >>> reads = ReadRouter(pool)  # no replica: every read on the primary  # doctest: +SKIP
    >>> reads.run(lambda pool: stats.sites(pool=pool))   # doctest: +SKIP
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg
import psycopg_pool

from tally import db
from tally.checked_pool import NoConnection
from tally.config import Config
from tally.logs import database_error
from tally.web.replica_check import ReplicaCheck, ReplicaStatus
from tally.web.replica_probes import primary_gives_none

logger = logging.getLogger("tally.web.replica")

T = TypeVar("T")

# How often a request waiting on the replica looks whether the checker still vouches for it.
WAIT_STEP_SECONDS = 0.05

# Reads on the primary leave this many of the web pool's connections to writes: the views'
# and the events' group inserts hold one each while they run. Slow reads (a filter over many
# views, up to the statement timeout) held all four once, and beacons waited out their 1.5 s
# for a connection: a 503, a view lost (a public dashboard let anyone do it).
WRITE_CONNECTIONS = 2
# How long a read waits for its turn on the primary before it is answered 503.
READ_WAIT_SECONDS = 5.0


class ReadsBusy(Exception):
    """Every read slot of the primary stayed taken for READ_WAIT_SECONDS."""


class ReadRouter:
    """Runs reads on the replica when it is healthy and within the lag, else on the primary."""

    def __init__(
        self,
        primary: psycopg_pool.ConnectionPool,
        replica: psycopg_pool.ConnectionPool | None = None,
        config: Config | None = None,
    ):
        self.primary = primary
        self.replica = replica
        self.check = ReplicaCheck(primary, replica, config)
        self._lock = threading.Lock()
        self._served: collections.Counter[str] = collections.Counter()
        threads = config.web_threads if config else 1
        self._executor = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="replica-read")
        self.read_slots = max(1, primary.max_size - WRITE_CONNECTIONS)
        self._primary_slots = threading.BoundedSemaphore(self.read_slots)
        # A read waits for its turn in one of the web's threads: reads on the primary, running or
        # waiting, take at most half of them, so the views arriving still find a thread (24 slow
        # reads at once held all 16, and beacons queued in waitress behind them for 5 s).
        self.read_threads = max(self.read_slots + 1, threads // 2)
        self._primary_readers = 0

    def start(self) -> None:
        """Open the replica pool (without waiting for it) and start checking the replica."""
        if self.replica is not None:
            self.replica.open(wait=False)
        self.check.start()

    def close(self) -> None:
        self.check.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self.replica is not None:
            self.replica.close(timeout=1)

    def status(self) -> ReplicaStatus:
        """The replica's state as of its last check (a stale vouch reads as unreachable)."""
        return self.check.status()

    def served(self) -> dict[str, int]:
        """Reads run so far, by the server that answered them ("replica", "primary")."""
        with self._lock:
            return {"replica": self._served["replica"], "primary": self._served["primary"]}

    def run(self, read: Callable[[psycopg_pool.ConnectionPool], T], background: bool = False) -> T:
        """`read(pool)` on the replica when it is fit, else (or when it fails there) on the primary.

        `read` must do all its work on the pool it is given (one snapshot: a retry on the
        primary starts over) and must not touch the request (it may run on another thread).
        A `background` read (the web's own: tally/web/warm.py) takes no reader's place: on the
        primary it takes a turn only if one is free at once (else ReadsBusy) and is no reader
        that waits for one; it is not counted in `served` (tally_stats_reads_total)."""
        if not self.check.usable():
            return self._on_primary(read, background)
        assert self.replica is not None
        future = self._executor.submit(read, self.replica)
        submitted = time.monotonic()
        while True:
            try:
                result = future.result(timeout=WAIT_STEP_SECONDS)
            except concurrent.futures.TimeoutError:
                if not future.running() and time.monotonic() - submitted > db.REPLICA_POOL_WAIT_SECONDS:
                    future.cancel()  # every reader thread is busy (held by a silent replica)
                    return self._on_primary(read, background)
                if self.check.usable():
                    continue
                # The checker's word went stale, which `usable` logged once: not a line per read
                # (five reads waiting on a silent replica wrote five in 40 ms).
                logger.debug("replica stopped answering during a read: reading from the primary")
                return self._on_primary(read, background)
            except psycopg.errors.QueryCanceled:
                raise  # statement_timeout: the read is slow wherever it runs
            except (psycopg.errors.SerializationFailure, psycopg.errors.LockNotAvailable) as error:
                # "conflict with recovery": replay needed what this snapshot holds (a vacuum's
                # removed rows, a dropped partition's lock); or the read waited past its lock
                # timeout for replay's own lock (a detach, a drop, a move): the replica is well.
                logger.info("replica read cancelled (%s): reading from the primary", database_error(error))
                return self._on_primary(read, background)
            except psycopg_pool.PoolTimeout:
                # Its connections all lent to other reads (the replica is well), or the pool
                # cannot connect (slots full, a hung postmaster): the checker tells which.
                self.check.pool_timed_out()
                return self._on_primary(read, background)
            except (psycopg.OperationalError, psycopg.InterfaceError) as error:
                self.check.mark_down(error)
                return self._on_primary(read, background)
            with self._lock:
                self._served["replica"] += 0 if background else 1
            return result

    def _on_primary(self, read: Callable[[psycopg_pool.ConnectionPool], T], background: bool = False) -> T:
        # With the primary's connects failing, a turn guards no connection: each read waits out
        # the pool's own wait at once, as a write does, and is told the database is unreachable.
        # Queued for the two turns, ten reads at once took up to 5.9 s, and the two past the
        # threads' share were told that slow reads held the database.
        problem = primary_gives_none(self.primary)
        if background:  # a free turn now, or none: it made a reader's 503 when it took a reader's place
            if problem is not None:
                raise NoConnection("the primary's connects fail", problem)
            if not self._primary_slots.acquire(blocking=False):
                raise ReadsBusy("every turn of the primary is taken: a background read waits for none")
            try:
                return read(self.primary)
            finally:
                self._primary_slots.release()
        with self._lock:
            if self._primary_readers >= self.read_threads:
                if problem is not None:
                    raise NoConnection("the primary's connects fail", problem)
                raise ReadsBusy(
                    f"{self._primary_readers} reads hold or wait for the primary's {self.read_slots} turns"
                )
            self._primary_readers += 1
        try:
            turn = problem is None
            if turn and not self._primary_slots.acquire(timeout=READ_WAIT_SECONDS):
                raise ReadsBusy(f"{self.read_slots} reads held the primary for {READ_WAIT_SECONDS:g} s")
            try:
                with self._lock:
                    self._served["primary"] += 1
                return read(self.primary)
            finally:
                if turn:
                    self._primary_slots.release()
        finally:
            with self._lock:
                self._primary_readers -= 1
