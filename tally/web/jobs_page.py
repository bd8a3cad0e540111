"""The owner's jobs page (GET /jobs) and a job's page (GET /jobs/<id>): server-rendered HTML.

The list is newest first, PAGE_SIZE jobs a page, each page after the last id of the one
before (keyset paging: `?before=<id>`, no OFFSET, so page 1,000 costs what page 1 costs);
migrations/0011_jobs_page.sql holds the indexes that keep each filter fast with a million
finished jobs. The forms post to the JSON API with the session's CSRF token and `next`,
the page to come back to (tally/web/routes_jobs.py).
"""

from __future__ import annotations

import datetime
import json
import urllib.parse
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bottle
import croniter
import procrastinate
import psycopg
import psycopg_pool
from psycopg.rows import dict_row

from tally.db import QUERIES
from tally.web import queue_state
from tally.web.job_actions import QUEUE_NAME, paused_queues
from tally.web.params import JOB_STATUSES
from tally.web.sessions import PAGE_HEADERS

PAGE_SIZE = 50
HEADERS = PAGE_HEADERS
_TEMPLATES = Path(__file__).parent
LIST_TEMPLATE = bottle.SimpleTemplate((_TEMPLATES / "jobs.tpl").read_text(encoding="utf-8"))
JOB_TEMPLATE = bottle.SimpleTemplate((_TEMPLATES / "job.tpl").read_text(encoding="utf-8"))


def _rows(conn: psycopg.Connection, name: str, **params: Any) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(QUERIES[name], params)
        return cur.fetchall()


def time_shown(zone: str) -> Callable[[datetime.datetime | None], str]:
    """How the pages write a time: in the owner's zone, to the second; '' for None."""
    tz = zoneinfo.ZoneInfo(zone)

    def when(value: datetime.datetime | None) -> str:
        return "" if value is None else value.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S %Z")

    return when


def own_task_names(app: procrastinate.App) -> frozenset[str]:
    """The tasks Tally defines on `app`, as POST /api/jobs/<task> takes them: procrastinate's
    builtin one is registered under a dotted name and an alias of its own."""
    return frozenset(name for name in app.tasks if "." not in name and ":" not in name)


def page_address(filters: dict[str, str | None], before: int | None = None) -> str:
    """/jobs with these filters (and page), as a link or a form's `next`."""
    parameters = {name: value for name, value in filters.items() if value}
    if before is not None:
        parameters["before"] = str(before)
    return "/jobs" + ("?" + urllib.parse.urlencode(parameters) if parameters else "")


def schedules(
    conn: psycopg.Connection, periodic: dict[str, str], zone: str, now: datetime.datetime
) -> list[dict[str, Any]]:
    """Each periodic task: its cron line, next run and last deferral in `zone`, that job's status,
    and its newest job whoever deferred it (a "Run now" is no deferral of the schedule's)."""
    tz = zoneinfo.ZoneInfo(zone)
    last = {row["task"]: row for row in _rows(conn, "last_periodic_defers", tasks=list(periodic))}
    newest = {row["task"]: row for row in _rows(conn, "last_jobs_of_tasks", tasks=list(periodic))}
    result = []
    for task, cron in sorted(periodic.items()):
        # procrastinate reads cron lines in UTC (its deferrer passes epoch seconds to croniter).
        next_run = croniter.croniter(cron, now.astimezone(datetime.UTC)).get_next(datetime.datetime)
        deferral = last.get(task)
        deferred_at = None
        if deferral and deferral["defer_timestamp"] is not None:
            deferred_at = datetime.datetime.fromtimestamp(deferral["defer_timestamp"], tz)
        result.append(
            {
                "task": task,
                "cron": cron,
                "next_run": next_run.astimezone(tz),
                "last_deferred_at": deferred_at,
                "last_job_id": deferral["job_id"] if deferral else None,
                "last_status": deferral["status"] if deferral else None,
                "newest": newest.get(task),
            }
        )
    return result


def render_list(
    pool: psycopg_pool.ConnectionPool,
    filters: dict[str, str | None],
    before: int | None,
    *,
    periodic: dict[str, str],
    defined: frozenset[str],
    zone: str,
    csrf: str | None,
    notice: str | None,
) -> str:
    """The jobs page: the queues, the schedules, and one page of jobs of `filters`; its task
    filter offers the `defined` tasks, and those of older releases that still have jobs."""
    with pool.connection() as conn:
        jobs = _rows(conn, "list_jobs", **filters, before=before, limit=PAGE_SIZE + 1)
        tasks = [row["name"] for row in _rows(conn, "job_task_names")]
        paused = {row["queue"]: row["paused_at"] for row in paused_queues(conn)}
        queues = sorted({row["name"] for row in _rows(conn, "job_queue_names")} | set(paused))
        now = datetime.datetime.now(datetime.UTC)
        scheduled = schedules(conn, periodic, zone, now)
    more = len(jobs) > PAGE_SIZE
    jobs = jobs[:PAGE_SIZE]
    return LIST_TEMPLATE.render(
        jobs=jobs,
        filters=filters,
        statuses=JOB_STATUSES,
        tasks=sorted(set(tasks) | defined),
        queues=queues,
        paused=paused,
        schedules=scheduled,
        zone=zone,
        csrf=csrf,
        notice=notice,
        here=page_address(filters, before),
        next_page=page_address(filters, jobs[-1]["id"]) if more else None,
        first_page=page_address(filters) if before is not None else None,
        quote=urllib.parse.quote,
        when=time_shown(zone),
        pausable=QUEUE_NAME.fullmatch,  # what POST /api/queues/<name>/pause takes
    )


def reasons_it_waits(job: dict[str, Any], when: Callable[[datetime.datetime | None], str]) -> list[tuple]:
    """Why a waiting job is not running, as the page says it: (sentence,) or (sentence, the id
    of the job it waits behind, the rest of the sentence)."""
    if job["status"] != "todo":
        return []
    reasons: list[tuple] = []
    if job["queue_paused"]:
        reasons.append((f"its queue {job['queue']} is paused",))
    blocker = job["waits_behind"]
    if blocker is not None:
        why = "running" if blocker["status"] == "doing" else "waiting"
        if blocker["status"] == "todo" and blocker["scheduled_at"]:
            at = datetime.datetime.fromisoformat(blocker["scheduled_at"])
            if at > datetime.datetime.now(datetime.UTC):
                why = f"scheduled for {when(at)}"
        reasons.append(
            (
                "behind",
                blocker["id"],
                f" ({blocker['task']}, {why}): jobs of one lock run one at a time, in order",
            )
        )
    return reasons


def render_job(
    pool: psycopg_pool.ConnectionPool, job_id: int, *, zone: str, csrf: str | None, notice: str | None
) -> str | None:
    """A job's page: arguments, attempts, every event, its worker, its errors; None if no such job."""
    with pool.connection() as conn:
        job = queue_state.job_detail(conn, job_id)
        if job is None:
            return None
        events = _rows(conn, "job_events", job_id=job_id)
        errors = _rows(conn, "job_errors", job_id=job_id)
    when = time_shown(zone)
    scheduled = job["scheduled_at"]  # the API's ISO text; the page writes times in the owner's zone
    return JOB_TEMPLATE.render(
        job=job,
        scheduled=when(datetime.datetime.fromisoformat(scheduled)) if scheduled else "",
        waits=reasons_it_waits(job, when),
        args=json.dumps(job["args"], indent=2, sort_keys=True, default=str),
        events=events,
        errors=errors,
        csrf=csrf,
        notice=notice,
        here=f"/jobs/{job_id}",
        zone=zone,
        when=when,
    )
