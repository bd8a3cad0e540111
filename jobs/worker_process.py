"""The worker process's machinery (worker.py runs it): procrastinate's worker with its side
tasks watched and its session lock held, started over after a lost database, drained on SIGTERM.

SIGTERM (or Ctrl-C) drains: running jobs get WORKER_GRACEFUL_SECONDS to finish, then are
aborted, and DRAIN_ABORT_SECONDS later the process is gone (what still runs is left to the
sweep). When the database goes away the worker starts over once it is back, without a process
restart. Each worker holds a session lock for its life, so a killed one's jobs run again
within seconds (jobs/liveness.py); every job attempt has a time limit (jobs/time_limit.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

import procrastinate
from procrastinate.job_context import AbortReason

import jobs
from jobs.drain import BoundedDrainWorker
from jobs.liveness import SESSION_CHECK_SECONDS, TakenForDead, WorkerSession
from tally import config, db, logs, queue_connector

RESTART_DELAY_SECONDS = 1.0
# A database without Tally's schema (the release step not run on it) is tried again after 2 s,
# then 4, 8 ... up to a minute apart: one line each, and a worker that starts within a minute
# of `python -m migrations`.
NOT_MIGRATED_FIRST_DELAY_SECONDS = 2.0
NOT_MIGRATED_MAX_DELAY_SECONDS = 60.0
# How long one start waits for its first connection before it gives up and starts over:
# a fresh pool then tries at once, so the worker is back within seconds of the database.
OPEN_WAIT_SECONDS = 4.0
# After WORKER_GRACEFUL_SECONDS a drain aborts the jobs still running, and gives them this long
# to stop: an async job is cancelled where it awaits (its statement cancelled on the server) in
# milliseconds, a sync one stops at its next `should_abort()` check. One that has not stopped by
# then (a sync job inside one long statement: Python cannot stop a thread) is left to the
# liveness sweep: the process exits without writing its outcome, its session lock goes with it,
# the server ends its statement (client_connection_check_interval), and another worker runs it
# again. So a worker is gone WORKER_GRACEFUL_SECONDS + this (20 + 5 s) after SIGTERM at most,
# inside Heroku's 30 s; procrastinate's own drain waited for every aborted job with no bound.
# The bound itself is jobs/drain.py's, for the CLI's worker too.
DRAIN_ABORT_SECONDS = config.DRAIN_ABORT_SECONDS

logger = logging.getLogger("tally.worker")


class SupervisedWorker(BoundedDrainWorker):
    """procrastinate's worker, with its side tasks (LISTEN, heartbeat) kept under watch.

    procrastinate stops the worker when a side task fails, but its monitor returns as
    soon as any side task ends, and the periodic deferrer ends at once in a process
    with no schedule (ours: only the clock registers one). Then a lost LISTEN
    connection would go unnoticed. Keeping the deferrer pending keeps the monitor on.

    It also holds its session lock (jobs/liveness.py) from before its first job until
    `release_session()`, after the drain, taking it again whenever its session ends (the
    drain too: a database restart stops a worker, whose jobs run on); like every worker of
    `jobs.app` it sweeps for the jobs of dead workers (jobs/drain.py).
    """

    session: WorkerSession | None = None
    keeper: asyncio.Task | None = None

    async def _periodic_deferrer(self) -> None:
        await asyncio.Event().wait()

    async def _run_loop(self) -> None:
        if jobs.settings.worker_session_liveness:
            try:
                self.session = await WorkerSession.hold(jobs.settings, self.worker_id)
            except Exception:
                # procrastinate registered this worker already: a row with a fresh heartbeat
                # would count as a live worker (with every slot taken, one per restart).
                with contextlib.suppress(Exception):
                    await self.app.job_manager.unregister_worker(self.worker_id)
                raise
            self.keeper = asyncio.create_task(self._keep_session(), name="keep_session")
        await super()._run_loop()

    async def _keep_session(self) -> None:
        assert self.session is not None
        said = False  # one line per outage, not one a second
        while True:
            await asyncio.sleep(SESSION_CHECK_SECONDS)
            try:
                await self.session.keep()
                said = False
            except TakenForDead as error:
                # Its running jobs were re-queued and run elsewhere: stop them here, and write
                # none of their outcomes over the new attempts'.
                logger.error("%s; aborting its running jobs and stopping", error)
                if isinstance(self.app.connector, queue_connector.CatchingUpConnector):
                    self.app.connector.fenced = True
                for task, context in list(self._running_jobs.items()):
                    self._abort_job(task, context, AbortReason.SHUTDOWN)
                self.stop()
                return
            except Exception as error:  # the database is away: try again at the next check
                if not said:
                    logger.warning("worker %s cannot take its lock again yet: %s", self.worker_id, error)
                said = True

    async def release_session(self) -> None:
        if self.keeper is not None:
            self.keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.keeper
            self.keeper = None
        if self.session is not None:
            await self.session.release()
            self.session = None


async def run_until_stopped(app: procrastinate.App, options: dict[str, Any]) -> None:
    """Run workers one after another until SIGTERM/SIGINT, restarting after a lost database."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    not_migrated = 0  # starts in a row that found the schema missing
    while not stopping.is_set():
        worker = SupervisedWorker(app=app, **options, install_signal_handlers=False)
        attempt = asyncio.create_task(open_and_run(app, worker))
        stop_requested = asyncio.create_task(stopping.wait())
        await asyncio.wait({attempt, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
        stop_requested.cancel()
        if stopping.is_set():
            worker.stop()  # drains running jobs; before the worker runs, nothing to drain
            if worker.worker_id is None:
                attempt.cancel()
        missing_schema: queue_connector.NotMigrated | None = None
        try:
            await attempt
        except asyncio.CancelledError:
            pass
        except queue_connector.NotMigrated as error:
            missing_schema = error
        except Exception as error:
            logger.error("worker stopped on an error: %s", logs.database_error(error))
        if stopping.is_set():
            break
        if missing_schema is None:
            not_migrated, delay = 0, RESTART_DELAY_SECONDS
            logger.warning("worker restarting in %.0f s (database unreachable?)", delay)
        else:
            # Not an outage: nothing changes until someone runs the release step. One line a
            # try, the tries further apart (twice a second, two lines each, it said "database
            # unreachable?" for ever).
            delay = min(NOT_MIGRATED_FIRST_DELAY_SECONDS * 2**not_migrated, NOT_MIGRATED_MAX_DELAY_SECONDS)
            not_migrated += 1
            logger.error("worker not started: %s; trying again in %.0f s", missing_schema, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), delay)
    logger.info("worker drained and stopped")


async def open_and_run(app: procrastinate.App, worker: SupervisedWorker) -> None:
    # A fresh connector and pool per run: procrastinate keeps a pool it was handed (or
    # failed to open) for good, and its own open would wait 30 s for a lost database.
    pool = db.worker_pool(jobs.settings)
    try:
        with app.replace_connector(queue_connector.procrastinate_connector(jobs.settings)):
            await pool.open(wait=True, timeout=OPEN_WAIT_SECONDS)
            async with app.open_async(pool):
                await worker.run()
    finally:
        await worker.release_session()  # only now: a draining worker is alive
        await pool.close(timeout=1.0)
