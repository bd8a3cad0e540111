"""Routes of the job queue: the summary, one job, defer a task, retry a job."""

from __future__ import annotations

import datetime

import bottle
import procrastinate
import psycopg_pool

from tally.web import queue_state
from tally.web.auth import Auth
from tally.web.responses import database_unavailable, json_error, json_response


def register(
    app: bottle.Bottle, pool: psycopg_pool.ConnectionPool, auth: Auth, jobs_app: procrastinate.App
) -> None:
    """Add the job routes to `app`."""
    deferrable = sorted(name for name in jobs_app.tasks if "." not in name and ":" not in name)

    @app.get("/api/jobs")
    @auth.owner_only
    @database_unavailable
    def show_queue():
        """Summarise the queue: counts by status and task, oldest waiting job, last failures."""
        with pool.connection() as conn:
            return json_response(200, queue_state.queue_summary(conn))

    @app.get("/api/jobs/<job_id:int>")
    @auth.owner_only
    @database_unavailable
    def show_job(job_id: int):
        """Show one job: task, status, attempts, queue and timestamps."""
        with pool.connection() as conn:
            job = queue_state.job_detail(conn, job_id)
        if job is None:
            return json_error(404, f"There is no job {job_id}.")
        return json_response(200, job)

    @app.get("/api/jobs/<job_id>")
    @auth.owner_only
    def show_job_not_a_number(job_id: str):
        """Job ids are whole numbers: anything else names no job."""
        return json_error(404, f"There is no job {job_id!r}: job ids are whole numbers.")

    @app.post("/api/jobs/<job_id:int>/retry")
    @auth.admin_token_only
    @database_unavailable
    def retry_failed_job(job_id: int):
        """Queue a failed job again (admin)."""
        with pool.connection() as conn:
            job = queue_state.job_detail(conn, job_id)
        if job is None:
            return json_error(404, f"There is no job {job_id}.")
        if job["status"] != "failed":
            return json_error(409, f"Job {job_id} is {job['status']}; only failed jobs can be retried.")
        jobs_app.job_manager.retry_job_by_id(job_id, retry_at=datetime.datetime.now(datetime.UTC))
        return json_response(202, {"job_id": job_id, "status": "todo"})

    @app.post("/api/jobs/<task>")
    @auth.admin_token_only
    @database_unavailable
    def defer_job(task: str):
        """Defer a job of a task by name, with no arguments (admin)."""
        if task not in deferrable:
            return json_error(404, f"There is no task {task!r}; known tasks: {', '.join(deferrable)}.")
        job_id = jobs_app.tasks[task].defer()
        return json_response(202, {"job_id": job_id, "task": task})
