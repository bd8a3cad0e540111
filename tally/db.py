"""Database access shared by the three processes: the named queries and sized pools.

Every pool is sized on purpose (psycopg_pool would open 4 connections by default);
the README's "Connection budget" adds them up.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool

from tally import dimension_sql, localdb
from tally.answer_bound import AnswerBoundConnection, AsyncAnswerBoundConnection
from tally.checked_pool import CheckedPool, RecordingPool, check_if_hung_up
from tally.config import Config

QUERIES_FILE = Path(__file__).with_name("queries.sql")
# A web request waits at most this long for a connection, so health answers 503
# within 2 s while the database is unreachable instead of hanging.
WEB_POOL_WAIT_SECONDS = 1.5
CONNECT_TIMEOUT_SECONDS = 2
# Every socket finds a silent peer (a partition, a failover that left no RST) within
# seconds instead of TCP's 15 minutes (docs/ARCHITECTURE.md, "Silent networks"). Keepalive
# probes test idle connections (the LISTEN one above all); tcp_user_timeout closes a
# connection whose sent bytes stay unacknowledged that long. A long query is not cut by
# it: the server's kernel acknowledges the request at once and answers probes meanwhile.
TCP_SETTINGS: dict[str, int] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 1,
    "keepalives_count": 3,
    "tcp_user_timeout": 4_000,
}
# The web must answer within its budget (health in 2 s): a lost peer costs it at most this.
WEB_TCP_USER_TIMEOUT_MS = 1_000
# A pool retries a lost connection with a growing backoff (1, 2, 4 ... s): after a long
# outage its next try could be half a minute away. Giving up after a few seconds hands
# the slot back, and the next request that needs a connection opens one at once, so
# recovery takes seconds whatever the outage's length.
RECONNECT_GIVE_UP_SECONDS = 3.0
# The clock's and the worker's wait for a connection. No longer than the give-up above:
# psycopg_pool grows a pool only when a client starts waiting, so a client that waits
# past a given-up reconnect would wait out its whole timeout on an empty pool.
POOL_WAIT_SECONDS = RECONNECT_GIVE_UP_SECONDS
# Session settings of every Tally connection. Tally's queries are short, and JIT (on in
# most PostgreSQL builds, off in the pip-installed one) would compile some of them on
# every call for far longer than they run (docs/ARCHITECTURE.md, "Plans and JIT").
#
# The server's side of the socket gets the client's keepalives too. A silent partition
# sends no RST: the client gives its connections up within seconds, but the server kept
# each session (its connection slot, a worker's liveness lock) until its own probes found
# the peer gone: two hours with the default tcp_keepalives_idle=7200, or about 15 minutes of
# retransmissions for a session whose last answer was unacknowledged. Every outage then
# leaked every pool's connections, and after a few the reconnects met `too many clients`.
# (Per-session settings, ignored on a unix socket; `connection_kwargs` adds the server's
# tcp_user_timeout, equal to the client's.)
SESSION_SETTINGS = {
    "jit": "off",
    # psycopg reads dates, times and intervals only in these styles: a database or role set to
    # another (`ALTER DATABASE … SET datestyle = 'SQL, DMY'`) made every timestamp read a 500.
    "datestyle": "ISO",
    "intervalstyle": "postgres",
    "tcp_keepalives_idle": str(TCP_SETTINGS["keepalives_idle"]),
    "tcp_keepalives_interval": str(TCP_SETTINGS["keepalives_interval"]),
    "tcp_keepalives_count": str(TCP_SETTINGS["keepalives_count"]),
}
# The web's requests have a budget, and its stats queries are always planned with the
# values they are given (a generic plan could scan the whole table for the stats tail).
WEB_STATEMENT_TIMEOUT_SECONDS = 5
# A table locked by someone else (a migration, VACUUM FULL, LOCK TABLE) costs a request
# this long, then a 503, instead of a thread for as long as the lock lasts.
WEB_LOCK_TIMEOUT_MS = 1_500
# The web's bound on one answer, on its own side. statement_timeout and lock_timeout are the
# server's to enforce, and TCP gives up only on bytes left unacknowledged: a server that hangs
# with its kernel still up (SIGSTOP, a stalled disk, a frozen container or VM host) enforced
# nothing, and a view's insert, the reads, /api/jobs and /metrics waited as long as it hung
# (30 s, 65 s: measured). Past the statement timeout and a margin, the answer is not coming.
WEB_ANSWER_LIMIT_SECONDS = WEB_STATEMENT_TIMEOUT_SECONDS + 1.5


class WebConnection(AnswerBoundConnection):
    answer_limit = WEB_ANSWER_LIMIT_SECONDS


WEB_SESSION_SETTINGS = {
    **SESSION_SETTINGS,
    "statement_timeout": f"{WEB_STATEMENT_TIMEOUT_SECONDS}s",
    "lock_timeout": f"{WEB_LOCK_TIMEOUT_MS}ms",
    "plan_cache_mode": "force_custom_plan",
}
# A job's statement waits this long for a lock, then fails; its task's retry strategy
# runs it again later, and the worker's other jobs keep going meanwhile.
JOB_LOCK_TIMEOUT_SECONDS = 5
# The server looks at a client's socket only when it reads or sends: a SIGKILLed worker's
# statement ran on to its end (a rollup of 400,000 views for 30 s, holding the rollup's
# lock, so the job re-queued meanwhile failed on it). This makes the server check the
# socket while a statement runs and end it once the worker is gone (PostgreSQL 14 and up).
CLIENT_CHECK_MS = 1_000
WORKER_SESSION_SETTINGS = {
    **SESSION_SETTINGS,
    "lock_timeout": f"{JOB_LOCK_TIMEOUT_SECONDS}s",
    "client_connection_check_interval": f"{CLIENT_CHECK_MS}ms",
    # A job's bound is its time limit (JOB_TIMEOUT_SECONDS), not a statement_timeout the role or
    # the database was given (a provider's default, a DBA's `ALTER ROLE … SET statement_timeout =
    # '1s'`): that one cut the rollup of a backlog every minute, for good (900,000 views take 13 s
    # to fold), and with the tail unfolded every stats read and the dashboard answered 503.
    "statement_timeout": "0",
}
# The release step's bounds are its own (a step's lock wait, migrations/__init__.py), not a
# statement_timeout or lock_timeout set on the role for the web behind a pooler that drops
# Tally's options (README "PgBouncer"): a migration that rewrites a table runs for minutes.
RELEASE_SESSION_SETTINGS = {**SESSION_SETTINGS, "statement_timeout": "0", "lock_timeout": "0"}
# The clock only inserts periodic defers: one connection, no headroom needed. Its inserts
# wait for a lock (someone's LOCK TABLE, a long transaction on the defers' table) at most as
# long as a job does, then fail and are tried again with a line in the log: they waited
# without a bound or a word.
CLOCK_POOL_SIZE = 1
CLOCK_STATEMENT_TIMEOUT_SECONDS = 10
CLOCK_SESSION_SETTINGS = {
    **SESSION_SETTINGS,
    "lock_timeout": f"{JOB_LOCK_TIMEOUT_SECONDS}s",
    "statement_timeout": f"{CLOCK_STATEMENT_TIMEOUT_SECONDS}s",
}
# The clock's own bound on an answer, as the web's (WEB_ANSWER_LIMIT_SECONDS): a hung server
# held a tick's defer, with no line in the log, for as long as it hung.
CLOCK_ANSWER_LIMIT_SECONDS = CLOCK_STATEMENT_TIMEOUT_SECONDS + 1.5


class ClockConnection(AsyncAnswerBoundConnection):
    answer_limit = CLOCK_ANSWER_LIMIT_SECONDS


# The web's reads from DATABASE_REPLICA_URL (tally/web/replica.py): the owner's dashboard,
# stats, export and sites, a few people at once, each read a few milliseconds (the rollups
# are cached). A fourth read at once waits this long, then reads from the primary.
REPLICA_POOL_SIZE = 3
REPLICA_POOL_WAIT_SECONDS = 0.5
# The replica serves the web's reads with the web's settings, and refuses any write: one
# that reached it by mistake fails loudly instead of on the next failover.
REPLICA_SESSION_SETTINGS = {**WEB_SESSION_SETTINGS, "default_transaction_read_only": "on"}

# psycopg prepares a query on the server once a connection has run it 5 times (its
# prepare_threshold), and runs the prepared statement after that. A transaction-mode pooler
# (DATABASE_POOLER=transaction) sends the next transaction to whichever server connection is
# free: the statement is missing there (InvalidSqlStatementName) or another client's of the
# same name is (DuplicatePreparedStatement), and 47% of beacons answered 500 through PgBouncer
# 1.18. Off only there: preparing saves ~70 us per view's INSERT on a direct connection.
NO_PREPARED_STATEMENTS: dict[str, Any] = {"prepare_threshold": None}
# What psycopg raises when a prepared statement went missing or clashes on the server.
PREPARED_STATEMENTS_LOST = (psycopg.errors.InvalidSqlStatementName, psycopg.errors.DuplicatePreparedStatement)
POOLER_HINT = (
    "DATABASE_URL goes through a transaction-mode pooler (PgBouncer) that loses prepared"
    " statements: set DATABASE_POOLER=transaction for the processes that use it"
)


def lost_prepared_statement(error: BaseException) -> bool:
    """Whether `error` is a prepared statement gone missing, clashing, or run on another server
    connection than the one that prepared it (there a statement of the same name may take other
    parameters: `bind message supplies 1 parameters, but prepared statement "_pg3_13" requires 0`,
    a ProtocolViolation that looked like the database being unreachable)."""
    if isinstance(error, PREPARED_STATEMENTS_LOST):
        return True
    return isinstance(error, psycopg.errors.ProtocolViolation) and "prepared statement" in str(error)


_BLOCK_HEADER = re.compile(r"^-- ([a-z0-9_]+) --$", re.MULTILINE)


def load_queries(path: Path = QUERIES_FILE) -> dict[str, str]:
    """Parse `-- name --` blocks into {name: sql}; the line after the name describes it. The
    markers of the dimensions are filled from their table (tally/dimension_sql.py); an unknown
    one is an error here, at import, not when the query runs."""
    text = path.read_text(encoding="utf-8")
    parts = _BLOCK_HEADER.split(text)
    queries = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        _description, _, sql = body.strip().partition("\n")
        queries[name] = dimension_sql.render(sql.strip(), f"{path.name}, {name}")
    return queries


QUERIES = load_queries()


def conninfo_for(config: Config) -> Callable[[], str]:
    """Resolve the database URL when the first connection opens (the local server may start)."""
    return lambda: localdb.database_url(config.database_url)


def connection_kwargs(
    config: Config,
    settings: dict[str, str] = SESSION_SETTINGS,
    tcp_user_timeout_ms: int = TCP_SETTINGS["tcp_user_timeout"],
    given: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Parameters of every Tally connection: name, timeouts, keepalives, session settings, and
    whether psycopg may prepare statements.

    The URL's `options` (`given`, else DATABASE_URL's) come first, Tally's after them: a keyword
    replaces the URL's, so a search_path or a provider's setting given there was dropped."""
    given = url_options(config.database_url) if given is None else given
    own = " ".join(
        f"-c {name}={value}" for name, value in {**settings, "tcp_user_timeout": tcp_user_timeout_ms}.items()
    )
    if config.through_transaction_pooler:
        extra = {**NO_PREPARED_STATEMENTS, **extra}
    return {
        "application_name": config.dyno,
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        **TCP_SETTINGS,
        "tcp_user_timeout": tcp_user_timeout_ms,
        # The server's end of the socket gives up on unacknowledged bytes as the client's does.
        "options": f"{given} {own}".strip(),
        **extra,
    }


def url_options(url: str | None) -> str:
    """libpq's `options` written in a database URL (`?options=-c%20search_path%3Dapp`), or ''."""
    return str(psycopg.conninfo.conninfo_to_dict(url).get("options", "")) if url else ""


def replica_url_options(config: Config) -> str:
    """The options the replica's connections start from: its URL's, else DATABASE_URL's. A
    follower's URL (Heroku's) carries none, and without DATABASE_URL's search_path the replica's
    reads looked for Tally's tables elsewhere: every owner's read a 503 "run migrations"."""
    return url_options(config.database_replica_url) or url_options(config.database_url)


def web_pool(config: Config) -> psycopg_pool.ConnectionPool:
    """WEB_POOL_SIZE connections shared by the waitress threads (views share INSERTs)."""
    return CheckedPool(
        conninfo_for(config),
        min_size=config.web_pool_size,
        max_size=config.web_pool_size,
        timeout=WEB_POOL_WAIT_SECONDS,
        reconnect_timeout=RECONNECT_GIVE_UP_SECONDS,
        # Autocommit: a view is one INSERT and one round trip, not BEGIN, INSERT, COMMIT (and no
        # check's round trip before it: CheckedPool's `server_hung_up`).
        kwargs=connection_kwargs(
            config, WEB_SESSION_SETTINGS, tcp_user_timeout_ms=WEB_TCP_USER_TIMEOUT_MS, autocommit=True
        ),
        connection_class=WebConnection,
        name=f"{config.dyno}-web",
        open=False,
    )


def replica_pool(config: Config) -> RecordingPool:
    """REPLICA_POOL_SIZE connections to DATABASE_REPLICA_URL, with the web pool's timeouts.

    No `check` on checkout (the web pool has one): a replica connection that broke answers
    its request's first query with an error at once, and the request then reads from the
    primary, where a check would wait and retry on this pool first. The replica's checker
    (tally/web/replica.py) says when the replica is back, and `check()`s the pool then; it also
    asks the pool whether its connects fail (RecordingPool), as a replica can answer its checker's
    old connection and refuse every new one (its slots full, its postmaster hung).
    """
    if config.database_replica_url is None:
        raise ValueError("no DATABASE_REPLICA_URL")
    return RecordingPool(
        config.database_replica_url,
        min_size=REPLICA_POOL_SIZE,
        max_size=REPLICA_POOL_SIZE,
        timeout=REPLICA_POOL_WAIT_SECONDS,
        reconnect_timeout=RECONNECT_GIVE_UP_SECONDS,
        kwargs=replica_connection_kwargs(config),
        connection_class=WebConnection,  # frees the reader thread a frozen replica held
        name=f"{config.dyno}-replica",
        open=False,
    )


def replica_connection_kwargs(config: Config) -> dict[str, Any]:
    """libpq parameters of the web's replica connections: the web's, read-only."""
    return connection_kwargs(
        config,
        REPLICA_SESSION_SETTINGS,
        tcp_user_timeout_ms=WEB_TCP_USER_TIMEOUT_MS,
        given=replica_url_options(config),
        autocommit=True,
    )


def worker_pool_size(config: Config) -> int:
    """Jobs at once, plus one for fetching jobs and heart-beating (LISTEN has its own)."""
    return config.worker_concurrency + 1


def _autocommit(connection: psycopg.Connection | psycopg.AsyncConnection) -> Any:
    # One callback for both pools procrastinate may build: the async pool awaits what
    # this returns (a coroutine), the sync pool (`app.open()`) gets None.
    return connection.set_autocommit(True)


def worker_pool_args(config: Config) -> dict[str, Any]:
    """The arguments of a worker's pool: psycopg_pool's, and the connector's (tally/queue_connector.py)."""
    return {
        "conninfo": conninfo_for(config),
        "min_size": 1,
        "max_size": worker_pool_size(config),
        "timeout": POOL_WAIT_SECONDS,
        "reconnect_timeout": RECONNECT_GIVE_UP_SECONDS,
        # procrastinate opens its LISTEN connection with these same kwargs (keepalives too).
        "kwargs": connection_kwargs(config, WORKER_SESSION_SETTINGS),
        # Each procrastinate query is one statement: autocommit spares a BEGIN and a
        # COMMIT round trip per query (+15-25% jobs/s, bench/throughput.py). Set here,
        # not in kwargs, because procrastinate opens its LISTEN connection with
        # autocommit=True on top of these kwargs.
        "configure": _autocommit,
        "name": f"{config.dyno}-worker",
    }


def worker_pool(config: Config) -> psycopg_pool.AsyncConnectionPool:
    """The pool `python worker.py` opens itself, so its wait for the database is bounded."""
    return psycopg_pool.AsyncConnectionPool(**worker_pool_args(config), check=check_if_hung_up, open=False)


def clock_pool(config: Config) -> psycopg_pool.AsyncConnectionPool:
    return psycopg_pool.AsyncConnectionPool(
        conninfo_for(config),
        min_size=CLOCK_POOL_SIZE,
        max_size=CLOCK_POOL_SIZE,
        timeout=POOL_WAIT_SECONDS,
        reconnect_timeout=RECONNECT_GIVE_UP_SECONDS,
        kwargs=connection_kwargs(config, CLOCK_SESSION_SETTINGS),
        check=psycopg_pool.AsyncConnectionPool.check_connection,
        connection_class=ClockConnection,
        name=f"{config.dyno}-clock",
        open=False,
    )
