"""Jobs over the page_views table: the rollup that keeps stats fast, and cleanup (retention)."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import time
from typing import Any

from procrastinate import BaseRetryStrategy, JobContext
from procrastinate.exceptions import JobAborted
from procrastinate.jobs import Job
from procrastinate.retry import RetryDecision

from jobs import app, partitions, settings
from jobs.middleware import WrongArguments
from jobs.retry import DATABASE_LOST_RETRY
from jobs.time_limit import JobTimedOut, time_limit
from tally.db import QUERIES

logger = logging.getLogger("jobs.page_views")


@dataclasses.dataclass(frozen=True)
class CleanupRetry(BaseRetryStrategy):
    """Retries a cleanup; a retry resumes where it stopped because each batch commits on its own.

    An attempt cut by its time limit made progress: it resumes at once, while the job
    has had fewer than `max_timed_out` attempts. After any other error (a lock held past
    the worker's lock_timeout, a lost database) it is retried with a growing wait (5,
    10, 15 ... s) while it has had fewer than `max_attempts`. A shutdown abort is retried
    by procrastinate itself; arguments the task does not take, never.
    """

    max_attempts: int = 10
    wait_step_seconds: int = 5
    max_timed_out: int = 200

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        if isinstance(exception, WrongArguments):  # the same on every attempt
            return None
        if isinstance(exception, JobTimedOut):
            return RetryDecision(retry_in={"seconds": 0}) if job.attempts < self.max_timed_out else None
        if job.attempts >= self.max_attempts:
            return None
        return RetryDecision(retry_in={"seconds": self.wait_step_seconds * (job.attempts + 1)})


CLEANUP_RETRY = CleanupRetry()
# After each batch, rest a tenth of the time it took: live traffic gets the CPU and
# disk back between deletes (ingest p99 during cleanup, docs/BENCHMARKS.md).
CLEANUP_REST_FRACTION = 0.1
# Rollups outlive raw views (RETENTION_DAYS) so the dashboard can show a year.
ROLLUP_RETENTION_DAYS = 400


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@app.task(name="rollup_page_views", pass_context=True, lock="rollup_page_views", retry=DATABASE_LOST_RETRY)
# No time limit: the rollup folds the whole backlog in one statement, and an attempt cut short
# keeps nothing. Under JOB_TIMEOUT_SECONDS a backlog that takes longer to fold (a backfill of a
# few million views, a worker down for hours: ~7,000 views/s with visits) was cut and begun
# again every minute, for good: unfiltered stats answered 503 and cleanup failed on its lock.
# A draining worker still aborts it (rolled back, folded again by the next one).
@time_limit(None)
async def rollup_page_views(context: JobContext, timestamp: int | None = None) -> int:
    """Fold committed views into the hourly and per-path rollups; return how many."""
    connector = context.app.connector
    row = await connector.execute_query_one_async(QUERIES["rollup_page_views"])
    cutoff_day = (utc_now() - datetime.timedelta(days=ROLLUP_RETENTION_DAYS)).date()
    old = await connector.execute_query_one_async(QUERIES["delete_old_rollups"], cutoff_day=cutoff_day)
    logger.info(
        "rollup folded %d page views; %d rollup rows past %d days removed",
        row["views"],
        old["removed"],
        ROLLUP_RETENTION_DAYS,
    )
    return row["views"]


@app.task(
    name="cleanup_old_page_views",
    pass_context=True,
    retry=CLEANUP_RETRY,
    lock="cleanup_old_page_views",  # one cleanup at a time; more would only contend
)
def cleanup_old_page_views(context: JobContext, timestamp: int | None = None) -> int:
    """Drop the days of page views older than RETENTION_DAYS, delete what else is that old (views
    in the default partition, events) in bounded batches; return how many page views."""
    connector = context.app.connector.get_sync_connector()
    cutoff = utc_now() - datetime.timedelta(days=settings.retention_days)
    # Only rolled-up views are removed (stats must not lose them). Whole days first
    # (jobs/partitions.py), each checked against the last rollup's state: a day a month old was
    # folded long ago, so it goes before this job's own fold, and a day that still held views
    # not folded (a late backfill) is tried again after it.
    last_fold = connector.execute_query_one(QUERIES["rollup_state"])
    folds: list[dict] = []  # this job's own fold, made once: for a day tried again, or below

    def fold_once() -> dict:
        if not folds:
            folds.append(fold(connector))
        return folds[0]

    views = partitions.drop_expired_partitions(
        connector, cutoff, last_fold, context.should_abort, refold=fold_once
    )
    # Rows only where a partition is not a day's (the default one), and events, in batches, of
    # what this fold holds. Views of transactions still running then are left for the next cleanup.
    folded = fold_once()
    views += delete_in_batches(context, "delete_expired_page_views_batch", "page views", cutoff, folded)
    events = delete_in_batches(context, "delete_expired_events_batch", "events", cutoff, folded)
    logger.info(
        "cleanup removed %d page views and %d events older than %d days (before %s)",
        views,
        events,
        settings.retention_days,
        cutoff.isoformat(timespec="seconds"),
    )
    return views


def fold(connector: Any) -> dict:
    """Fold the views and events committed so far into the rollups; the rollup's state after."""
    connector.execute_query_one(QUERIES["rollup_page_views"])
    return connector.execute_query_one(QUERIES["rollup_state"])


def delete_in_batches(
    context: JobContext, query: str, what: str, cutoff: datetime.datetime, folded: dict
) -> int:
    """Run a bounded delete of rolled-up rows older than `cutoff` until it finds no more; stop
    between batches when the worker is asked to."""
    connector = context.app.connector.get_sync_connector()
    removed_total = 0
    while True:
        # Checked between batches: a draining worker stops us here, never mid-batch.
        if context.should_abort():
            logger.info("cleanup stopped after removing %d %s; it will resume", removed_total, what)
            raise JobAborted("cleanup_old_page_views aborted between batches")
        started = time.monotonic()
        row = connector.execute_query_one(
            QUERIES[query],
            cutoff=cutoff,
            batch_size=settings.cleanup_batch_size,
            watermark=folded["watermark"],
            in_progress=folded["in_progress"],
        )
        removed_total += row["removed"]
        logger.debug("batch removed %d %s", row["removed"], what)
        if row["removed"] < settings.cleanup_batch_size:
            return removed_total
        time.sleep((time.monotonic() - started) * CLEANUP_REST_FRACTION)
