"""A time limit on every job attempt: JOB_TIMEOUT_SECONDS, or the task's own `@time_limit`.

Past its limit an attempt is aborted through procrastinate's own machinery (the worker's
`_abort_job`, as a user's abort request is): an async task is cancelled where it awaits,
a sync task sees `context.should_abort()` turn true and stops at its next check (a sync
task that never checks cannot be stopped: Python cannot kill a thread). The attempt then
ends with `JobTimedOut`, which the error middleware records and the task's retry
strategy retries like any error. The limit shows in the worker's log, in the job's
events (`deferred_for_retry`, or `failed` without retries) and in `/api/jobs/<id>`'s
`last_error`.

    >>> @app.task(name="long_report")        # doctest: +SKIP
    ... @time_limit(3600)
    ... def long_report(): ...
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from procrastinate import JobContext
from procrastinate.exceptions import JobAborted
from procrastinate.job_context import AbortReason
from procrastinate.middleware import AsyncCallNext, WorkerMiddleware
from procrastinate.worker import Worker

logger = logging.getLogger("jobs.time_limit")

F = TypeVar("F", bound=Callable[..., Any])
_ATTRIBUTE = "tally_time_limit_seconds"


class JobTimedOut(Exception):
    """The attempt ran past its time limit and was aborted; its retry strategy decides what next."""


def time_limit(seconds: float | None) -> Callable[[F], F]:
    """Declare a task's own limit per attempt, in place of JOB_TIMEOUT_SECONDS (put under @app.task);
    None: no limit, for a task whose attempt cut short keeps nothing and would only start over."""

    def declare(func: F) -> F:
        setattr(func, _ATTRIBUTE, seconds)
        return func

    return declare


def limit_for(context: JobContext, default: float) -> float | None:
    """The limit of one attempt of the context's job: the task's own, else `default`."""
    task = context.app.tasks.get(context.job.task_name)
    return getattr(task.func, _ATTRIBUTE, default) if task is not None else default


def enforce_time_limit(default_seconds: float) -> WorkerMiddleware:
    """A worker middleware that aborts an attempt past its limit and raises `JobTimedOut`."""

    async def enforce(call_next: AsyncCallNext, context: JobContext, worker: Worker) -> Any:
        limit = limit_for(context, default_seconds)
        if limit is None:
            return await call_next()
        attempt = asyncio.current_task()
        assert attempt is not None
        timed_out = False

        def abort() -> None:
            nonlocal timed_out
            timed_out = True
            logger.warning(
                "job %s (%s) passed its time limit of %g s: aborting it",
                context.job.id,
                context.job.task_name,
                limit,
            )
            worker._abort_job(attempt, context, AbortReason.USER_REQUEST)

        timer = asyncio.get_running_loop().call_later(limit, abort)
        try:
            return await call_next()
        except (JobAborted, asyncio.CancelledError):
            if not timed_out:
                raise
            if attempt.cancelling():
                attempt.uncancel()  # our own cancellation, turned into an error below
            raise JobTimedOut(f"the attempt passed its time limit of {limit:g} s and was aborted") from None
        finally:
            timer.cancel()

    return enforce
