"""The web process's Bottle app: routes top to bottom, each with one docstring line.

>>> pool = db.web_pool(settings); pool.open()                  # doctest: +SKIP
>>> waitress.serve(build_app(settings, pool, jobs.app), port=5000)  # doctest: +SKIP
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import re
from collections.abc import Callable
from typing import Any

import bottle
import procrastinate
import psycopg
import psycopg_pool

from tally.config import Config, is_time_zone
from tally.sites import DEFAULT_SITE, parse_site
from tally.web import dashboard, export, queue_state
from tally.web import reports as report_pages
from tally.web.auth import Auth, Reader
from tally.web.collect import CORS_HEADERS, PREFLIGHT_HEADERS, Collector, Refused
from tally.web.metrics import Metrics
from tally.web.pageviews import MAX_BODY_BYTES, InvalidPageViews, parse_page_views
from tally.web.probe import BoundedProbe
from tally.web.stats import MAX_DAYS, StatsReader
from tally.web.tracker import Tracker
from tally.web.view_writer import ViewWriter

logger = logging.getLogger("tally.web")

# What the database's absence looks like from a request: connect, pool wait, lost socket.
DATABASE_DOWN = (psycopg.OperationalError, psycopg_pool.PoolTimeout, psycopg.InterfaceError)
# What a database without Tally's schema looks like: the release step has not run.
NOT_MIGRATED = (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedFunction)
DAYS_PARAMETER = re.compile(r"[0-9]{1,3}")
DEFAULT_DAYS = 30
# Health answers within this, whatever the database does (a router asks for it in 2 s).
HEALTH_BUDGET_SECONDS = 1.8


def json_response(status: int, body: object, **headers: str) -> bottle.HTTPResponse:
    return bottle.HTTPResponse(
        status=status,
        body=json.dumps(body, default=str),
        headers={"Content-Type": "application/json", "Cache-Control": "no-store", **headers},
    )


def json_error(status: int, sentence: str, **headers: str) -> bottle.HTTPResponse:
    return json_response(status, {"error": sentence}, **headers)


def database_unavailable(route: Callable) -> Callable:
    """Answer 503 (not 500) when the database cannot be reached."""

    @functools.wraps(route)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return route(*args, **kwargs)
        except DATABASE_DOWN as error:
            logger.warning(
                "%s %s: database unreachable: %s", bottle.request.method, bottle.request.path, error
            )
            return json_error(503, "The database is unreachable; try again shortly.")
        except NOT_MIGRATED as error:
            logger.error("%s %s: schema missing: %s", bottle.request.method, bottle.request.path, error)
            return json_error(503, "The database has no Tally schema yet: run `python -m migrations`.")
        except psycopg.errors.InvalidParameterValue as error:
            # The only values Tally passes that PostgreSQL may refuse: a zone name that Python's
            # zone database knows and the server's does not (they are updated apart).
            logger.warning("%s %s: %s", bottle.request.method, bottle.request.path, error)
            return json_error(400, "This time zone is unknown to the database; try another name for it.")

    return wrapper


def body_too_large() -> bottle.HTTPResponse:
    return json_error(413, f"The body is larger than {MAX_BODY_BYTES} bytes.")


def parse_days(query: bottle.FormsDict) -> int:
    """The `days` query parameter: a whole number from 1 to 366, 30 when absent."""
    values = query.getall("days")
    if not values:
        return DEFAULT_DAYS
    if len(values) > 1 or not DAYS_PARAMETER.fullmatch(values[0]) or not 1 <= int(values[0]) <= MAX_DAYS:
        raise json_error(400, f"days must be a whole number from 1 to {MAX_DAYS}.")
    return int(values[0])


def parse_time_zone(query: bottle.FormsDict, default: str) -> str:
    """The `tz` query parameter: an IANA zone name, TIMEZONE's when absent."""
    values = query.getall("tz")
    if not values or values == [""]:
        return default
    if len(values) > 1 or not is_time_zone(values[0]):
        raise json_error(400, "tz must be one IANA time zone such as Europe/Paris or America/New_York.")
    return values[0]


def parse_site_parameter(query: bottle.FormsDict) -> str | None:
    """The `site` query parameter: a host name, or None (every site) when absent or empty."""
    values = query.getall("site")
    if not values or values == [""]:
        return None
    site = parse_site(values[0]) if len(values) == 1 else None
    if site is None:
        raise json_error(400, "site must be one host name such as example.com, without a port.")
    return site


def build_app(
    config: Config, pool: psycopg_pool.ConnectionPool, jobs_app: procrastinate.App
) -> bottle.Bottle:
    """Wire the routes to `pool` and `jobs_app`; the caller serves the returned WSGI app."""
    app = bottle.Bottle()
    jobs_app.open(pool)  # deferring from web uses the same pool, synchronously

    def request_rollup() -> None:
        """Ask a worker to fold the stats tail now; one such job waits at a time."""
        try:
            jobs_app.tasks["rollup_page_views"].configure(queueing_lock="rollup_page_views").defer()
        except procrastinate.exceptions.AlreadyEnqueued:
            pass  # one is already waiting: it will fold these views too
        except (procrastinate.exceptions.ConnectorException, *DATABASE_DOWN) as error:
            logger.warning("could not ask for a rollup: %s", error)

    stats = StatsReader(pool, config.retention_days, request_rollup)
    metrics = Metrics(pool, config.stalled_after_seconds)
    writer = ViewWriter(pool, metrics.view_inserts)

    def read_process_state() -> dict[str, Any]:
        with pool.connection() as conn:  # the state queries are the database check
            return queue_state.process_state(conn, config.stalled_after_seconds)

    probe_process_state = BoundedProbe(read_process_state, HEALTH_BUDGET_SECONDS)
    collector = Collector(pool, writer, config.sites)
    tracker = Tracker()
    deferrable = sorted(name for name in jobs_app.tasks if "." not in name and ":" not in name)

    auth = Auth(config)  # who may read what: the rule is in tally/web/auth.py

    @app.get("/")
    @auth.owner_or_share
    @database_unavailable
    def show_dashboard():
        """Render the dashboard: views per day, top paths, and queue state for the owner."""
        days = parse_days(bottle.request.query)
        query = bottle.request.query
        window = stats.stats_for_window(
            days, parse_site_parameter(query), parse_time_zone(query, config.timezone)
        )
        sites = stats.sites()
        queue = processes = None
        if auth.reader() is Reader.OWNER:
            with pool.connection() as conn:
                queue = queue_state.queue_summary(conn)
                processes = queue_state.process_state(conn, config.stalled_after_seconds)
                queue["report_failures"] = report_pages.delivery_failures(conn)
        for name, value in dashboard.HEADERS.items():
            bottle.response.set_header(name, value)
        return dashboard.render(
            window, queue, processes, dyno=config.dyno, sites=sites, **auth.page_context()
        )

    @app.get("/login")
    def show_login():
        """Show the owner's login form."""
        return auth.login_page()

    @app.post("/login")
    def log_in():
        """Check the admin token from the login form and start a session."""
        return auth.log_in()

    @app.post("/logout")
    def log_out():
        """End the session."""
        return auth.log_out()

    @app.get("/api/health")
    def health():
        """Report database state, live workers' youngest heartbeat and the last clock tick."""
        body: dict[str, Any] = {"status": "ok", "process": config.process_type, "dyno": config.dyno}
        try:
            body.update(database="ok", **probe_process_state())
        except DATABASE_DOWN as error:
            logger.warning("health: database unreachable: %s", error)
            body.update(status="unavailable", database="unreachable")
            return json_response(503, body)
        except NOT_MIGRATED as error:
            logger.error("health: schema missing: %s", error)
            body.update(status="unavailable", database="not migrated: run `python -m migrations`")
            return json_response(503, body)
        return json_response(200, body)

    @app.post("/api/pageviews")
    @database_unavailable
    def record_page_views():
        """Store one page view or a batch of them, all or nothing."""
        media_type = (bottle.request.content_type or "").split(";")[0].strip().lower()
        if media_type != "application/json":
            return json_error(415, "Send page views as Content-Type: application/json.")
        # The declared length first, so an oversized body is never buffered.
        if bottle.request.content_length > MAX_BODY_BYTES:
            return body_too_large()
        body = bottle.request.body.read(MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            return body_too_large()
        try:
            views = parse_page_views(body)
        except InvalidPageViews as error:
            return json_error(400, str(error))
        if config.sites is not None:
            refused = sorted({view.site for view in views if view.site != DEFAULT_SITE} - config.sites)
            if refused:
                return json_error(403, f"Views of {refused[0]} are not accepted here: it is not in SITES.")
        writer.write(views)  # with the views of concurrent requests, in one INSERT
        metrics.views_recorded.inc(len(views))
        return json_response(201, {"stored": len(views)})

    @app.get("/api/stats")
    @auth.owner_or_share
    @database_unavailable
    def show_stats():
        """Views and visitors per day over ?days=N (1-366, default 30) of ?site=H (default all) in ?tz=Z."""
        query = bottle.request.query
        window = stats.stats_for_window(
            parse_days(query), parse_site_parameter(query), parse_time_zone(query, config.timezone)
        )
        return json_response(200, window)

    @app.get("/api/sites")
    @auth.owner_only
    @database_unavailable
    def show_sites():
        """List the sites that have views, with their views over the last 30 days."""
        return json_response(200, {"days": 30, "sites": stats.sites()})

    @app.get("/api/export")
    @auth.owner_only
    @database_unavailable
    def export_daily_paths():
        """Send views and visitors per day and path over ?days=N of ?site=H in ?tz=Z as CSV."""
        query = bottle.request.query
        days, site = parse_days(query), parse_site_parameter(query)
        rows = export.daily_paths(pool, days, site, parse_time_zone(query, config.timezone))
        name = f"tally-{site or 'all-sites'}-{days}-days.csv"
        headers = {
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="{name}"',
            "Cache-Control": "no-store",
        }
        return bottle.HTTPResponse(body=export.csv_lines(rows), headers=headers)

    @app.get("/tally.js")
    def serve_tracker():
        """Serve the tracker that a site's pages load with one script tag."""
        return tracker.response(bottle.request)

    @app.route("/api/collect", method="OPTIONS")
    def allow_collect_from_any_origin():
        """Answer the CORS preflight of a site's pages: any origin may send views here."""
        return bottle.HTTPResponse(status=204, headers=PREFLIGHT_HEADERS)

    @app.post("/api/collect")
    @database_unavailable
    def collect_page_view():
        """Store the view that tally.js sent, unless a crawler sent it or its site is not in SITES."""
        try:
            outcome = collector.collect(bottle.request)
        except Refused as refused:
            return json_error(refused.status, str(refused), **CORS_HEADERS)
        if outcome.status == 201:
            metrics.views_recorded.inc()
        return json_response(outcome.status, outcome.body, **CORS_HEADERS)

    @app.get("/metrics")
    @auth.metrics_reader
    def show_metrics():
        """Expose queue, worker, clock and page-view metrics in Prometheus text format."""
        return bottle.HTTPResponse(body=metrics.exposition(), headers={"Content-Type": metrics.content_type})

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

    # Reports by email: GET /reports/preview (tally/web/reports.py).
    report_pages.register(app, config, auth, stats, database_unavailable, json_error)

    def error_as_json(error: bottle.HTTPError) -> str:
        bottle.response.content_type = "application/json"
        if error.status_code >= 500:
            logger.error(
                "unhandled error on %s %s: %r",
                bottle.request.method,
                bottle.request.path,
                error.exception,
                exc_info=error.exception,
            )
            return json.dumps({"error": "Internal error; it has been logged."})
        sentences = {404: "There is nothing at this address.", 405: "This method is not allowed here."}
        return json.dumps({"error": sentences.get(error.status_code, "The request was not understood.")})

    app.default_error_handler = error_as_json
    return app
