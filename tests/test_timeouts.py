"""Every connection Tally opens carries its timeouts: connect, TCP keepalive, TCP user
timeout, and the session's lock and statement budgets (tally/db.py sets them in one place).
What they do on a silent network is test_partitions.py's part."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from tally import db, queue_connector
from tally.config import ConfigError, from_env


def libpq_parameters(conn: psycopg.Connection | psycopg.AsyncConnection) -> dict[str, str]:
    return {option.keyword.decode(): (option.val or b"").decode() for option in conn.pgconn.info}


def settings_of(conn: psycopg.Connection, *names: str) -> dict[str, str]:
    return {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in names}  # names from this file


def test_the_web_fails_fast_on_a_silent_peer(database_url):
    settings = from_env({"DATABASE_URL": database_url}, process_type="web")
    with db.web_pool(settings) as pool, pool.connection() as conn:
        params = libpq_parameters(conn)
        assert params["tcp_user_timeout"] == str(db.WEB_TCP_USER_TIMEOUT_MS)
        assert (params["keepalives"], params["keepalives_idle"], params["connect_timeout"]) == ("1", "5", "2")
        assert settings_of(conn, "lock_timeout", "statement_timeout") == {
            "lock_timeout": "1500ms",
            "statement_timeout": "5s",
        }
    assert pool.reconnect_timeout == db.RECONNECT_GIVE_UP_SECONDS


def test_the_worker_its_listen_connection_and_the_clock_carry_the_same(database_url):
    settings = from_env({"DATABASE_URL": database_url}, process_type="worker")
    connector = queue_connector.procrastinate_connector(settings)

    async def check() -> None:
        pool = db.worker_pool(settings)
        await pool.open(wait=True, timeout=5)
        await connector.open_async(pool)
        try:
            async with pool.connection() as conn:
                assert libpq_parameters(conn)["tcp_user_timeout"] == "4000"
                assert (await (await conn.execute("SHOW lock_timeout")).fetchone())[0] == "5s"
            # the connection procrastinate LISTENs on (psycopg_connector._get_standalone_connection)
            async with connector._get_standalone_connection() as listen:
                params = libpq_parameters(listen)
                assert (params["keepalives_idle"], params["tcp_user_timeout"]) == ("5", "4000")
        finally:
            await connector.close_async()
            await pool.close()
        async with db.clock_pool(settings) as clock, clock.connection() as conn:
            assert libpq_parameters(conn)["keepalives_count"] == "3"

    asyncio.run(check())


def test_job_timeout_and_session_liveness_come_from_the_environment():
    defaults = from_env({}, process_type="worker")
    assert (defaults.job_timeout_seconds, defaults.worker_session_liveness) == (600.0, True)
    settings = from_env(
        {"JOB_TIMEOUT_SECONDS": "3", "WORKER_SESSION_LIVENESS": "false"}, process_type="worker"
    )
    assert (settings.job_timeout_seconds, settings.worker_session_liveness) == (3.0, False)
    with pytest.raises(ConfigError, match="JOB_TIMEOUT_SECONDS"):
        from_env({"JOB_TIMEOUT_SECONDS": "soon"}, process_type="worker")
    with pytest.raises(ConfigError, match="WORKER_SESSION_LIVENESS"):
        from_env({"WORKER_SESSION_LIVENESS": "maybe"}, process_type="worker")
