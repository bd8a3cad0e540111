"""A database read with a deadline, for `/api/health`: one read at a time, on its own thread.

A read on a connection whose peer went silent waits for the TCP user timeout, and a pool
that hands out a second such connection doubles it; a router asks for health in 2 s.
The read runs on the probe's thread and a caller waits at most `budget` seconds for it;
callers that arrive while a read is under way share it. So a silent database costs one
thread, not one per health check, and health answers 503 in time however the read ends.

    >>> probe = BoundedProbe(lambda: 1, budget=1.8)
    >>> probe()
    1
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import psycopg_pool

T = TypeVar("T")


class ProbeTimeout(psycopg_pool.PoolTimeout):
    """The database did not answer within the probe's budget (a PoolTimeout: it was not served)."""


class BoundedProbe(Generic[T]):
    """Calls `read` on one thread of its own; each caller waits at most `budget` seconds."""

    def __init__(self, read: Callable[[], T], budget: float):
        self.read = read
        self.budget = budget
        self._lock = threading.Lock()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="probe")
        self._current: concurrent.futures.Future[T] | None = None

    def __call__(self) -> T:
        with self._lock:
            if self._current is None or self._current.done():
                self._current = self._executor.submit(self.read)
            current = self._current
        try:
            return current.result(timeout=self.budget)
        except concurrent.futures.TimeoutError:
            raise ProbeTimeout(f"the database did not answer within {self.budget:g} s") from None
