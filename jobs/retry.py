"""Upkeep jobs retried when their attempt lost the database (a restart, a failover).

Without a retry strategy procrastinate fails a job for good on any error: a rollup running
while PostgreSQL restarted stayed `failed` (in `recent_failures` and `tally_jobs`, paging
someone after every restart), though the next run would do it. These tasks do what is left
to do each run, so an attempt cut off by the database is tried again; any other error fails
the job as before.
"""

from __future__ import annotations

import dataclasses

import psycopg
import psycopg_pool
from procrastinate import BaseRetryStrategy
from procrastinate.exceptions import ConnectorException
from procrastinate.jobs import Job
from procrastinate.retry import RetryDecision

# SQLSTATE classes of a connection the server ended or refused: 08 (connection exception),
# 57P (operator intervention: admin_shutdown, crash_shutdown, cannot_connect_now).
LOST_CLASSES = ("08", "57P")


def lost_database(error: BaseException) -> bool:
    """Whether `error` (or the one procrastinate's ConnectorException wraps) is the database
    going away, not something the job did: a broken connection has no SQLSTATE of its own."""
    cause = error.__cause__ if isinstance(error, ConnectorException) else error
    if isinstance(cause, psycopg.InterfaceError | psycopg_pool.PoolTimeout):
        return True
    if isinstance(cause, psycopg.OperationalError):
        return cause.sqlstate is None or cause.sqlstate.startswith(LOST_CLASSES)
    return False


@dataclasses.dataclass(frozen=True)
class DatabaseLostRetry(BaseRetryStrategy):
    """Tries again, after 5, then 10 s, a job whose attempt lost the database, up to
    `max_attempts` in all; fails it on any other error."""

    max_attempts: int = 3
    wait_step_seconds: int = 5

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        if job.attempts >= self.max_attempts or not lost_database(exception):
            return None
        return RetryDecision(retry_in={"seconds": self.wait_step_seconds * (job.attempts + 1)})


DATABASE_LOST_RETRY = DatabaseLostRetry()
