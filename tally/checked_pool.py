"""The web's pool: a checkout that passes over connections the server closed, and the reason
the pool could not connect, as health names it (a full server is not a down one).

    >>> connect_problem(psycopg_pool.ConnectionPool("", open=False))
    'unreachable'
"""

from __future__ import annotations

import select
import threading
import time
from typing import Any

import psycopg
import psycopg_pool


def server_hung_up(conn: psycopg.Connection) -> bool:
    """Whether the server closed this idle connection: a round trip only where it may have.

    psycopg_pool's `check_connection` sends an empty query, a round trip per checkout, as much
    as the one INSERT of a group it guards. A connection whose server went away while it sat
    in the pool (a restart, a killed backend) has a readable socket: the server's last message,
    or its close. Only then is the full check made. A socket with nothing to read costs one
    `select`. A server that vanished without a word (a lost network) is found by neither check:
    its statement meets the TCP user timeout, as the empty query would have."""
    if not select.select([conn.pgconn.socket], [], [], 0)[0]:
        return False
    try:
        psycopg_pool.ConnectionPool.check_connection(conn)
    except psycopg.Error:
        return True
    return False


async def check_if_hung_up(conn: psycopg.AsyncConnection) -> None:
    """`server_hung_up` as an async pool's `check`: raises (and the pool connects anew) only for
    a connection whose server closed it. Workers' and reports' pools had no check: after a
    database restart, the write of a running job's outcome met a dead connection, the job stayed
    `doing` and a report already accepted by its mail server was sent again."""
    if select.select([conn.pgconn.socket], [], [], 0)[0]:
        await psycopg_pool.AsyncConnectionPool.check_connection(conn)


def check_if_hung_up_sync(conn: psycopg.Connection) -> None:
    """The same for a pool of plain connections (the reports')."""
    if server_hung_up(conn):
        raise psycopg.OperationalError("the server closed this connection")


class RecordingPool(psycopg_pool.ConnectionPool):
    """psycopg_pool's pool that remembers how its last connect went, and since when a connect
    has been under way: a pool can then say it cannot connect (`connect_trouble`), which
    psycopg_pool tells only by a PoolTimeout, the same as for a pool whose connections are all
    busy. The replica's pool is one: a replica whose slots were full, or whose postmaster hung,
    kept answering its checker's old connection and was vouched for while no read could get one."""

    last_connect_error: str | None = None  # the message of the last failed connect, if the last failed

    def __init__(self, *args: Any, **kwargs: Any):
        self._connects: dict[int, float] = {}  # when each connect under way started, by thread
        super().__init__(*args, **kwargs)

    def _connect(self, timeout: float | None = None) -> psycopg.Connection:
        # psycopg_pool's own connect (it has no public hook for a failed one): kept, so that
        # health can say why it has no connection (a full server is not a down one).
        self._connects[threading.get_ident()] = time.monotonic()
        try:
            conn = super()._connect(timeout)
        except psycopg.Error as error:
            self.last_connect_error = str(error)
            raise
        finally:
            self._connects.pop(threading.get_ident(), None)
        self.last_connect_error = None
        return conn

    def connect_trouble(self, stalled_after: float) -> str | None:
        """Why this pool can give no connection now, or None when it can or may soon.

        Trouble only when no connection is idle and its connects fail (the last one failed,
        or one has not answered for `stalled_after`): all of them out to slow reads is no
        trouble, however long those take."""
        if self.get_stats().get("pool_available", 0) > 0:
            return None
        started = min(self._connects.values(), default=None)
        if started is not None and time.monotonic() - started > stalled_after:
            return f"a new connection has not answered for {time.monotonic() - started:.1f} s"
        return self.last_connect_error

    def connecting(self) -> bool:
        """Whether a connect is under way (the pool tries again by itself meanwhile)."""
        return bool(self._connects)


class NoConnection(psycopg_pool.PoolTimeout):
    """No connection in time, and why as health says it (`problem`: `unreachable`, or `full: …`
    when the server answered that its slots are taken): a request's 503 says the same."""

    def __init__(self, message: str, problem: str):
        super().__init__(message)
        self.problem = problem


class CheckedPool(RecordingPool):
    """psycopg_pool's pool whose checkout passes over connections the server closed at once.

    The pool's own `check` loop sleeps its reconnection backoff (1 s, then 2 s) after each
    connection that fails: after a database restart every idle connection is dead, and the
    first request, meeting them one by one, waited out WEB_POOL_WAIT_SECONDS (a 503, a lost
    beacon, seconds after the server was back). Here a dead one goes back at once (the pool
    discards it and connects anew in the background) and the next is taken, within the same
    deadline; with none left, `getconn` waits for the new ones."""

    def getconn(self, timeout: float | None = None) -> psycopg.Connection:
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise NoConnection(f"couldn't get a connection after {wait:.2f} sec", why_no_connection(self))
            try:
                conn = super().getconn(timeout=left)
            except psycopg_pool.PoolTimeout as error:
                raise NoConnection(str(error), why_no_connection(self)) from error
            if not server_hung_up(conn):
                return conn
            self.putconn(conn)


# What a failed connect says, as health names it (public: a kind, never the server's address).
CONNECT_PROBLEMS = (
    (
        ("too many clients", "connection slots are reserved"),
        "full: every connection slot (max_connections) is taken",
    ),
    (
        # The server's "password (or peer, ident...) authentication failed", and libpq's own
        # "no password supplied" when the URL has none for a server that asks for one.
        ("authentication failed", "no pg_hba.conf entry", "no password supplied"),
        "refusing the credentials of DATABASE_URL",
    ),
    (
        # libpq's words for ?sslmode=require against a server without SSL, or verify-ca/verify-full
        # without the certificate they check against (before the "does not exist" of a file).
        ("SSL was required", "root certificate file", "server certificate for"),
        "without the SSL connection DATABASE_URL's sslmode asks for",
    ),
    (("does not exist",), "up, without the database or role DATABASE_URL names"),
    (
        # PgBouncer's words for the `options` startup parameter (Tally's session settings) it does
        # not pass on: the whole parameter (before 1.20) or a setting in it it does not track.
        ("unsupported startup parameter", "unsupported options startup parameter"),
        "refusing Tally's session settings: add options to the pooler's ignore_startup_parameters",
    ),
    (
        # The server's word for a setting it has not heard of: one of Tally's (the workers'
        # client_connection_check_interval is PostgreSQL 14's) or a typo in DATABASE_URL's options.
        ("unrecognized configuration parameter",),
        "refusing a setting the connection sends: Tally needs PostgreSQL 14 or later, and the options"
        " of DATABASE_URL must name settings the server has",
    ),
)


def is_full(message: str) -> bool:
    """Whether a failed connect's message says the server's connection slots are all taken."""
    return any(sign in message for sign in CONNECT_PROBLEMS[0][0])


def why_no_connection(pool: psycopg_pool.ConnectionPool) -> str:
    """Why a checkout from `pool` found no connection in time, as health names it: every one lent
    out while its connects succeed (`busy: …`; an audit read "database unreachable" in the log
    for four requests that each held one and waited for a second), else `connect_problem`."""
    connecting = isinstance(pool, RecordingPool) and pool.connecting()
    if getattr(pool, "last_connect_error", None) is None and not connecting:
        stats = pool.get_stats()
        if stats.get("pool_size", 0) >= pool.max_size and not stats.get("pool_available", 0):
            return f"busy: every one of this process's {pool.max_size} connections was in use"
    return connect_problem(pool)


def connect_problem(pool: psycopg_pool.ConnectionPool) -> str:
    """Why `pool` has no connection, as health says it: `unreachable` unless the server answered."""
    message = getattr(pool, "last_connect_error", None) or ""
    for signs, problem in CONNECT_PROBLEMS:
        if any(sign in message for sign in signs):
            return problem
    return "unreachable"
