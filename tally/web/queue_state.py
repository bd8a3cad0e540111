"""What the queue looks like: job counts, failures, one job, workers, clock and rollup lag.

Read by the web process for /api/jobs, /api/health, /metrics and the dashboard.
"""

from __future__ import annotations

import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tally.db import QUERIES

JOB_STATUSES = ("todo", "doing", "succeeded", "failed", "cancelled", "aborted")
RECENT_FAILURES = 10
VIEWS_WAITING_LOCK_TIMEOUT_MS = 300


def _all(conn: psycopg.Connection, name: str, **params: Any) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(QUERIES[name], params)
        return cur.fetchall()


def _one(conn: psycopg.Connection, name: str, **params: Any) -> dict[str, Any] | None:
    rows = _all(conn, name, **params)
    return rows[0] if rows else None


def _json_time(value: datetime.datetime | None) -> str | None:
    return None if value is None else value.astimezone(datetime.UTC).isoformat()


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def queue_summary(conn: psycopg.Connection) -> dict[str, Any]:
    """Counts by status and by task, the oldest waiting job's age, the last failures."""
    by_status = dict.fromkeys(JOB_STATUSES, 0)
    by_task: dict[str, dict[str, int]] = {}
    for row in _all(conn, "job_counts"):
        by_status[row["status"]] = by_status.get(row["status"], 0) + row["jobs"]
        by_task.setdefault(row["task_name"], {})[row["status"]] = row["jobs"]
    failures = [
        {
            "id": row["id"],
            "task": row["task_name"],
            "attempts": row["attempts"],
            "queue": row["queue_name"],
            "failed_at": _json_time(row["failed_at"]),
            "error": row["error"],
        }
        for row in _all(conn, "recent_failures", limit=RECENT_FAILURES)
    ]
    return {
        "by_status": by_status,
        "by_task": by_task,
        "oldest_waiting_age_seconds": _seconds(oldest_waiting_age(conn)),
        "recent_failures": failures,
    }


def oldest_waiting_age(conn: psycopg.Connection) -> float | None:
    """Seconds the oldest job ready to run has waited, or None when none waits."""
    oldest = _one(conn, "oldest_waiting_job")
    return oldest["age"] if oldest else None


def job_detail(conn: psycopg.Connection, job_id: int) -> dict[str, Any] | None:
    """One job with its timestamps, or None."""
    row = _one(conn, "job_by_id", job_id=job_id)
    if row is None:
        return None
    for field in ("scheduled_at", "deferred_at", "started_at", "finished_at"):
        row[field] = _json_time(row[field])
    blocker = row["waits_behind"]
    if blocker is not None and blocker["scheduled_at"] is not None:  # json_build_object's text form
        blocker["scheduled_at"] = _json_time(datetime.datetime.fromisoformat(blocker["scheduled_at"]))
    return row


def process_state(conn: psycopg.Connection, stalled_after: float) -> dict[str, Any]:
    """Live workers, their youngest heartbeat, the last periodic defer's age, the rollup lag
    and the paused queues."""
    workers = _one(conn, "worker_heartbeats", stalled_after=stalled_after)
    clock = _one(conn, "last_periodic_defer")
    return {
        "workers_alive": workers["alive"],
        "worker_heartbeat_age_seconds": _seconds(workers["youngest_heartbeat_age"]),
        "clock_last_defer_age_seconds": _seconds(clock["age"]),
        **rollup_lag(conn),
        "paused_queues": [
            {"queue": row["queue"], "paused_at": _json_time(row["paused_at"])}
            for row in _all(conn, "paused_queues")
        ],
    }


def writable(conn: psycopg.Connection) -> bool:
    """Whether DATABASE_URL's role may store views there (see the query)."""
    return bool(_one(conn, "database_writable")["writable"])


def rollup_lag(conn: psycopg.Connection) -> dict[str, Any]:
    """Seconds since the last rollup (None before the first) and the views it has yet to fold."""
    state = _one(conn, "rollup_state")
    try:
        with conn.transaction():
            # Health must answer in 2 s even while someone holds page_views locked.
            conn.execute(QUERIES["local_lock_timeout"], {"milliseconds": VIEWS_WAITING_LOCK_TIMEOUT_MS})
            # Two statements, not a join: the watermark must reach the planner as a value.
            waiting = _one(conn, "views_waiting", **state)
    except psycopg.errors.LockNotAvailable:
        waiting = {"views": None}  # page_views is locked (a migration, LOCK TABLE): unknown now
    age = None
    if state["rolled_up_at"] is not None:
        age = (state["now"] - state["rolled_up_at"]).total_seconds()
    return {"rollup_age_seconds": _seconds(age), "rollup_views_waiting": waiting["views"]}
