"""clock: defers the periodic jobs on their schedules, nothing else. Procfile: `clock: python clock.py`.

Any number of clocks may run: procrastinate's periodic-defers table lets each tick be
deferred once. Schedules come from CLEANUP_SCHEDULE, RETRY_STALLED_SCHEDULE,
PRUNE_SCHEDULE, ROLLUP_SCHEDULE and SALT_SCHEDULE (cron, optionally with a 6th seconds field);
send_reports hourly when REPORT_SCHEDULE is not off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time

from procrastinate.periodic import PeriodicDeferrer

import jobs
from tally import config, db, logs

RETRY_DELAY_SECONDS = 1.0
REPORT_CHECK_SCHEDULE = "7 * * * *"

logger = logging.getLogger("tally.clock")


def register_schedule(app, settings: config.Config) -> None:
    """Register the periodic jobs; only the clock does, so workers never defer them."""
    schedule = {
        jobs.page_views.rollup_page_views: settings.rollup_schedule,
        jobs.page_views.cleanup_old_page_views: settings.cleanup_schedule,
        jobs.queue_upkeep.retry_stalled_jobs: settings.retry_stalled_schedule,
        jobs.queue_upkeep.prune_finished_jobs: settings.prune_schedule,
        jobs.visitor_salts.rotate_visitor_salts: settings.salt_schedule,
    }
    if settings.report_schedule != "off":
        # Hourly: the first tick after the local Monday (or 1st) in TIMEZONE sends the period
        # that ended; later ticks find it sent (jobs/reports.py), and pick up temporary failures.
        schedule[jobs.reports.send_reports] = REPORT_CHECK_SCHEDULE
    for task, cron in schedule.items():
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
                "could not defer periodic jobs, retrying in %.0f s: %r", RETRY_DELAY_SECONDS, error
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
