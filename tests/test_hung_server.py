"""A server that hangs with its kernel up (SIGSTOP, a stalled disk, a frozen container): it
acknowledges every byte and answers none, so neither its statement_timeout nor TCP ends a wait.
The web's connections bound each answer themselves (tally/answer_bound.py).

The hang is a proxy on a unix socket that stops passing bytes on: the test server keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import psycopg_pool
import pytest

from tally import db
from tally.answer_bound import AnswerTimedOut
from tally.config import from_env
from tally.web.stats import StatsReader
from tests.conftest import wait_until

pytestmark = pytest.mark.waits  # on timers and servers (tests/suites.py)


class FreezingProxy:
    """Passes bytes between clients and the database until `freeze()`, or until a client sends
    the bytes given to `freeze_on` (a query's text: the server hangs as that query reaches it);
    then passes none."""

    def __init__(self, folder: Path, target: dict):
        self.port = 5432
        self.path = str(folder / f".s.PGSQL.{self.port}")
        self.target = target
        self.frozen = threading.Event()
        self.marker: bytes | None = None
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen()
        threading.Thread(target=self._accept, daemon=True).start()

    def _connect_target(self) -> socket.socket:
        host, port = self.target.get("host") or "/tmp", int(self.target.get("port") or 5432)
        if host.startswith("/"):
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(f"{host}/.s.PGSQL.{port}")
        else:
            upstream = socket.create_connection((host, port))
        return upstream

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = self._connect_target()
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if self.marker is not None and self.marker in data:
                    self.frozen.set()
                while self.frozen.is_set():
                    time.sleep(0.05)  # hung: the bytes sit in the socket's buffers, unanswered
                sink.sendall(data)

    def freeze(self) -> None:
        self.frozen.set()

    def freeze_on(self, marker: bytes) -> None:
        self.marker = marker

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def proxy(database_url: str, tmp_path: Path) -> Iterator[tuple[FreezingProxy, str]]:
    target = psycopg.conninfo.conninfo_to_dict(database_url)
    started = FreezingProxy(tmp_path, target)
    through = psycopg.conninfo.make_conninfo(database_url, host=str(tmp_path), port=str(started.port))
    yield started, through
    started.marker = None
    started.frozen.clear()
    started.close()


def test_a_web_connection_gives_up_on_a_hung_server(proxy):
    hung, url = proxy
    settings = from_env({"DATABASE_URL": url}, process_type="web")
    outcome: list[BaseException | None] = []

    def read_once_hung(pool) -> None:
        try:
            with pool.connection() as conn, conn.transaction():
                conn.execute("SELECT 2")
        except BaseException as error:  # the outcome is the test's to judge
            outcome.append(error)
        else:
            outcome.append(None)

    with db.web_pool(settings) as pool:
        pool.wait(5)
        with pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        hung.freeze()
        started = time.monotonic()
        reader = threading.Thread(target=read_once_hung, args=(pool,), daemon=True)
        reader.start()
        reader.join(db.WEB_STATEMENT_TIMEOUT_SECONDS + 5)
        took = time.monotonic() - started
        hung.frozen.clear()  # before: the read waited for as long as the server hung
        assert not reader.is_alive(), f"the read still waited for the hung server after {took:.1f} s"
        assert isinstance(outcome[0], psycopg.OperationalError), outcome
        assert isinstance(outcome[0], AnswerTimedOut), outcome
        assert took < db.WEB_STATEMENT_TIMEOUT_SECONDS + 2.5


def test_a_view_sent_to_a_hung_server_is_answered_503_saying_it_may_be_stored(proxy, conn):
    """The insert was sent: if the server wakes, it commits it. A sender told "try again" would
    count it twice; the answer says to check first. Once the server wakes, the view is there."""
    from tests.test_web import make_client

    hung, url = proxy
    settings = from_env({"DATABASE_URL": url}, process_type="web")
    with db.web_pool(settings) as pool:
        pool.wait(5)
        client = make_client(url, pool)
        assert client.post_json("/api/pageviews", {"path": "/before"}).status_int == 201
        hung.freeze()
        started = time.monotonic()
        try:
            response = client.post_json("/api/pageviews", {"path": "/hung"}, status=503)
        finally:
            took = time.monotonic() - started
            hung.frozen.clear()
    assert "may or may not have been stored" in response.json["error"], response.json
    assert took < db.WEB_STATEMENT_TIMEOUT_SECONDS + 2.5
    wait_until(
        lambda: conn.execute("SELECT count(*) FROM page_views WHERE path = '/hung'").fetchone()[0] == 1, 10
    )


def test_the_clock_gives_up_on_a_hung_server(proxy):
    hung, url = proxy
    settings = from_env({"DATABASE_URL": url}, process_type="clock")

    async def defer_once_hung() -> tuple[BaseException | None, float]:
        async with db.clock_pool(settings) as pool:
            await pool.wait(5)
            async with pool.connection() as conn:
                assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
            hung.freeze()
            started = time.monotonic()
            try:
                # Bounded here only so that the test ends: before, the wait lasted as the hang.
                async with asyncio.timeout(db.CLOCK_STATEMENT_TIMEOUT_SECONDS + 5):
                    async with pool.connection() as conn:
                        await conn.execute("SELECT 2")
            except BaseException as error:  # the outcome is the test's to judge
                return error, time.monotonic() - started
            finally:
                hung.frozen.clear()
            return None, time.monotonic() - started

    error, took = asyncio.run(defer_once_hung())
    # The pool's check of the connection meets the hang first (a PoolTimeout), or the statement
    # does: either is a "database unreachable" that the clock logs and retries a second later.
    assert isinstance(error, psycopg.OperationalError | psycopg_pool.PoolTimeout), (
        f"{error!r} after {took:.1f} s"
    )
    assert took < db.CLOCK_STATEMENT_TIMEOUT_SECONDS + 2.5, f"{error!r} after {took:.1f} s"


def test_a_read_on_one_server_never_waits_for_a_read_hung_on_another(proxy, database_url, conn):
    """A replica frozen in the midst of counting the visitors of the last 5 minutes held that
    count's lock until the read's connection gave up on it (6.5 s), and the same read moved to
    the primary (tally/web/replica.py) waited for the lock, where reads must move within 2 s
    (tests/test_replica.py, once on a loaded CI machine). Each server's count has its own."""
    hung, url = proxy
    conn.execute("INSERT INTO page_views (path, visitor) VALUES ('/now', 1)")
    settings = from_env({"DATABASE_URL": database_url, "DATABASE_REPLICA_URL": url}, process_type="web")
    ended: list[BaseException | None] = []

    def read(reader: StatsReader, pool: psycopg_pool.ConnectionPool) -> None:
        try:
            reader.stats_for_window(30, pool=pool)
        except BaseException as error:  # the hung read's outcome is no part of the test
            ended.append(error)
        else:
            ended.append(None)

    with db.web_pool(settings) as primary, db.replica_pool(settings) as replica:
        primary.wait(5)
        replica.wait(5)
        reader = StatsReader(primary, retention_days=30)
        hung.freeze_on(b"SELECT count(*) AS current_visitors")
        on_replica = threading.Thread(target=read, args=(reader, replica), daemon=True)
        on_replica.start()
        wait_until(hung.frozen.is_set, 10, 0.01, "the read on the replica to reach the count")
        started = time.monotonic()
        try:
            answer = reader.stats_for_window(30, pool=primary)
        finally:
            took = time.monotonic() - started
            hung.frozen.clear()
            on_replica.join(db.WEB_ANSWER_LIMIT_SECONDS + 2)
    assert answer["current_visitors"] == 1
    assert took < 1.0, f"the primary's read took {took:.2f} s"
    assert not on_replica.is_alive() and len(ended) == 1
