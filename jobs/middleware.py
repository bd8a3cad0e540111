"""Worker middleware: keep why a job failed, which procrastinate does not store; refuse a job
whose arguments its task does not take before it runs; end `aborted` a job whose abort was
asked for, whatever error its run ended on."""

from __future__ import annotations

import inspect
import logging
import traceback
from typing import Any

from procrastinate import JobContext
from procrastinate.exceptions import JobAborted
from procrastinate.middleware import AsyncCallNext
from procrastinate.worker import Worker

from tally.db import QUERIES

logger = logging.getLogger("jobs.middleware")

MAX_ERROR_LENGTH = 2000
MAX_TRACEBACK_LENGTH = 20_000  # the end of a longer one is kept: the frame that raised


async def record_job_errors(call_next: AsyncCallNext, context: JobContext, worker: Worker) -> Any:
    """Run the job; when it raises, store the error and its traceback in tally_job_errors and re-raise."""
    try:
        return await call_next()
    except Exception as error:
        text = f"{type(error).__name__}: {error}".strip()
        if error.__cause__ is not None:  # procrastinate wraps database errors: "Database error."
            text += f" ({type(error.__cause__).__name__}: {error.__cause__})".strip()
        text = text[:MAX_ERROR_LENGTH]
        trace = "".join(traceback.format_exception(error))[-MAX_TRACEBACK_LENGTH:]
        try:
            await context.app.connector.execute_query_async(
                QUERIES["record_job_error"],
                job_id=context.job.id,
                attempt=context.job.attempts + 1,
                error=text,
                traceback=trace,
                worker=context.worker_name,
            )
        except Exception as storing_error:
            logger.warning("could not record the error of job %s: %r", context.job.id, storing_error)
        raise


class WrongArguments(TypeError):
    """The job was deferred with arguments its task does not take: no attempt can succeed, and
    the retry strategies give it up at once (a typo in `procrastinate defer ... '{"bogus": 1}'`
    retried cleanup ten times, holding its lock against every other cleanup)."""


async def check_arguments(call_next: AsyncCallNext, context: JobContext, worker: Worker) -> Any:
    """Run the job if its task takes its arguments; else raise WrongArguments saying which."""
    task = context.task
    given = [context] if task.pass_context else []
    try:
        inspect.signature(task.func).bind(*given, **context.job.task_kwargs)
    except TypeError as error:
        raise WrongArguments(
            f"{task.name} cannot take the arguments {context.job.task_kwargs}: {error}"
        ) from None
    return await call_next()


async def end_aborted_when_asked(call_next: AsyncCallNext, context: JobContext, worker: Worker) -> Any:
    """Run the job; if it raises once its owner asked it to abort, end it `aborted`.

    A job asked to abort that fails before it looks (a cleanup waiting out its lock_timeout)
    went to its retry strategy, and procrastinate's retry of a job whose `abort_requested` is
    set marks it `failed` without counting the attempt: the owner saw "failed, attempts 0" for
    the job they had stopped. Aborted, procrastinate counts the attempt and retries nothing; the
    error stays, as the abort's cause (record_job_errors keeps both). The row, not the worker's
    abort reason, tells: the time limit aborts with the same reason as the owner, and a drain's
    abort is retried as it was."""
    try:
        return await call_next()
    except JobAborted:
        raise
    except Exception as error:
        try:
            row = await context.app.connector.execute_query_one_async(
                QUERIES["job_abort_requested"], job_id=context.job.id
            )
            asked = row["asked"]
        except Exception:  # the database is gone: the error and its retry as they were
            asked = False
        if not asked:
            raise
        raise JobAborted("its owner asked it to abort, and it ended on an error") from error
