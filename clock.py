"""clock: defers the periodic jobs on their schedules, nothing else. Procfile: `clock: python clock.py`.

Any number of clocks may run: procrastinate's periodic-defers table lets each tick be
deferred once. The schedule is jobs/schedule.py's: CLEANUP_SCHEDULE, RETRY_STALLED_SCHEDULE,
PRUNE_SCHEDULE, ROLLUP_SCHEDULE and SALT_SCHEDULE (cron, optionally with a 6th seconds field),
maintain_partitions hourly, and send_reports hourly when REPORT_SCHEDULE is not off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time

import procrastinate
from procrastinate.periodic import PeriodicDeferrer

import jobs
from jobs.schedule import periodic_tasks
from tally import config, db, logs

RETRY_DELAY_SECONDS = 1.0

logger = logging.getLogger("tally.clock")


def register_schedule(app: procrastinate.App, settings: config.Config) -> None:
    """Register the periodic jobs; only the clock does, so workers never defer them."""
    for task, cron in periodic_tasks(settings).items():
        app.periodic(cron=cron, periodic_id="clock")(task)


async def defer_forever(deferrer: PeriodicDeferrer, stopping: asyncio.Event) -> None:
    """procrastinate's deferrer loop, kept alive across database outages."""
    while not stopping.is_set():
        now = time.time()
        before = dict(deferrer.last_defers)
        try:
            await deferrer.defer_jobs(jobs_to_defer=deferrer.get_previous_tasks(at=now))
            pause = deferrer.get_next_tick(at=now) + 0.5
        except Exception as error:
            # Try these ticks again; the periodic-defers table skips any already made.
            deferrer.last_defers = before
            logger.warning(
                "could not defer periodic jobs, retrying in %.0f s: %s",
                RETRY_DELAY_SECONDS,
                logs.database_error(error),
            )
            pause = RETRY_DELAY_SECONDS
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), max(pause, 0.0))


async def run(settings: config.Config) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    pool = db.clock_pool(settings)
    await pool.open(wait=False)
    async with jobs.app.open_async(pool):
        deferrer = PeriodicDeferrer(registry=jobs.app.periodic_registry, **jobs.app.periodic_defaults)
        await defer_forever(deferrer, stopping)
    await pool.close()
    logger.info("clock stopped")


def main() -> None:
    settings = config.load_or_exit("clock")
    logs.setup_logging(settings)
    register_schedule(jobs.app, settings)
    logs.log_start(
        settings,
        "clock.py",
        cleanup=repr(settings.cleanup_schedule),
        retry_stalled=repr(settings.retry_stalled_schedule),
        prune=repr(settings.prune_schedule),
        reports=settings.report_schedule,
    )
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
