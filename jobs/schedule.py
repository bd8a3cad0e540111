"""The periodic tasks and their cron lines: what clock.py registers and the jobs page lists.

>>> {task.name: cron for task, cron in periodic_tasks(settings).items()}  # doctest: +SKIP
{'rollup_page_views': '* * * * *', 'cleanup_old_page_views': '0 * * * *', ...}
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import procrastinate
from procrastinate.periodic import PeriodicDeferrer

import jobs
from jobs import page_views, partitions, queue_upkeep, reports, visitor_salts
from tally import config, logs
from tally.db import QUERIES

logger = logging.getLogger("tally.clock")

# Hourly: the first tick after the local Monday (or 1st) in TIMEZONE sends the period that
# ended; later ticks find it sent (jobs/reports.py), and pick up temporary failures.
REPORT_CHECK_SCHEDULE = "7 * * * *"
# Hourly: days are made a week ahead, so a missed hour (or day) costs nothing.
PARTITION_SCHEDULE = "3 * * * *"
# After a failed defer (the database away), try again this soon.
RETRY_DELAY_SECONDS = 1.0


def periodic_tasks(settings: config.Config) -> dict[procrastinate.tasks.Task, str]:
    """Each periodic task with its cron line (UTC; a 6th field is seconds)."""
    schedule = {
        page_views.rollup_page_views: settings.rollup_schedule,
        page_views.cleanup_old_page_views: settings.cleanup_schedule,
        partitions.maintain_partitions: PARTITION_SCHEDULE,
        queue_upkeep.retry_stalled_jobs: settings.retry_stalled_schedule,
        queue_upkeep.prune_finished_jobs: settings.prune_schedule,
        visitor_salts.rotate_visitor_salts: settings.salt_schedule,
    }
    if settings.report_schedule != "off":
        schedule[reports.send_reports] = REPORT_CHECK_SCHEDULE
    return schedule


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
            # Until the next tick after `now`, counted from the end of the defer: a defer that
            # took seconds (a lock wait, a database that answered late) made every later tick
            # late by as much, and one that ran past the next tick slept a whole interval more.
            pause = now + deferrer.get_next_tick(at=now) + 0.5 - time.time()
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
