"""Answers held until the write commits (tally/web/later.py): no thread waits, every answer goes once,
after its commit, in its connection's order; a failed write is answered as the app answers it."""

from __future__ import annotations

import concurrent.futures
import json
import re
import socket
import threading
import time
from collections.abc import Callable

import psycopg
import pytest

from tally.config import from_env
from tally.db import web_pool
from tally.web.later import LATER, Later, Parked, hold_answers
from tally.web.responses import DATABASE_DOWN
from tally.web.view_writer import ViewWriter
from tests.conftest import free_port, wait_until

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"


class HeldRequest:
    """One request through `hold_answers(app)` as Tally's waitress serves it (tally/web/serving.py):
    a Later in its environ, Parked caught, the held answer sent by `send` in the writer's thread,
    the request run again by `again` (here: at once, in the caller's thread)."""

    def __init__(self, app: Callable, path: str):
        self.app = hold_answers(app)
        self.path = path
        self.answers: list[tuple[str, bytes, str]] = []  # (status, body, thread's name)
        self.later = Later(send=self._run, again=self._run)
        self.returned = threading.Event()  # the first run gave its thread back

    def start(self) -> None:
        self._run()
        self.returned.set()

    def _run(self) -> None:
        started: list[str] = []
        environ = {LATER: self.later, "PATH_INFO": self.path}
        try:
            body = b"".join(self.app(environ, lambda status, headers, exc_info=None: started.append(status)))
        except Parked:
            return
        self.answers.append((started[0], body, threading.current_thread().name))


def writing_app(writer: ViewWriter) -> Callable:
    """A WSGI app that stores one view of its path and answers 201, or 503 if the database is down."""

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        try:
            writer.write([(environ["PATH_INFO"], None)], environ.get(LATER))
        except DATABASE_DOWN:
            start_response("503 Service Unavailable", [])
            return [b"unreachable"]
        start_response("201 Created", [])
        return [b"stored"]

    return app


def stored_paths(conn: psycopg.Connection) -> list[str]:
    return [row[0] for row in conn.execute("SELECT path FROM page_views ORDER BY path")]


def test_held_writes_of_many_threads_are_each_stored_once_and_answered_once(pool, conn):
    writer = ViewWriter(pool)
    app = writing_app(writer)
    requests = [HeldRequest(app, f"/h{index:03d}") for index in range(320)]
    with concurrent.futures.ThreadPoolExecutor(32) as executor:
        list(executor.map(HeldRequest.start, requests))
    wait_until(lambda: all(request.answers for request in requests), 30, message="every answer")
    assert all(len(request.answers) == 1 for request in requests)
    assert {request.answers[0][:2] for request in requests} == {("201 Created", b"stored")}
    assert stored_paths(conn) == sorted(request.path for request in requests)
    # Most answers went from the thread that ran their INSERT, not the request's own.
    assert sum(request.answers[0][2].startswith("view-writer") for request in requests) > 0


def test_a_held_write_gives_its_thread_back_at_once_and_is_answered_only_once_committed(
    pool, conn, database_url
):
    writer = ViewWriter(pool)
    app = writing_app(writer)
    with psycopg.connect(database_url) as locker:
        locker.execute("LOCK TABLE page_views IN SHARE MODE")  # an INSERT waits (under lock_timeout)
        request = HeldRequest(app, "/held")
        started = time.monotonic()
        request.start()
        assert time.monotonic() - started < 0.5  # not held by the locked INSERT
        time.sleep(0.3)
        assert request.answers == [] and stored_paths(conn) == []
        locker.rollback()
    wait_until(lambda: request.answers, 10, message="the held answer")
    assert request.answers[0][:2] == ("201 Created", b"stored") and stored_paths(conn) == ["/held"]


def test_a_held_write_that_failed_is_answered_by_the_app_with_the_error_and_stores_nothing(conn):
    down = from_env(
        {"DATABASE_URL": "postgresql://postgres@/postgres?host=/nonexistent-tally"}, process_type="web"
    )
    with web_pool(down) as unreachable:
        writer = ViewWriter(unreachable)
        app = writing_app(writer)
        requests = [HeldRequest(app, f"/lost{index}") for index in range(6)]
        for request in requests:
            request.start()
        wait_until(lambda: all(request.answers for request in requests), 30, message="every answer")
    for request in requests:
        (status, body, _thread), *more = request.answers
        assert (status, more) == ("503 Service Unavailable", [])
        assert body == b"unreachable"
    assert stored_paths(conn) == []


def test_held_and_waiting_writes_share_inserts_and_each_is_stored_once(pool, conn):
    writer = ViewWriter(pool)
    app = writing_app(writer)
    held = [HeldRequest(app, f"/held{index:03d}") for index in range(100)]

    def wait_for(index: int) -> None:
        writer.write([(f"/waited{index:03d}", None)])  # returns once committed

    with concurrent.futures.ThreadPoolExecutor(16) as executor:
        futures = [executor.submit(request.start) for request in held]
        futures += [executor.submit(wait_for, index) for index in range(100)]
        for future in futures:
            future.result()
    waited = [f"/waited{index:03d}" for index in range(100)]
    assert set(waited) <= set(stored_paths(conn))  # committed when their writes returned
    wait_until(lambda: all(request.answers for request in held), 30, message="every held answer")
    assert stored_paths(conn) == sorted([request.path for request in held] + waited)


# -- through web.py --------------------------------------------------------------------------------


def raw_exchange(port: int, requests: list[bytes], timeout: float = 20.0) -> bytes:
    """Send `requests` in one write on one connection (pipelined; the last says Connection: close)
    and read until the web closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(b"".join(requests))
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    return received


def collect_request(path: str, close: bool = False) -> bytes:
    body = json.dumps({"url": f"https://example.com{path}", "referrer": ""}).encode()
    head = (
        "POST /api/collect HTTP/1.1\r\nHost: tally\r\nContent-Type: text/plain\r\n"
        f"User-Agent: {BROWSER}\r\nContent-Length: {len(body)}\r\n"
    )
    return (head + ("Connection: close\r\n" if close else "") + "\r\n").encode() + body


@pytest.fixture
def web(start_process):
    port = free_port()
    process = start_process(["web.py"], {"PORT": str(port)})  # an environment from scratch
    process.wait_for_line("Serving on")
    process.port = port
    return process


def test_pipelined_requests_on_one_connection_are_answered_in_their_order(web, conn):
    views = json.dumps({"path": "/second"}).encode()
    received = raw_exchange(
        web.port,
        [
            collect_request("/first"),
            b"POST /api/pageviews HTTP/1.1\r\nHost: tally\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(views)}\r\n\r\n".encode()
            + views,
            b"GET /tally.js HTTP/1.1\r\nHost: tally\r\n\r\n",
            collect_request("/fourth", close=True),
        ],
    )
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) [A-Z]", received)  # a body ends with no line break
    assert statuses == [b"201", b"201", b"200", b"201"]
    bodies = re.findall(rb'\{"stored": \d+\}', received)
    assert bodies == [b'{"stored": 1}'] * 3
    assert stored_paths(conn) == ["/first", "/fourth", "/second"]


def test_a_view_behind_a_locked_table_is_answered_503_by_the_app_and_stores_nothing(web, conn, database_url):
    with psycopg.connect(database_url) as locker:
        locker.execute("LOCK TABLE page_views IN SHARE MODE")  # past the web's 1.5 s lock_timeout
        started = time.monotonic()
        received = raw_exchange(web.port, [collect_request("/locked", close=True)])
        waited = time.monotonic() - started
        locker.rollback()
    assert re.match(rb"HTTP/1\.1 503 ", received), received[:200]
    assert b"locked" in received and 1.0 < waited < 6.0
    assert stored_paths(conn) == []
    assert re.match(rb"HTTP/1\.1 201 ", raw_exchange(web.port, [collect_request("/after", close=True)]))
    assert stored_paths(conn) == ["/after"]


def test_a_client_gone_before_its_answer_leaves_its_view_stored_and_the_web_serving(web, conn, database_url):
    with psycopg.connect(database_url) as locker:
        locker.execute("LOCK TABLE page_views IN SHARE MODE")
        with socket.create_connection(("127.0.0.1", web.port), timeout=10) as gone:
            gone.sendall(collect_request("/gone"))
            wait_until(
                lambda: conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                ).fetchone()[0],
                10,
                message="the held view's INSERT waiting on the lock",
            )
        locker.rollback()  # the client closed its connection; the INSERT goes on
    wait_until(lambda: stored_paths(conn) == ["/gone"], 10, message="the view stored")
    assert re.match(rb"HTTP/1\.1 201 ", raw_exchange(web.port, [collect_request("/next", close=True)]))
    assert "Traceback" not in web.output() and "held answer failed" not in web.output()
