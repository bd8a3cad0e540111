"""clock: defers the periodic jobs on their schedules, nothing else. Procfile: `clock: python clock.py`.

Any number of clocks may run: procrastinate's periodic-defers table lets each tick be
deferred once. The schedule, and the loop that defers it (resuming after a stop from the last
defers in the database), are jobs/schedule.py's: CLEANUP_SCHEDULE, RETRY_STALLED_SCHEDULE,
PRUNE_SCHEDULE, ROLLUP_SCHEDULE and SALT_SCHEDULE (cron, optionally with a 6th seconds field),
maintain_partitions hourly, and send_reports hourly when REPORT_SCHEDULE is not off.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from procrastinate.periodic import PeriodicDeferrer

import jobs
from jobs.schedule import defer_forever, register_schedule
from tally import config, db, logs

logger = logging.getLogger("tally.clock")


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
    logs.log_start(
        settings,
        "clock.py",
        cleanup=repr(settings.cleanup_schedule),
        retry_stalled=repr(settings.retry_stalled_schedule),
        prune=repr(settings.prune_schedule),
        reports=settings.report_schedule,
    )
    register_schedule(jobs.app, settings)  # after the start line: procrastinate logs each task it registers
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
