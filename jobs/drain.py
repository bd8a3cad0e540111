"""A drain with a bound, for every worker `jobs.app` runs: `python worker.py`'s and the
procrastinate CLI's (`procrastinate --app=jobs.app worker`, through `TallyApp._worker`). Both
also check the schema before they start, end a one-shot run (`--one-shot`, wait=False) only
once the jobs they took are done, and sweep for the jobs of dead workers.

procrastinate's drain gives running jobs `shutdown_graceful_timeout`, aborts the ones still
running, then waits for them with no bound: a sync job inside one long statement (Python cannot
stop a thread) held the CLI's worker past Heroku's 30 s, and, as procrastinate stops
heart-beating while a worker drains, `retry_stalled_jobs` re-queued that job after
STALLED_AFTER_SECONDS and it ran twice at once (the draining worker then wrote its stale
outcome over the new attempt's). Here the wait after the abort lasts DRAIN_ABORT_SECONDS;
what still runs is left as a SIGKILL would leave it (README, "Worker settings").

procrastinate ends a one-shot run through the same drain: once it finds no job it gave the jobs
it had taken `shutdown_graceful_timeout` (Tally's WORKER_GRACEFUL_SECONDS, meant for SIGTERM)
and aborted them, so a `--one-shot` run to clear a backlog left a long cleanup half done and
exited 0. Here a one-shot run waits for them (each bounded by its time limit,
jobs/time_limit.py, its heartbeat and abort polling going on), and a SIGTERM meanwhile drains as
usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from procrastinate import signals
from procrastinate.job_context import AbortReason
from procrastinate.worker import Worker

from jobs.liveness import LIVENESS_SWEEP_SECONDS, requeue_jobs_of_lost_sessions
from tally import config, queue_connector

DRAIN_ABORT_SECONDS = config.DRAIN_ABORT_SECONDS

logger = logging.getLogger("tally.worker")


class BoundedDrainWorker(Worker):
    """procrastinate's worker, whose drain ends DRAIN_ABORT_SECONDS after it aborts its jobs."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Set by stop() (SIGTERM, SIGINT, a caller): procrastinate's own stop event is also set
        # by a one-shot run that found no job, which is no reason to abort anything.
        self._drain_requested = asyncio.Event()

    def stop(self) -> None:
        if self._loop is not None and self._from_other_thread():  # procrastinate's stop() does likewise
            self._loop.call_soon_threadsafe(self._drain_requested.set)
        else:
            self._drain_requested.set()
        super().stop()

    def _from_other_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is not self._loop
        except RuntimeError:
            return True

    async def run(self) -> None:
        # Before procrastinate's first query (its prune runs Tally's version, which reads
        # tally_worker_sessions): a database the release step has not migrated is said so,
        # not "relation ... does not exist".
        await queue_connector.check_migrated(self.app.connector)
        self._drain_requested.clear()
        await super().run()

    def _start_side_tasks(self) -> list[asyncio.Task]:
        # Every worker sweeps, the CLI's too: a killed worker's job runs again within seconds
        # wherever another worker runs (jobs/liveness.py), not at the clock's next minute.
        sweep = asyncio.create_task(self._sweep_lost_sessions(), name="sweep_lost_sessions")
        return [*super()._start_side_tasks(), sweep]

    async def _sweep_lost_sessions(self) -> None:
        said = False  # one line per outage, not one a sweep
        while True:
            await asyncio.sleep(LIVENESS_SWEEP_SECONDS)
            try:
                if await requeue_jobs_of_lost_sessions(self.app.connector):
                    self._new_job_event.set()  # run them here at once if there is room
                said = False
            except Exception as error:
                # A sweep is an errand: a failed one (a lock timeout) must not stop the CLI's
                # worker, which no one restarts; a lost database stops it through its listener.
                if not said:
                    logger.warning("sweep for the jobs of dead workers failed: %s", error)
                said = True

    async def _shutdown(self, side_tasks: list[asyncio.Task]) -> None:
        if not self.wait and self._running_jobs and not self._drain_requested.is_set():
            await self._finish_taken_jobs()
        await super()._shutdown(side_tasks)

    async def _finish_taken_jobs(self) -> None:
        """The end of a one-shot run: wait for the jobs it took, side tasks still running (the
        heartbeat: a silent worker's job is re-queued), until they end or a stop comes (then
        procrastinate's drain, with its grace and Tally's bound)."""
        logger.info(
            "no more jobs: waiting for the %d running to finish (each within its time limit)",
            len(self._running_jobs),
        )
        # procrastinate took its signal handlers away with its fetch loop; a SIGTERM now drains.
        handlers = signals.on_stop(self.stop) if self.install_signal_handlers else contextlib.nullcontext()
        with handlers:
            done = asyncio.ensure_future(asyncio.wait(list(self._running_jobs)))
            stop = asyncio.ensure_future(self._drain_requested.wait())
            await asyncio.wait({done, stop}, return_when=asyncio.FIRST_COMPLETED)
            for waiter in (done, stop):
                waiter.cancel()

    async def _process_job(self, context) -> None:
        try:
            await super()._process_job(context)
        finally:
            if not self.listen_notify:
                # A job that ended may have held the lock of the next one (a second cleanup, a
                # rollup deferred while one ran): with LISTEN no NOTIFY says so (the connector
                # wakes the worker then), and polling (behind a transaction pooler) left each such
                # job to the next poll: one POLL_INTERVAL_SECONDS apart. Look again now.
                self._new_job_event.set()

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
