"""The owner's jobs pages: GET /jobs (queues, schedules, jobs by filter) and GET /jobs/<id>.

Their forms post to the API in tally/web/routes_jobs.py.
"""

from __future__ import annotations

import bottle
import psycopg_pool

import jobs
from jobs.schedule import periodic_tasks
from tally.config import Config
from tally.web import jobs_page
from tally.web.auth import Auth
from tally.web.error_page import page_errors
from tally.web.params import parse_before, parse_job_filters, refuse_unknown
from tally.web.responses import database_unavailable, json_error
from tally.web.sessions import sent_from_own_pages


def _notice() -> str | None:
    """The outcome of the action that led here (tally/web/routes_jobs.py: its 303 carries it).
    Only on the way back from the page's own form: else any link could print its own words on
    the owner's page as Tally's ("ADMIN_TOKEN rotated: log in again at https://...")."""
    notice = bottle.request.query.getunicode("notice")
    if not notice:
        return None
    fetched_from = bottle.request.get_header("Sec-Fetch-Site")
    # A browser without Fetch metadata sends the jobs page as Referer (Referrer-Policy: same-origin).
    from_own_page = fetched_from == "same-origin" if fetched_from else sent_from_own_pages()
    return notice[:300] if from_own_page else None


def register(app: bottle.Bottle, config: Config, pool: psycopg_pool.ConnectionPool, auth: Auth) -> None:
    """Add the jobs pages to `app`."""
    periodic = {task.name: cron for task, cron in periodic_tasks(config).items()}
    # jobs.app, as the schedules are: app.py hands this module no app of its own, and a task that
    # never ran (rebuild_rollups, send_reports without a schedule) is still one to filter by.
    defined = jobs_page.own_task_names(jobs.app)

    @app.get("/jobs")
    @auth.owner_only
    @page_errors
    @database_unavailable
    def show_jobs_page():
        """Render the jobs page: queues with pause and resume, schedules with run now, jobs by filter."""
        query = bottle.request.query
        page = jobs_page.render_list(
            pool,
            parse_job_filters(query, also=frozenset({"notice"})),
            parse_before(query),
            periodic=periodic,
            defined=defined,
            zone=config.timezone,
            csrf=auth.csrf_token() or "",
            notice=_notice(),
        )
        for name, value in jobs_page.HEADERS.items():
            bottle.response.set_header(name, value)
        return page

    @app.get("/jobs/<job_id:int>")
    @auth.owner_only
    @page_errors
    @database_unavailable
    def show_job_page(job_id: int):
        """Render a job's page: arguments, attempts, events, worker, errors with tracebacks."""
        refuse_unknown(bottle.request.query, {"notice"}, "a job's page takes only its forms' notice")
        page = jobs_page.render_job(
            pool, job_id, zone=config.timezone, csrf=auth.csrf_token() or "", notice=_notice()
        )
        if page is None:
            return json_error(404, f"There is no job {job_id}.")
        for name, value in jobs_page.HEADERS.items():
            bottle.response.set_header(name, value)
        return page
