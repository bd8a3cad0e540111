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
from procrastinate import PsycopgConnector

from tally import localdb
from tally.config import Config

QUERIES_FILE = Path(__file__).with_name("queries.sql")
# A web request waits at most this long for a connection, so health answers 503
# within 2 s while the database is unreachable instead of hanging.
WEB_POOL_WAIT_SECONDS = 1.5
CONNECT_TIMEOUT_SECONDS = 2
# Session settings of every Tally connection. Tally's queries are short, and JIT (on in
# most PostgreSQL builds, off in the pip-installed one) would compile some of them on
# every call for far longer than they run (docs/ARCHITECTURE.md, "Plans and JIT").
SESSION_SETTINGS = {"jit": "off"}
# The web's requests have a budget, and its stats queries are always planned with the
# values they are given (a generic plan could scan the whole table for the stats tail).
WEB_STATEMENT_TIMEOUT_SECONDS = 5
WEB_SESSION_SETTINGS = {
    **SESSION_SETTINGS,
    "statement_timeout": f"{WEB_STATEMENT_TIMEOUT_SECONDS}s",
    "plan_cache_mode": "force_custom_plan",
}
# The clock only inserts periodic defers: one connection, no headroom needed.
CLOCK_POOL_SIZE = 1

_BLOCK_HEADER = re.compile(r"^-- ([a-z0-9_]+) --$", re.MULTILINE)


def load_queries(path: Path = QUERIES_FILE) -> dict[str, str]:
    """Parse `-- name --` blocks into {name: sql}; the line after the name describes it."""
    text = path.read_text(encoding="utf-8")
    parts = _BLOCK_HEADER.split(text)
    queries = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        _description, _, sql = body.strip().partition("\n")
        queries[name] = sql.strip()
    return queries


QUERIES = load_queries()


def conninfo_for(config: Config) -> Callable[[], str]:
    """Resolve the database URL when the first connection opens (the local server may start)."""
    return lambda: localdb.database_url(config.database_url)


def connection_kwargs(
    config: Config, settings: dict[str, str] = SESSION_SETTINGS, **extra: Any
) -> dict[str, Any]:
    return {
        "application_name": config.dyno,
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "options": " ".join(f"-c {name}={value}" for name, value in settings.items()),
        **extra,
    }


def web_pool(config: Config) -> psycopg_pool.ConnectionPool:
    """WEB_POOL_SIZE connections shared by the waitress threads (views share INSERTs)."""
    return psycopg_pool.ConnectionPool(
        conninfo_for(config),
        min_size=config.web_pool_size,
        max_size=config.web_pool_size,
        timeout=WEB_POOL_WAIT_SECONDS,
        # Autocommit: a view is one INSERT and one round trip, not BEGIN, INSERT, COMMIT.
        kwargs=connection_kwargs(config, WEB_SESSION_SETTINGS, autocommit=True),
        check=psycopg_pool.ConnectionPool.check_connection,
        name=f"{config.dyno}-web",
        open=False,
    )


def worker_pool_size(config: Config) -> int:
    """Jobs at once, plus one for fetching jobs and heart-beating (LISTEN has its own)."""
    return config.worker_concurrency + 1


def _autocommit(connection: psycopg.Connection | psycopg.AsyncConnection) -> Any:
    # One callback for both pools procrastinate may build: the async pool awaits what
    # this returns (a coroutine), the sync pool (`app.open()`) gets None.
    return connection.set_autocommit(True)


def procrastinate_connector(config: Config) -> PsycopgConnector:
    """The connector behind `jobs.app`; its own pool is the worker's."""
    return PsycopgConnector(
        conninfo=conninfo_for(config),
        min_size=1,
        max_size=worker_pool_size(config),
        kwargs=connection_kwargs(config),
        # Each procrastinate query is one statement: autocommit spares a BEGIN and a
        # COMMIT round trip per query (+15-25% jobs/s, bench/throughput.py). Set here,
        # not in kwargs, because procrastinate opens its LISTEN connection with
        # autocommit=True on top of these kwargs.
        configure=_autocommit,
        name=f"{config.dyno}-worker",
    )


def clock_pool(config: Config) -> psycopg_pool.AsyncConnectionPool:
    return psycopg_pool.AsyncConnectionPool(
        conninfo_for(config),
        min_size=CLOCK_POOL_SIZE,
        max_size=CLOCK_POOL_SIZE,
        kwargs=connection_kwargs(config),
        check=psycopg_pool.AsyncConnectionPool.check_connection,
        name=f"{config.dyno}-clock",
        open=False,
    )
