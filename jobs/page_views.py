"""Jobs over the page_views table."""

from __future__ import annotations

import datetime
import logging

from procrastinate import JobContext, RetryStrategy
from procrastinate.exceptions import JobAborted

from jobs import app, settings
from tally.db import QUERIES

logger = logging.getLogger("jobs.page_views")

# Retried on failure and after a shutdown abort; a retry resumes where it stopped
# because each batch commits on its own.
CLEANUP_RETRY = RetryStrategy(max_attempts=10, wait=5)


@app.task(
    name="cleanup_old_page_views",
    pass_context=True,
    retry=CLEANUP_RETRY,
    lock="cleanup_old_page_views",  # one cleanup at a time; more would only contend
)
def cleanup_old_page_views(context: JobContext, timestamp: int | None = None) -> int:
    """Delete page views older than RETENTION_DAYS in bounded batches; return how many."""
    connector = context.app.connector.get_sync_connector()
    cutoff = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(
        days=settings.retention_days
    )
    removed_total = 0
    while True:
        # Checked between batches: a draining worker stops us here, never mid-batch.
        if context.should_abort():
            logger.info("cleanup stopped after removing %d page views; it will resume", removed_total)
            raise JobAborted("cleanup_old_page_views aborted between batches")
        row = connector.execute_query_one(
            QUERIES["delete_expired_page_views_batch"],
            cutoff=cutoff,
            batch_size=settings.cleanup_batch_size,
        )
        removed_total += row["removed"]
        logger.debug("batch removed %d page views", row["removed"])
        if row["removed"] < settings.cleanup_batch_size:
            break
    logger.info(
        "cleanup removed %d page views older than %d days (before %s)",
        removed_total,
        settings.retention_days,
        cutoff.isoformat(timespec="seconds"),
    )
    return removed_total
