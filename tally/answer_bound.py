"""Connections that wait a bounded time for each answer, on the client's side.

statement_timeout and lock_timeout are the server's to enforce, and TCP gives up only on bytes
left unacknowledged: a server that hangs with its kernel still up (SIGSTOP, a stalled disk, a
frozen container or VM host) acknowledges every byte and answers none, and every wait lasted as
long as it hung. tally/db.py gives each process's pools a subclass with its own `answer_limit`.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.connection import _WAIT_INTERVAL


class AnswerTimedOut(psycopg.OperationalError):
    """The server took a request and stopped answering (hung with its kernel up): what was sent
    may or may not have been done, and the connection is closed."""


def _stopped_answering(conn: psycopg.Connection | psycopg.AsyncConnection, limit: float) -> AnswerTimedOut:
    conn.pgconn.finish()  # its state unknown: the pool discards it
    return AnswerTimedOut(f"the database stopped answering (nothing for {limit:g} s)")


class AnswerBoundConnection(psycopg.Connection):
    """A connection that waits at most `answer_limit` seconds for any one answer, then closes and
    raises AnswerTimedOut (an OperationalError: a 503). Overrides psycopg's `Connection.wait`
    (3.3; tests/test_hung_server.py holds it)."""

    answer_limit: float

    def wait(self, gen: Any, interval: float = _WAIT_INTERVAL, timeout: float | None = None) -> Any:
        try:
            return super().wait(gen, interval, self.answer_limit if timeout is None else timeout)
        except psycopg.errors._WaitTimeout:
            if timeout is not None:
                raise  # the caller's own bound (notifies): its to handle
            raise _stopped_answering(self, self.answer_limit) from None


class AsyncAnswerBoundConnection(psycopg.AsyncConnection):
    """AnswerBoundConnection's bound for an async connection (the clock's)."""

    answer_limit: float

    async def wait(self, gen: Any, interval: float = _WAIT_INTERVAL, timeout: float | None = None) -> Any:
        try:
            return await super().wait(gen, interval, self.answer_limit if timeout is None else timeout)
        except psycopg.errors._WaitTimeout:
            if timeout is not None:
                raise  # the caller's own bound (notifies): its to handle
            raise _stopped_answering(self, self.answer_limit) from None
