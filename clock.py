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
from typing import Any

import procrastinate
from procrastinate.periodic import PeriodicDeferrer

import jobs
from jobs.schedule import periodic_tasks
from tally import config, db, logs
from tally.db import QUERIES

RETRY_DELAY_SECONDS = 1.0

logger = logging.getLogger("tally.clock")


def register_schedule(app: procrastinate.App, settings: config.Config) -> None:
    """Register the periodic jobs; only the clock does, so workers never defer them."""
    for task, cron in periodic_tasks(settings).items():
        app.periodic(cron=cron, periodic_id="clock")(task)


async def resume_after_last_defers(deferrer: PeriodicDeferrer, connector: Any, now: float) -> None:
    """Start each task's schedule from its last deferred tick (any clock's, in the database), so
    that the latest tick a stopped clock missed is deferred now.

    procrastinate's deferrer starts with no memory and skips a tick older than 10 minutes: a
    clock back after a longer stop waited for each task's next tick (a day for the prune, an
    hour for the others) and sent no report for a week that ended while it was away. Only the
    latest missed tick is deferred: every task does all that is due when it runs
    (docs/ARCHITECTURE.md, "A clock that was stopped"). A task never deferred before starts
    as procrastinate starts it."""
    tasks = deferrer.registry.periodic_tasks
    rows = await connector.execute_query_all_async(
        QUERIES["last_periodic_defers"], tasks=sorted({name for name, _ in tasks})
    )
    last = {row["task"]: row["defer_timestamp"] for row in rows}
    for key, periodic_task in tasks.items():
        if key in deferrer.last_defers or last.get(key[0]) is None:
            continue
        due = round(periodic_task.croniter.get_prev(ret_type=float, start_time=now))
        # The deferrer defers every tick after the one it remembers: from just before `due`, that one.
        deferrer.last_defers[key] = max(last[key[0]], due - 1)
        if last[key[0]] < due and now - due > deferrer.max_delay:  # one procrastinate would skip
            logger.info(
                "%s: its tick of %s came while no clock ran (last deferred %s): deferring it now",
                key[0],
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(due)),
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(last[key[0]])),
            )


async def defer_forever(deferrer: PeriodicDeferrer, stopping: asyncio.Event) -> None:
    """procrastinate's deferrer loop, kept alive across database outages."""
    resumed = False
    while not stopping.is_set():
        now = time.time()
        before = dict(deferrer.last_defers)
        try:
            if not resumed:
                await resume_after_last_defers(deferrer, jobs.app.connector, now)
                resumed = True
            await deferrer.defer_jobs(jobs_to_defer=deferrer.get_previous_tasks(at=now))
            pause = deferrer.get_next_tick(at=now) + 0.5
        except Exception as error:
            # Try these ticks again; the periodic-defers table skips any already made.
            deferrer.last_defers = before
            resumed = bool(before)
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
