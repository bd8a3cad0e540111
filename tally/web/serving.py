"""Serving the web's WSGI app on waitress, and the two changes Tally makes to waitress.

waitress reads requests on its main thread and hands each one to a worker thread. Under
load that main thread always has Python to run (parsing, polling every connection), so a
worker thread that released the GIL for I/O (a socket send, a database round trip) waits
for the interpreter's switch interval, 5 ms, each time it wants it back. Measured here
with constant JSON: 4 threads answered 585 req/s at 4 connections and 198 at 64. The
main thread giving the GIL away once after each request it queues lets the worker it
woke run at once: 3,590 and 3,470 req/s (docs/ARCHITECTURE.md, "waitress and the GIL").
And a request waitress cannot read itself (a Content-Length that is no number) is answered
in the API's JSON, not waitress's plain text.

A request whose write is queued for a group's INSERT leaves its answer held and its thread
free (tally/web/later.py): the request stays first on its connection, unanswered (waitress
reads nothing more from that connection meanwhile, so answers keep their order), until the
thread that ran the INSERT sends the held answer, or hands the request back to waitress's
threads to answer the failed write.

SIGTERM (Heroku's stop) drains: the listening socket closes at once (a new connection is
refused, and the router tries another dyno), and for up to DRAIN_SECONDS the connections
already open are still read and answered, each answer with `Connection: close`; then the
process stops (waitress gives running requests 5 s more). Stopping at once reset the
requests that clients had sent on kept-alive connections just after the signal: a beacon
lost, with no answer (a helper's soak: 4 beacons and a dashboard read per restart). A second
SIGTERM stops at once.

    >>> serve(app, port=5000, threads=4)   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

import waitress
import waitress.server
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.task import ErrorTask, Task, ThreadedTaskDispatcher, WSGITask

from tally.web.later import LATER, Later, Parked, hold_answers

if TYPE_CHECKING:
    from wsgiref.types import WSGIApplication

# Bodies past this get waitress's own 413 before they are buffered; up to it, the app
# answers 413 in JSON for anything over 1 MiB.
MAX_REQUEST_BODY_BYTES = 2 * 1024 * 1024
# Open connections waitress serves at once (its default is 100, polled with select(), which
# stops at 1,024 descriptors): at 100, one client holding 100 half-sent requests (which each
# byte keeps alive for waitress's 120 s) left the dyno answering nobody, health included.
CONNECTION_LIMIT = 1000
# After SIGTERM, how long requests on connections already open are still answered: well inside
# the 30 s Heroku gives a dyno before SIGKILL, with waitress's 5 s for running requests after.
DRAIN_SECONDS = 5.0
# How often the drain looks whether every connection has closed (it then stops sooner).
DRAIN_CHECK_SECONDS = 0.05

logger = logging.getLogger("tally.web")


class GilYieldingDispatcher(ThreadedTaskDispatcher):
    """waitress's task queue, whose producer (the main thread) yields the GIL after each task."""

    def add_task(self, task: Task) -> None:
        super().add_task(task)
        time.sleep(0)  # releases the GIL: the worker just notified takes it now, not in 5 ms


class JsonErrorTask(ErrorTask):
    """waitress's own answer to a request it cannot read (a Content-Length that is no number,
    a NUL in a header, a body past MAX_REQUEST_BODY_BYTES, an unknown Transfer-Encoding), in
    the API's form: `{"error": ...}` as JSON, where waitress writes plain text."""

    def execute(self) -> None:
        error = self.request.error
        sentence = f"{error.reason}: {error.body}"
        if error.code == 413:  # waitress says "exceeds max_body of 2097152": the app's words instead
            sentence = f"The body is larger than {MAX_REQUEST_BODY_BYTES} bytes, the most this server reads."
        body = json.dumps({"error": sentence}).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class DrainingTask(WSGITask):
    """waitress's task, whose answer says `Connection: close` once the server drains, and whose
    request carries a `Later` (one for all the tasks that serve it)."""

    def get_environment(self) -> dict[str, Any]:
        later = getattr(self.request, "tally_later", None)
        if later is not None and later.environ is not None:
            # This task only sends the answer the app built on the first (later.py's middleware
            # runs the app again, on failure, with that first environ): waitress's environ,
            # built again, cost 20 us an answer.
            return {LATER: later}
        environ = super().get_environment()
        if later is None:
            channel = self.channel
            later = Later(send=channel.send_held_answer, again=channel.answer_again)
            self.request.tally_later = later
        environ[LATER] = later
        return environ

    def build_response_header(self) -> bytes:
        if getattr(self.channel.server, "draining", False):
            self.set_close_on_finish()
        return super().build_response_header()


class JsonErrorChannel(HTTPChannel):
    task_class = DrainingTask
    error_task_class = JsonErrorTask

    def service(self) -> None:
        with contextlib.suppress(Parked):  # the answer is held: the request stays first, until
            super().service()  # send_held_answer

    def send_held_answer(self) -> None:
        """Send the held answer of the request first on this connection, in the caller's thread."""
        if self.requests:  # none when waitress closed the connection at its stop
            self.service()

    def answer_again(self) -> None:
        """Have one of waitress's threads run the held request again (its write failed)."""
        if self.requests:
            self.server.add_task(self)


class Drain:
    """SIGTERM's graceful stop of one server (the module's docstring says what it does)."""

    def __init__(self, server: Any, seconds: float = DRAIN_SECONDS):
        self.server = server
        self.seconds = seconds
        self.main_thread = threading.get_ident()

    def on_sigterm(self, signum: int, frame: Any) -> None:
        if getattr(self.server, "draining", False):
            raise SystemExit(0)  # the drain's end (or a second SIGTERM): waitress stops now
        self.server.draining = True
        wasyncore.dispatcher.close(self.server)  # the listening socket only: no new connection
        logger.info("SIGTERM: answering the open connections for up to %g s, then stopping", self.seconds)
        threading.Thread(target=self._end, name="drain", daemon=True).start()

    def _end(self) -> None:
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline and self._open_connections():
            time.sleep(DRAIN_CHECK_SECONDS)
        signal.pthread_kill(self.main_thread, signal.SIGTERM)

    def _open_connections(self) -> bool:
        return any(isinstance(channel, HTTPChannel) for channel in list(self.server._map.values()))


def _server_with_json_errors(app: WSGIApplication, **settings: Any) -> Any:
    """waitress's server, whose connections answer unreadable requests in JSON and which drains
    on SIGTERM (the hook `waitress.serve` offers for its server is `_server`, as `_dispatcher`
    is for its queue)."""
    server = waitress.server.create_server(app, **settings)
    server.channel_class = JsonErrorChannel
    server.draining = False
    signal.signal(signal.SIGTERM, Drain(server).on_sigterm)
    return server


def serve(
    app: WSGIApplication,
    port: int,
    threads: int,
    dispatcher_class: type[ThreadedTaskDispatcher] = GilYieldingDispatcher,
) -> None:
    """Serve `app` on 0.0.0.0:`port` with `threads` worker threads until SIGTERM (drained) or
    SIGINT. Call it from the main thread: it sets the SIGTERM handler.

    `dispatcher_class=ThreadedTaskDispatcher` is plain waitress (the benchmark's baseline).
    """
    dispatcher = dispatcher_class()
    dispatcher.set_thread_count(threads)
    waitress.serve(
        hold_answers(app),  # the answers of requests whose writes wait for a group's INSERT
        host="0.0.0.0",
        port=port,
        threads=threads,
        ident="tally",
        max_request_body_size=MAX_REQUEST_BODY_BYTES,
        connection_limit=CONNECTION_LIMIT,
        asyncore_use_poll=True,  # poll(), not select(): past 1,024 descriptors
        # waitress deletes every X-Forwarded-* header unless `trusted_proxy` names the peer,
        # and Heroku's router has no fixed address: keep them, the app reads them itself
        # (tally/web/auth.py: the last X-Forwarded-For entry, X-Forwarded-Proto).
        clear_untrusted_proxy_headers=False,
        _dispatcher=dispatcher,  # waitress's own hook for the task queue (create_server)
        _server=_server_with_json_errors,
    )
