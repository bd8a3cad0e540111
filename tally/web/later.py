"""Answers held until the request's write commits, with no thread waiting for the commit.

A view's answer (201) may go out only once the view is committed, and under load that commit
is a group's INSERT (tally/web/view_writer.py). A request thread that waits for it cost the
web's one core more than the rest of the request: it blocks, is woken, and takes the GIL back
from the threads that ran meanwhile, 14 context switches a request where constant JSON makes 8
(docs/ARCHITECTURE.md, "Answers after the commit"). Instead the request's thread queues its
views, leaves its answer here and serves the next request; whichever thread ran the INSERT
sends the answers of its group.

Between the server (tally/web/serving.py puts a `Later` in every request's environ) and the app:

- The app's writer calls `later.park()` as it queues the views and returns at once; the app
  answers as usual (201), and `hold_answers` keeps that answer instead of sending it.
- Once the INSERT has ended, the writer calls `later.stored(error)`: with no error the held
  answer is sent, in the writer's thread; with one, the request runs through the app again on
  one of the server's threads, where the write raises that error at once and the app answers
  as it answers any failed write (a 503 that says nothing was stored).
- An app called without a `Later` (tests through the WSGI app, another WSGI server) writes
  and waits for the commit as before. A request that writes nothing passes through untouched.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

# The environ key of a request's Later.
LATER = "tally.later"


class Parked(BaseException):
    """Raised through the server's task when the answer is held: the server then leaves the request
    where it is (unanswered, first of its connection) until `send` is called. Not an Exception, so
    that no handler on the way turns it into a 500."""


class Later:
    """One request's answer to send once its write has ended.

    `send()` sends the held answer now, in the caller's thread; `again()` has one of the server's
    threads run the request once more (the failed write's answer). Both are the server's."""

    __slots__ = ("_again", "_arrivals", "_send", "body", "environ", "error", "headers", "parked", "status")

    def __init__(self, send: Callable[[], None], again: Callable[[], None]):
        self._send = send
        self._again = again
        # Two things must happen before the answer goes: the app has built it, and the write has
        # ended, in either order (a fast INSERT may end before the app has returned). The second
        # to arrive sends it. `next` on a count is one step under the GIL.
        self._arrivals = itertools.count()
        self.parked = False
        self.environ: WSGIEnvironment | None = None
        self.status = ""
        self.headers: list[tuple[str, str]] = []
        self.body = b""
        self.error: BaseException | None = None

    def park(self) -> None:
        """The writer has queued this request's views: hold its answer. One write a request: a
        second would end apart from the first, and the answer waits for one."""
        if self.parked:
            raise RuntimeError("a request may hold its answer for one write only")
        self.parked = True

    def stored(self, error: BaseException | None) -> None:
        """The write has ended (`error` None: committed); the answer goes once the app has built it."""
        self.error = error
        if self._arrive():
            self._answer_now()

    def _arrive(self) -> bool:
        return next(self._arrivals) == 1

    def _answer_now(self) -> None:
        if self.error is None:
            self._send()
        else:
            self._again()


def hold_answers(app: WSGIApplication) -> WSGIApplication:
    """`app`, whose answer to a request that parked its write is held until the write has ended."""

    def held_or_passed(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        later: Later | None = environ.get(LATER)
        if later is None:
            return app(environ, start_response)
        if later.environ is not None:  # the server sends the held answer now
            return _answer(app, later, start_response)

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[..., Any]:
            if not later.parked:
                return start_response(status, headers, exc_info)
            later.status, later.headers = status, headers
            return _unused_write

        body = app(environ, start)
        if not later.parked:
            return body
        try:
            later.body = b"".join(body)
        finally:
            if hasattr(body, "close"):
                body.close()
        later.environ = environ
        if later._arrive():  # the write ended while the app built its answer: answer it here
            return _answer(app, later, start_response)
        raise Parked

    return held_or_passed


def _answer(app: WSGIApplication, later: Later, start_response: StartResponse) -> Iterable[bytes]:
    if later.error is None:
        start_response(later.status, later.headers)
        return [later.body]
    # Once more through the app, whose write now raises the error: the answer any failed write
    # gets. The first run's environ holds the body as the app read it.
    assert later.environ is not None
    return app(later.environ, start_response)


def _unused_write(data: bytes) -> None:
    raise RuntimeError("a held answer is written by its body, not by write()")
