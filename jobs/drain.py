"""A drain with a bound, for every worker `jobs.app` runs: `python worker.py`'s and the
procrastinate CLI's (`procrastinate --app=jobs.app worker`, through `TallyApp._worker`).

procrastinate's drain gives running jobs `shutdown_graceful_timeout`, aborts the ones still
running, then waits for them with no bound: a sync job inside one long statement (Python cannot
stop a thread) held the CLI's worker past Heroku's 30 s, and, as procrastinate stops
heart-beating while a worker drains, `retry_stalled_jobs` re-queued that job after
STALLED_AFTER_SECONDS and it ran twice at once (the draining worker then wrote its stale
outcome over the new attempt's). Here the wait after the abort lasts DRAIN_ABORT_SECONDS;
what still runs is left as a SIGKILL would leave it (README, "Worker settings").
"""

from __future__ import annotations

import asyncio
import logging
import os

from procrastinate.job_context import AbortReason
from procrastinate.worker import Worker

from tally import config, queue_connector

DRAIN_ABORT_SECONDS = config.DRAIN_ABORT_SECONDS

logger = logging.getLogger("tally.worker")


class BoundedDrainWorker(Worker):
    """procrastinate's worker, whose drain ends DRAIN_ABORT_SECONDS after it aborts its jobs."""

    async def _abort_running_jobs(self) -> None:
        """procrastinate's abort at the end of a drain, with a bound on the wait that follows."""
        for task, context in list(self._running_jobs.items()):
            self._abort_job(task, context, AbortReason.SHUTDOWN)
        if self._running_jobs:
            await asyncio.wait(list(self._running_jobs), timeout=DRAIN_ABORT_SECONDS)
        if self._running_jobs:
            self._leave_running_jobs_to_the_sweep()

    def _leave_running_jobs_to_the_sweep(self) -> None:
        """Exit now, leaving the jobs that did not stop as a SIGKILL would: `doing`, under this
        worker's id (its lock, if it holds one, freed by the exit); the sweep, or the heartbeat
        rule for a worker without the lock, re-queues them (jobs/liveness.py)."""
        left = ", ".join(f"{c.job.id} ({c.job.task_name})" for c in self._running_jobs.values())
        logger.warning(
            "job(s) %s still running %g s after their abort: exiting, left to the sweep (they run again"
            " on another worker)",
            left,
            DRAIN_ABORT_SECONDS,
        )
        if isinstance(self.app.connector, queue_connector.CatchingUpConnector):
            self.app.connector.fenced = True  # their outcomes are no longer this worker's to write
        logging.shutdown()  # the line above reaches the log
        # Not SystemExit: the interpreter would wait for the job's thread at exit.
        os._exit(0)
