"""Jobs over the page_views table: the rollup that keeps stats fast, and cleanup."""

from __future__ import annotations

import datetime
import logging
import time

from procrastinate import JobContext, RetryStrategy
from procrastinate.exceptions import JobAborted

from jobs import app, settings
from tally.db import QUERIES

logger = logging.getLogger("jobs.page_views")

# Retried on failure and after a shutdown abort; a retry resumes where it stopped
# because each batch commits on its own.
CLEANUP_RETRY = RetryStrategy(max_attempts=10, wait=5)
# After each batch, rest a tenth of the time it took: live traffic gets the CPU and
# disk back between deletes (ingest p99 during cleanup, docs/BENCHMARKS.md).
CLEANUP_REST_FRACTION = 0.1
# Rollups outlive raw views (RETENTION_DAYS) so the dashboard can show a year.
ROLLUP_RETENTION_DAYS = 400


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@app.task(name="rollup_page_views", pass_context=True, lock="rollup_page_views")
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
    """Delete page views older than RETENTION_DAYS in bounded batches; return how many."""
    connector = context.app.connector.get_sync_connector()
    # Only rolled-up views are deleted (stats must not lose them): fold first. Views of
    # transactions still running then are left for the next cleanup.
    connector.execute_query_one(QUERIES["rollup_page_views"])
    folded = connector.execute_query_one(QUERIES["rollup_state"])
    cutoff = utc_now() - datetime.timedelta(days=settings.retention_days)
    removed_total = 0
    while True:
        # Checked between batches: a draining worker stops us here, never mid-batch.
        if context.should_abort():
            logger.info("cleanup stopped after removing %d page views; it will resume", removed_total)
            raise JobAborted("cleanup_old_page_views aborted between batches")
        started = time.monotonic()
        row = connector.execute_query_one(
            QUERIES["delete_expired_page_views_batch"],
            cutoff=cutoff,
            batch_size=settings.cleanup_batch_size,
            watermark=folded["watermark"],
            in_progress=folded["in_progress"],
        )
        removed_total += row["removed"]
        logger.debug("batch removed %d page views", row["removed"])
        if row["removed"] < settings.cleanup_batch_size:
            break
        time.sleep((time.monotonic() - started) * CLEANUP_REST_FRACTION)
    logger.info(
        "cleanup removed %d page views older than %d days (before %s)",
        removed_total,
        settings.retention_days,
        cutoff.isoformat(timespec="seconds"),
    )
    return removed_total
