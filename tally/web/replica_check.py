"""Whether the replica (DATABASE_REPLICA_URL) may serve the owner's reads, asked twice a second.

A checker thread asks the replica every CHECK_INTERVAL_SECONDS whether it is a standby of this
primary's database and how far behind it is, and vouches for it while it is a standby within
REPLICA_MAX_LAG_SECONDS; a vouch older than STALE_AFTER_SECONDS vouches for nothing, so a
replica that goes silent (even mid-check) stops being used within that. A read that failed on
its connection marks the replica unreachable until a check started after the failure finds it
well; so does one whose pool cannot connect (`full`, `unreachable`: tally/web/replica_probes.py).
With the primary down, a replica that has replayed all it received serves on (`primary down`).
tally/web/replica.py routes the reads by what this says.

Lag: while the primary answers, the time since its WAL passed what the replica has replayed (0
when it has replayed where the primary's WAL last stood); else, a standby that streams and has
replayed everything it received is caught up (0), whatever the age of its last replayed
transaction (an idle primary sends none); otherwise the lag is the smaller of two upper bounds:
the age of the last transaction it replayed, and the time since a check last found it caught
up. docs/ARCHITECTURE.md, "Read replica", says why.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import psycopg_pool

from tally import db
from tally.checked_pool import is_full
from tally.config import Config
from tally.db import QUERIES
from tally.logs import database_error, describe_error
from tally.web.replica_probes import PrimaryPositions, pool_trouble, primary_down

logger = logging.getLogger("tally.web.replica")

CHECK_INTERVAL_SECONDS = 0.5
# A check that succeeded longer ago than this vouches for nothing: a replica that stopped
# answering costs a waiting read at most this, and the read then goes to the primary, inside
# the 2 s a request may lose to a replica.
STALE_AFTER_SECONDS = 1.2
# The check is one tiny query: a replica that takes longer is not fit to serve.
CHECK_STATEMENT_TIMEOUT_MS = 1_000
# A replica that keeps failing its check (a wrong URL, a refused password, a standby down for
# hours) is asked again less often, up to this: each attempt is a connection and a FATAL line
# in its log, twice a second per web at the check's own pace.
MAX_RETRY_SECONDS = 5.0

OFF, STARTING, IN_USE, LAGGING, UNREACHABLE, FULL, NOT_A_STANDBY, OTHER_CLUSTER, OTHER_DATABASE = (
    "off",
    "starting",
    "in use",
    "lagging",
    "unreachable",
    "full",
    "not a standby",
    "another cluster",
    "another database",
)
# The primary stopped answering, and the replica has replayed all it received: what it has is
# everything the primary sent, and reads stay on it rather than fail on the primary.
PRIMARY_DOWN = "primary down"
# A standby that answers while the primary does not, to a web that never reached the primary:
# nothing says it is the primary's standby (a web started during an outage reads its system
# identifier from the primary), so it is not read from until the primary answers.
UNVERIFIED = "unverified"
# The states in which reads go to the replica.
SERVING = (IN_USE, PRIMARY_DOWN)


@dataclasses.dataclass(frozen=True)
class ReplicaStatus:
    """What health and /metrics say about the replica."""

    # one of OFF, STARTING, IN_USE, PRIMARY_DOWN, LAGGING, UNREACHABLE, FULL, NOT_A_STANDBY,
    # OTHER_CLUSTER, OTHER_DATABASE, UNVERIFIED
    state: str
    lag_seconds: float | None  # at the last check; None when unknown or not a replica

    @property
    def in_use(self) -> bool:
        return self.state in SERVING


class ReplicaCheck:
    """The checker thread and what it last found: `status()`, and `usable()` for a read."""

    def __init__(
        self,
        primary: psycopg_pool.ConnectionPool,
        replica: psycopg_pool.ConnectionPool | None,
        config: Config | None,
    ):
        self.primary = primary
        self.replica = replica
        self.max_lag = config.replica_max_lag_seconds if config else 0.0
        self._connect: Callable[[], psycopg.Connection] | None = None
        self._positions: PrimaryPositions | None = None
        if replica is not None:
            self._positions = PrimaryPositions(primary, self.max_lag)
            if config is None or config.database_replica_url is None:
                raise ValueError("a replica pool needs the config that names it")
            url, kwargs = config.database_replica_url, check_connection_kwargs(config)
            self._connect = lambda: psycopg.connect(url, **kwargs)
        self._lock = threading.Lock()
        self._state = STARTING if replica is not None else OFF
        self._lag: float | None = None
        self._vouched_at = float("-inf")  # start of the last check that found it fit
        self._caught_up_at: float | None = None  # start of the last check that found it caught up
        # the primary's system identifier and its database's OID, once read
        self._primary_cluster: tuple[int, int] | None = None
        self._down_at = float("-inf")  # when a read last failed on its connection
        self._stopping = threading.Event()
        self._checker: threading.Thread | None = None

    def start(self) -> None:
        """Start checking the replica (once; nothing to check without one)."""
        if self.replica is None or self._checker is not None:
            return
        assert self._positions is not None
        self._positions.start()
        self._checker = threading.Thread(target=self._check_forever, name="replica-check", daemon=True)
        self._checker.start()

    def close(self) -> None:
        self._stopping.set()
        if self._positions is not None:
            self._positions.close()
        if self._checker is not None:
            self._checker.join(2)  # a check waits at most its connect timeout

    def _check_forever(self) -> None:
        connection: psycopg.Connection | None = None
        interval = CHECK_INTERVAL_SECONDS
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                connection = self._check_once(connection, started)
            except Exception as error:  # the checker must outlive any surprise, or reads never return
                logger.error("replica check failed: %s", describe_error(error))
                self._set(UNREACHABLE, None, "unreachable (the check itself failed)")
            refused = (NOT_A_STANDBY, OTHER_CLUSTER, OTHER_DATABASE)
            failing = connection is None or self.status().state in refused
            interval = min(interval * 2, MAX_RETRY_SECONDS) if failing else CHECK_INTERVAL_SECONDS
            self._stopping.wait(max(0.0, interval - (time.monotonic() - started)))
        if connection is not None:
            connection.close()

    def _check_once(self, connection: psycopg.Connection | None, started: float) -> psycopg.Connection | None:
        """One check on `connection` (opened if need be); return the connection to reuse."""
        try:
            if connection is None or connection.closed:
                assert self._connect is not None
                connection = self._connect()
            row = connection.execute(QUERIES["replica_state"]).fetchone()
            answered = time.monotonic()
        except psycopg.Error as error:
            if connection is not None:
                connection.close()
            reason = database_error(error)
            state = FULL if is_full(reason) else UNREACHABLE
            self._set(state, None, f"{state} ({reason})")
            return None
        self._checked(started, answered, *row)
        return connection

    def _primary_cluster_id(self) -> tuple[int, int] | None:
        """The primary's system identifier and database OID, read once (None while the primary
        cannot say)."""
        if self._primary_cluster is None:
            try:
                with self.primary.connection(timeout=db.WEB_POOL_WAIT_SECONDS) as conn:
                    self._primary_cluster = tuple(conn.execute(QUERIES["cluster_identifier"]).fetchone())
            except (psycopg.Error, psycopg_pool.PoolTimeout):
                return None
        return self._primary_cluster

    def _checked(
        self,
        started: float,
        answered: float,
        standby: bool,
        cluster: int,
        database: int,
        server_lag: float | None,
        replayed_received: bool | None,
        replayed: str | None,
    ) -> None:
        if replayed is not None and self._positions is not None:
            # The primary's own positions, when fresh, are the sound measure: the replica's
            # receiver says `streaming` through a link gone silent (tally/web/replica_probes.py).
            server_lag, had_all_at = self._positions.lag(replayed, started, server_lag)
            if had_all_at is not None:  # the moment it was last caught up, for `primary down`
                self._caught_up_at = max(had_all_at, self._caught_up_at or had_all_at)
        state, lag, description = self._verdict(started, standby, cluster, database, server_lag)
        # Seen caught up, all it received replayed, and the primary gone: it has all the primary
        # sent, and reads on the primary would fail (its lag, the time since, grows all the same).
        # Within the lag limit too: health said `in use` for REPLICA_MAX_LAG_SECONDS (30 s) with
        # the primary down. A replica caught up (lag 0) asks nothing of the primary's pool.
        if (
            (state == LAGGING or (state == IN_USE and lag))
            and replayed_received
            and self._caught_up_at is not None
            and primary_down(self.primary)
        ):
            state = PRIMARY_DOWN
            description = (
                f"in use with the primary down: it has replayed all it received, {lag:.1f} s after it was"
                " last seen caught up"
            )
        if state in SERVING:
            trouble = pool_trouble(self.replica)
            if trouble is not None:
                state, lag = (FULL if is_full(trouble) else UNREACHABLE), None
                description = f"{state}: a standby fit to serve, but its pool cannot connect ({trouble})"
        with self._lock:
            # A check that hung (a frozen server, thawed) tells of a moment long past: it neither
            # vouches nor logs (it logged `in use` with a stale lag between `unreachable` and the
            # next check's `in use`); the next check, at once, says how the replica is now. A
            # vouch from a check that took that long would be stale already.
            late = time.monotonic() if state in SERVING else answered
            if late - started > STALE_AFTER_SECONDS:
                return
            if state in SERVING and started < self._down_at:  # a read failed while this check ran
                return
            back = state in SERVING and self._state not in SERVING
        if back and self.replica is not None:
            self.replica.check()  # drop the connections a restart broke before reads use them
        if state in SERVING:
            with self._lock:
                self._vouched_at = started
        self._set(state, lag, description)

    def _verdict(
        self, started: float, standby: bool, cluster: int, database: int, server_lag: float | None
    ) -> tuple[str, float | None, str]:
        """(state, lag, description) of the replica by one check's answer."""
        if not standby:
            return NOT_A_STANDBY, None, "not a standby (pg_is_in_recovery() is false): it is not used"
        identity = self._primary_cluster_id()
        primary, primary_database = identity if identity is not None else (None, None)
        if primary is None:
            return (
                UNVERIFIED,
                None,
                "unverified: a standby, but the primary (DATABASE_URL) has not answered since this process"
                " started, so nothing says it is the primary's standby; it is not used until it answers",
            )
        if cluster != primary:
            return (
                OTHER_CLUSTER,
                None,
                f"a standby of another cluster (system identifier {cluster}, the primary's {primary}):"
                " its data is not this database's, it is not used",
            )
        if database != primary_database:
            return (
                OTHER_DATABASE,
                None,
                f"a standby of the primary, but connected to another of its databases (OID {database},"
                f" DATABASE_URL's {primary_database}): DATABASE_REPLICA_URL must name the same database,"
                " it is not used",
            )
        if server_lag == 0.0:
            self._caught_up_at = started
        bounds = [bound for bound in (server_lag, self._since_caught_up(started)) if bound is not None]
        lag = max(0.0, min(bounds)) if bounds else None
        if lag is None or lag > self.max_lag:
            shown = "unknown" if lag is None else f"{lag:.1f} s"
            return LAGGING, lag, f"lagging: {shown} behind, past REPLICA_MAX_LAG_SECONDS ({self.max_lag:g} s)"
        return IN_USE, lag, f"in use: {lag:.1f} s behind"

    def _since_caught_up(self, now: float) -> float | None:
        return None if self._caught_up_at is None else now - self._caught_up_at

    def _set(self, state: str, lag: float | None, description: str) -> None:
        with self._lock:
            changed, self._state, self._lag = self._state != state, state, lag
        if changed:
            log = logger.info if state == IN_USE else logger.warning
            log("replica %s%s", description, "" if state in SERVING else ": reads go to the primary")

    def status(self) -> ReplicaStatus:
        """The replica's state as of its last check (a stale vouch reads as unreachable)."""
        self._note_stale()
        with self._lock:
            return ReplicaStatus(self._state, self._lag)

    def _note_stale(self) -> None:
        """A check that hangs (a frozen server answers nothing, not even its statement timeout)
        ends the vouch when it goes stale: said in the log then, not only when the check ends."""
        with self._lock:
            stale = self._state in SERVING and not self._vouched(time.monotonic())
            if stale:
                self._state, self._lag = UNREACHABLE, None
        if stale:
            logger.warning(
                "replica unreachable (its check has not answered for %g s): reads go to the primary",
                STALE_AFTER_SECONDS,
            )

    def _vouched(self, now: float) -> bool:
        return self._state in SERVING and now - self._vouched_at <= STALE_AFTER_SECONDS

    def usable(self) -> bool:
        """Whether a read may go to the replica now."""
        self._note_stale()
        with self._lock:
            return self.replica is not None and self._vouched(time.monotonic())

    def pool_timed_out(self) -> None:
        """A read waited out the replica pool's wait: if the pool cannot connect (rather than
        lending all its connections to reads), unused until a later check finds it can."""
        trouble = pool_trouble(self.replica)
        if trouble is None:
            return  # busy with other reads: the replica is well
        with self._lock:
            self._down_at = time.monotonic()
        state = FULL if is_full(trouble) else UNREACHABLE
        self._set(state, None, f"{state}: its pool cannot connect ({trouble})")

    def mark_down(self, error: BaseException) -> None:
        """A read failed on the replica's connection: unused until a later check finds it well."""
        with self._lock:
            self._down_at = time.monotonic()
        self._set(UNREACHABLE, None, f"failed a read ({database_error(error)})")


def check_connection_kwargs(config: Config) -> dict[str, Any]:
    """The checker's connection: the replica pool's, with a statement timeout of its own."""
    kwargs = db.replica_connection_kwargs(config)
    settings = {**db.REPLICA_SESSION_SETTINGS, "statement_timeout": f"{CHECK_STATEMENT_TIMEOUT_MS}ms"}
    own = " ".join(f"-c {name}={value}" for name, value in settings.items())
    return {**kwargs, "options": f"{db.replica_url_options(config)} {own}".strip()}
