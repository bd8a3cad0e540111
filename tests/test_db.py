"""The web pool's check on checkout (tally/db.py), against a real server."""

from __future__ import annotations

import dataclasses
import select

import psycopg
import psycopg_pool
import pytest

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
