"""The web pool's check on checkout (tally/db.py), against a real server."""

from __future__ import annotations

import dataclasses
import select
import types

import psycopg
import psycopg_pool
import pytest

from tally import db
from tally.checked_pool import connect_problem
from tally.config import from_env
from tally.db import web_pool
from tests.conftest import wait_until


@pytest.fixture
def one_connection(database_url):
    settings = from_env({"DATABASE_URL": database_url}, process_type="web")
    with web_pool(dataclasses.replace(settings, web_pool_size=1)) as pool:
        pool.wait(timeout=10)
        yield pool


@pytest.fixture
def full_checks(monkeypatch) -> list[int]:
    """The round-trip checks made (psycopg_pool's own), by backend pid."""
    made: list[int] = []
    check = psycopg_pool.ConnectionPool.check_connection

    def counted(conn: psycopg.Connection) -> None:
        made.append(conn.info.backend_pid)
        check(conn)

    monkeypatch.setattr(psycopg_pool.ConnectionPool, "check_connection", staticmethod(counted))
    return made


def test_a_healthy_idle_connection_is_handed_out_without_a_round_trip(one_connection, full_checks):
    for _ in range(5):
        with one_connection.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert full_checks == []


def test_a_connection_whose_backend_was_killed_is_replaced_before_use(
    one_connection, full_checks, database_url
):
    with one_connection.connection() as conn:
        killed = conn.info.backend_pid
        socket = conn.pgconn.socket
    with psycopg.connect(database_url, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (killed,)).fetchone() == (True,)
    wait_until(lambda: bool(select.select([socket], [], [], 0)[0]), 5, 0.01, "the server's hang-up")
    with one_connection.connection() as conn:  # not the broken one: the request does not fail
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.info.backend_pid != killed
    assert full_checks == [killed]


def test_a_killed_workers_statement_ends_on_the_server_within_seconds(database_url, conn):
    """A SIGKILLed worker's running statement went on in its backend (the server only looks at
    the socket when it has something to read or send): a rollup of 400,000 views ran on for
    30 s after its worker died, holding the rollup's lock, and the re-queued job failed on it
    (LockNotAvailable). The workers' sessions ask the server to check the client meanwhile."""
    import subprocess
    import sys

    script = (
        "import sys, psycopg\n"
        "from tally import config, db\n"
        "env = {'DATABASE_URL': sys.argv[1], 'DYNO': 'worker.killed'}\n"
        "settings = config.from_env(env, process_type='worker')\n"
        "kwargs = db.connection_kwargs(settings, db.WORKER_SESSION_SETTINGS)\n"
        "with psycopg.connect(sys.argv[1], **kwargs) as c:\n"
        "    c.execute('SELECT pg_sleep(60)')\n"
    )
    running = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'worker.killed'"
    child = subprocess.Popen([sys.executable, "-c", script, database_url])
    try:
        wait_until(lambda: conn.execute(running).fetchone()[0] == 1, 20, 0.05, "the statement to start")
    finally:
        child.kill()
        child.wait()
    wait_until(lambda: conn.execute(running).fetchone()[0] == 0, 5, 0.1, "the server to end the statement")


@pytest.mark.parametrize(
    "message",
    [
        'connection to server at "10.0.0.5", port 5432 failed: FATAL:  password authentication failed',
        'connection to server at "10.0.0.5", port 5432 failed: fe_sendauth: no password supplied',
        'connection to server on socket "/run/pg/.s.PGSQL.5432" failed: FATAL:  Peer authentication failed',
    ],
)
def test_health_names_refused_credentials_whoever_refuses_them(message):
    """A URL without the password a server asks for read "unreachable" (libpq says it, not the server)."""
    pool = types.SimpleNamespace(last_connect_error=message)
    assert connect_problem(pool) == "refusing the credentials of DATABASE_URL"


@pytest.mark.parametrize(
    "message",
    [
        'connection to server at "10.0.0.5", port 5432 failed: server does not support SSL, but SSL was'
        " required",
        'connection to server at "10.0.0.5", port 5432 failed: root certificate file'
        ' "/root/.postgresql/root.crt" does not exist',
        'connection to server at "10.0.0.5", port 5432 failed: server certificate for "db" does not match'
        ' host name "10.0.0.5"',
    ],
)
def test_health_names_an_ssl_refusal_not_an_unreachable_server(message):
    """DATABASE_URL's ?sslmode=require against a server without SSL read "unreachable" (it answered)."""
    pool = types.SimpleNamespace(last_connect_error=message)
    assert connect_problem(pool) == "without the SSL connection DATABASE_URL's sslmode asks for"


@pytest.mark.parametrize(
    "message",
    [
        # PgBouncer before 1.20, and later ones, whose options take only the parameters they track
        'connection to server at "10.0.0.5", port 6432 failed: FATAL:  unsupported startup parameter:'
        " options",
        'connection to server at "10.0.0.5", port 6432 failed: FATAL:  unsupported startup parameter in'
        " options: jit",
        'connection to server at "10.0.0.5", port 6432 failed: FATAL:  unsupported options startup parameter:'
        " only '-c config=val' and '--config=val' are allowed",
    ],
)
def test_health_names_a_pooler_refusing_tallys_session_settings(message):
    """A DATABASE_URL that goes through PgBouncer with its default configuration read "unreachable"
    in health (the web's log alone said `unsupported startup parameter: options`), though the
    pooler answered: the fix is in its configuration, not in the network."""
    pool = types.SimpleNamespace(last_connect_error=message)
    assert connect_problem(pool) == (
        "refusing Tally's session settings: add options to the pooler's ignore_startup_parameters"
    )


def test_the_options_of_database_url_are_kept_beside_tallys(database_url, conn):
    """libpq's `options` in DATABASE_URL (a search_path, a setting a provider asks for) were
    replaced by Tally's own: the release made its tables in public, not in the schema named."""
    conn.execute("DROP SCHEMA IF EXISTS tally_options_test CASCADE")
    conn.execute("CREATE SCHEMA tally_options_test")
    try:
        url = psycopg.conninfo.make_conninfo(database_url, options="-c search_path=tally_options_test")
        settings = from_env({"DATABASE_URL": url}, process_type="worker")
        kwargs = db.connection_kwargs(settings, db.WORKER_SESSION_SETTINGS)
        with psycopg.connect(url, **kwargs) as checked:
            assert checked.execute("SHOW search_path").fetchone()[0] == "tally_options_test"
            assert checked.execute("SHOW jit").fetchone()[0] == "off"  # Tally's still applies
    finally:
        conn.execute("DROP SCHEMA tally_options_test CASCADE")


def test_replica_connections_take_database_urls_options_when_theirs_has_none(database_url):
    """A follower's URL carries no options: with DATABASE_URL's search_path dropped, the replica's
    reads looked for Tally's tables elsewhere, every owner's read a 503 "run migrations"."""
    from tally.web.replica_check import check_connection_kwargs

    url = psycopg.conninfo.make_conninfo(database_url, options="-c search_path=app")
    follower = {"DATABASE_URL": url, "DATABASE_REPLICA_URL": "postgresql://follower.example/tally"}
    settings = from_env(follower, process_type="web")
    for kwargs in (db.replica_connection_kwargs(settings), check_connection_kwargs(settings)):
        assert kwargs["options"].startswith("-c search_path=app ")
    own = {
        **follower,
        "DATABASE_REPLICA_URL": "postgresql://follower.example/tally?options=-csearch_path%3Dother",
    }
    settings = from_env(own, process_type="web")
    for kwargs in (db.replica_connection_kwargs(settings), check_connection_kwargs(settings)):
        options = kwargs["options"]
        assert options.startswith("-csearch_path=other ") and "search_path=app" not in options


def test_a_workers_pool_hands_out_no_connection_the_server_closed(database_url, conn):
    """After a database restart, the write of a running job's outcome met a dead pooled
    connection: the job stayed `doing` until the clock's next minute (worker.py's pool had no
    check, where procrastinate's own pool has one)."""
    import asyncio

    settings = from_env({"DATABASE_URL": database_url, "DYNO": "worker.check"}, process_type="worker")

    async def scenario() -> None:
        async with db.worker_pool(settings) as pool:
            await pool.wait(timeout=5)
            async with pool.connection() as first:
                pid = first.info.backend_pid
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            wait_until(
                lambda: not conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchall(),
                5,
                0.01,
                "the backend's end",
            )
            async with pool.connection() as conn_after:
                assert (await (await conn_after.execute("SELECT 1")).fetchone()) == (1,)
                assert conn_after.info.backend_pid != pid

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "session_settings",
    [
        db.WEB_SESSION_SETTINGS,
        db.WORKER_SESSION_SETTINGS,
        db.CLOCK_SESSION_SETTINGS,
        db.REPLICA_SESSION_SETTINGS,
    ],
    ids=["web", "worker", "clock", "replica"],
)
def test_times_are_read_whatever_datestyle_the_database_sets(fresh_database, conn, session_settings):
    """A database (or role) with a DateStyle other than ISO (`ALTER DATABASE … SET datestyle =
    'SQL, DMY'`, a provider's parameter group) made psycopg refuse every timestamp it read:
    `/api/health`, the dashboard, stats, export, sites, /jobs and /metrics answered 500. Tally's
    sessions ask for the styles psycopg reads."""
    name = psycopg.conninfo.conninfo_to_dict(fresh_database)["dbname"]
    conn.execute(f"ALTER DATABASE \"{name}\" SET datestyle = 'SQL, DMY'")
    conn.execute(f"ALTER DATABASE \"{name}\" SET intervalstyle = 'iso_8601'")
    settings = from_env({"DATABASE_URL": fresh_database}, process_type="web")
    with psycopg.connect(fresh_database, **db.connection_kwargs(settings, session_settings)) as checked:
        stamp, day, span = checked.execute(
            "SELECT timestamptz '2026-12-05 14:00+00', date '2026-12-05', interval '1 day 2 hours'"
        ).fetchone()
    assert stamp.isoformat().startswith("2026-12-05T")
    assert day.isoformat() == "2026-12-05"
    assert span.days == 1 and span.seconds == 7200


def test_a_workers_statements_ignore_the_statement_timeout_of_the_role(fresh_database, conn):
    """A role's or a database's statement_timeout (`ALTER ROLE … SET statement_timeout = '1s'`, a
    provider's default) cut the worker's rollup of a backlog every minute, for good, and with the
    tail unfolded every stats read answered 503. A job's bound is its time limit."""
    name = psycopg.conninfo.conninfo_to_dict(fresh_database)["dbname"]
    conn.execute(f"ALTER DATABASE \"{name}\" SET statement_timeout = '100ms'")
    settings = from_env({"DATABASE_URL": fresh_database}, process_type="worker")
    with psycopg.connect(fresh_database, **db.worker_pool_args(settings)["kwargs"]) as checked:
        checked.execute("SELECT pg_sleep(0.3)")  # past the database's 100 ms


def test_health_names_a_setting_the_server_does_not_have(database_url):
    """A server without a setting Tally's connections send (PostgreSQL 13 has no
    client_connection_check_interval, which the workers set) or a typo in DATABASE_URL's options
    refuses the connection, and read "unreachable". The server's own words, from a real connect."""
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(database_url, options="-c client_connection_check_intervall=1000")
    pool = types.SimpleNamespace(last_connect_error=str(refused.value))
    assert connect_problem(pool) == (
        "refusing a setting the connection sends: Tally needs PostgreSQL 14 or later, and the options"
        " of DATABASE_URL must name settings the server has"
    )
