"""The periodic tasks and their cron lines: what clock.py registers and the jobs page lists.

>>> {task.name: cron for task, cron in periodic_tasks(settings).items()}  # doctest: +SKIP
{'rollup_page_views': '* * * * *', 'cleanup_old_page_views': '0 * * * *', ...}
"""

from __future__ import annotations

import procrastinate

from jobs import page_views, queue_upkeep, visitor_salts
from tally import config


def periodic_tasks(settings: config.Config) -> dict[procrastinate.tasks.Task, str]:
    """Each periodic task with its cron line (UTC; a 6th field is seconds)."""
    return {
        page_views.rollup_page_views: settings.rollup_schedule,
        page_views.cleanup_old_page_views: settings.cleanup_schedule,
        queue_upkeep.retry_stalled_jobs: settings.retry_stalled_schedule,
        queue_upkeep.prune_finished_jobs: settings.prune_schedule,
        visitor_salts.rotate_visitor_salts: settings.salt_schedule,
    }
