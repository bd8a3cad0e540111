"""What the replica's checker (tally/web/replica_check.py) asks of the primary and the pools:
whether the replica's pool can connect, whether the primary is gone (neither by a query), and
where the primary's WAL stood, read on a thread of its own.

The checker's own connection answering says nothing of new ones: a replica whose slots are all
taken, or whose postmaster hung, refuses every connect while its old backends answer, and was
vouched for while every read waited out the pool. And a replica whose lag grows because its
primary is gone is not the one to blame.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

import psycopg_pool

from tally import db
from tally.checked_pool import RecordingPool, connect_problem
from tally.db import QUERIES

logger = logging.getLogger("tally.web.replica")

# A connect of the replica's pool that has not answered in this long will not serve a read that
# waits for it (REPLICA_POOL_WAIT_SECONDS, 0.5 s): a hung postmaster answers no connect until
# the connect_timeout (2 s), while the backends it started go on answering.
CONNECT_STALLED_SECONDS = 0.4
# How long the check waits for a connection of the primary's pool when it asks whether the
# primary is down: a check must end well within its STALE_AFTER_SECONDS.
PRIMARY_PROBE_SECONDS = 0.3


def pool_trouble(
    replica: psycopg_pool.ConnectionPool | None, stalled_after: float = CONNECT_STALLED_SECONDS
) -> str | None:
    """Why the replica's pool can give reads no connection, or None (all its connections lent
    to reads is no trouble; a connect under way counts once it has taken `stalled_after`). A pool
    in trouble is prodded to try again: psycopg_pool gives up after RECONNECT_GIVE_UP_SECONDS and
    waits for a read, and no read comes to a replica that is not vouched for, so without this it
    never came back once a slot freed."""
    if not isinstance(replica, RecordingPool):
        return None
    trouble = replica.connect_trouble(stalled_after)
    if trouble is not None and not replica.connecting():
        replica.check()  # grows the pool again (it has no idle connection to test)
    return trouble


def primary_gives_none(primary: psycopg_pool.ConnectionPool) -> str | None:
    """Why the primary's pool can give a read no connection now (as health names it), or None.

    Only while no connection is idle and its last connect failed, or one has not answered
    within the pool's own wait; prodded to connect again as the replica's pool is."""
    if pool_trouble(primary, db.WEB_POOL_WAIT_SECONDS) is None:
        return None
    return connect_problem(primary)


def primary_down(primary: psycopg_pool.ConnectionPool) -> bool:
    """Whether the primary is gone: its pool gives no connection and its last connect failed.

    Only a closed connection counts (the checkout's `server_hung_up` finds it without a round
    trip), never a query that waits: a frozen or cut-off primary reads as up, and the replica
    as lagging, as before. A busy primary's pool times out too, but its connects succeed."""
    try:
        conn = primary.getconn(timeout=PRIMARY_PROBE_SECONDS)
    except psycopg_pool.PoolTimeout:
        return getattr(primary, "last_connect_error", None) is not None
    primary.putconn(conn)
    return False


def lsn(text: str) -> int:
    """A WAL position ('16/B374D848') as a number, to compare and keep."""
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


class PrimaryPositions:
    """The primary's WAL positions, read twice a second on a thread of their own (a frozen primary
    holds that thread, never the replica's checker), each kept with when it was asked.

    The replica alone cannot tell a link gone silent: its WAL receiver says `streaming`, and its
    replay has reached all it received, for as long as `wal_receiver_timeout` (60 s) takes to
    notice, while the primary writes on. What the replica has replayed against where the
    primary's WAL stood says how stale it is, from either side's measure of nothing but WAL."""

    # Twice a second, as the checks; less often for a lag limit of hours, so that at most
    # KEPT positions span it twice over (a day's limit: one a 3 minutes).
    SAMPLE_SECONDS = 0.5
    KEPT = 1000

    def __init__(self, primary: psycopg_pool.ConnectionPool, max_lag_seconds: float):
        self.primary = primary
        self.interval = max(self.SAMPLE_SECONDS, (2 * max_lag_seconds + 5) / self.KEPT)
        # Positions older than this say nothing of now: the primary has not answered since.
        self.fresh_seconds = 4 * self.interval
        self._samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=self.KEPT)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._sample_forever, name="primary-wal", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(1)

    def _sample_forever(self) -> None:
        while not self._stopping.is_set():
            asked = time.monotonic()
            try:
                with self.primary.connection(timeout=PRIMARY_PROBE_SECONDS) as conn:
                    (position,) = conn.execute(QUERIES["primary_wal_position"]).fetchone()
                with self._lock:
                    self._samples.append((asked, lsn(position)))
            except Exception as error:  # a primary down, busy or in recovery: no sample, no word
                logger.debug("primary WAL position not read: %r", error)
            self._stopping.wait(max(0.0, self.interval - (time.monotonic() - asked)))

    def reached(self, replayed: str, now: float) -> tuple[float | None, float | None]:
        """What a replica that has replayed up to `replayed` is known to have, by the positions
        read: (how many seconds of the primary's WAL it lacks, the moment up to which it has all
        the primary wrote), or (None, None) when no position is fresh (the primary has not
        answered lately).

        0 behind when it has replayed the newest position read; else the time since the last
        position it has was asked (the primary's WAL stood at or below it then, so the replica
        has all written before), or since the oldest kept when it has none of them (and no
        moment it surely had all)."""
        done = lsn(replayed)
        with self._lock:
            samples = list(self._samples)
        if not samples or now - samples[-1][0] > self.fresh_seconds:
            return None, None
        if done >= samples[-1][1]:
            return 0.0, now
        had = [asked for asked, position in samples if position <= done]
        if not had:
            return now - samples[0][0], None
        return now - had[-1], had[-1]

    def lag(self, replayed: str, now: float, own_word: float | None) -> tuple[float | None, float | None]:
        """The lag of a replica that has replayed up to `replayed` and says `own_word` of itself
        (0: it streams and has replayed all it was sent), and the moment it surely had all the
        primary wrote (None: no such moment known): by the positions while they are fresh.

        Its own 0 stands for a lag of up to two readings: a replica seldom replays the newest
        position read a moment ago under steady writes, and a check made just after a write
        found no moment it was caught up (a test that stopped the primary just then never
        heard `primary down`)."""
        behind, had_all_at = self.reached(replayed, now)
        if behind is None or (own_word == 0.0 and behind <= 2 * self.interval):
            return own_word, had_all_at
        return behind, had_all_at
