"""The periodic tasks and their cron lines: what clock.py registers and the jobs page lists.

>>> {task.name: cron for task, cron in periodic_tasks(settings).items()}  # doctest: +SKIP
{'rollup_page_views': '* * * * *', 'cleanup_old_page_views': '0 * * * *', ...}
"""

from __future__ import annotations

import procrastinate

from jobs import page_views, partitions, queue_upkeep, reports, visitor_salts
from tally import config

# Hourly: the first tick after the local Monday (or 1st) in TIMEZONE sends the period that
# ended; later ticks find it sent (jobs/reports.py), and pick up temporary failures.
REPORT_CHECK_SCHEDULE = "7 * * * *"
# Hourly: days are made a week ahead, so a missed hour (or day) costs nothing.
PARTITION_SCHEDULE = "3 * * * *"


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
