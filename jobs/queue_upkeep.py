"""Jobs that keep procrastinate's own tables healthy."""

from __future__ import annotations

import datetime
import logging

from procrastinate import JobContext

from jobs import app, settings
from jobs.liveness import requeue_jobs_of_lost_sessions
from jobs.retry import DATABASE_LOST_RETRY
from jobs.time_limit import time_limit
from tally.db import QUERIES

logger = logging.getLogger("jobs.queue_upkeep")

PRUNE_BATCH_SIZE = 1000


@app.task(name="retry_stalled_jobs", pass_context=True, retry=DATABASE_LOST_RETRY)
@time_limit(60)  # deferred every minute: an attempt never runs into the next one's
async def retry_stalled_jobs(context: JobContext, timestamp: int | None = None) -> int:
    """Re-queue the jobs of dead workers (session ended, or silent for STALLED_AFTER_SECONDS)."""
    manager = context.app.job_manager
    ended = await context.app.connector.execute_query_one_async(
        QUERIES["end_sessions_of_silent_workers"], seconds=settings.stalled_after_seconds
    )
    if ended["ended"]:
        logger.warning(
            "ended the session of %d worker(s) silent for %g s: their jobs run again once their locks"
            " stay free",
            ended["ended"],
            settings.stalled_after_seconds,
        )
    retried = await requeue_jobs_of_lost_sessions(context.app.connector)
    stalled = await manager.get_stalled_jobs(seconds_since_heartbeat=settings.stalled_after_seconds)
    for job in stalled:
        row = await context.app.connector.execute_query_one_async(
            QUERIES["retry_stalled_job"], job_id=job.id, worker_id=job.worker_id
        )
        if row["retried"]:
            retried += 1
            logger.warning("re-queued stalled job %s (%s, worker %s)", job.id, job.task_name, job.worker_id)
        elif row["aborted"]:
            logger.warning(
                "stalled job %s (%s) aborted, as asked before its worker went silent", job.id, job.task_name
            )
    pruned = await manager.prune_stalled_workers(settings.stalled_after_seconds)
    logger.info("retry_stalled_jobs: %d job(s) re-queued, %d silent worker(s) removed", retried, len(pruned))
    return retried


@app.task(name="prune_finished_jobs", pass_context=True, retry=DATABASE_LOST_RETRY)
async def prune_finished_jobs(context: JobContext, timestamp: int | None = None) -> int:
    """Delete finished jobs and their events older than JOB_RETENTION_HOURS, in batches."""
    connector = context.app.connector
    cutoff = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=settings.job_retention_hours)
    removed_total = 0
    while True:
        row = await connector.execute_query_one_async(
            QUERIES["delete_finished_jobs_batch"], cutoff=cutoff, batch_size=PRUNE_BATCH_SIZE
        )
        removed_total += row["removed"]
        if row["removed"] < PRUNE_BATCH_SIZE:
            break
    logger.info(
        "prune_finished_jobs removed %d job(s) finished before %s",
        removed_total,
        cutoff.isoformat(timespec="seconds"),
    )
    return removed_total
