"""The web process's Bottle app, as a table of contents: each area adds its own routes.

    routes_collect   GET /tally.js, POST /api/collect (+ its preflight), POST /api/pageviews
    routes_health    GET /api/health, GET /metrics
    routes_stats     GET /, GET /api/stats, GET /api/sites, GET /api/export (from the replica
                     when one is set: tally/web/replica.py)
    routes_auth      GET /login, POST /login, POST /logout
    routes_jobs      GET /api/jobs, GET /api/jobs/<id>, POST /api/jobs/<task>,
                     POST /api/jobs/<id>/retry|cancel, POST /api/jobs/bulk/retry|cancel,
                     POST /api/queues/<name>/pause|resume
    routes_jobs_page GET /jobs, GET /jobs/<id>
    routes_reports   GET /reports/preview (the emailed report as a page: tally/reports.py)
    routes_openapi   GET /api/openapi.json (the description of all of the above: tally/web/openapi.py)

Who may call each route is the guard under it (tally/web/auth.py); shared answers and
parameters are in tally/web/responses.py and tally/web/params.py.

>>> pool = db.web_pool(settings); pool.open()                  # doctest: +SKIP
>>> waitress.serve(build_app(settings, pool, jobs.app), port=5000)  # doctest: +SKIP
"""

from __future__ import annotations

import logging

import bottle
import procrastinate
import psycopg_pool

from tally.config import Config
from tally.web import headers as request_headers
from tally.web import (
    routes_auth,
    routes_collect,
    routes_health,
    routes_jobs,
    routes_jobs_page,
    routes_openapi,
    routes_reports,
    routes_stats,
)
from tally.web.auth import Auth
from tally.web.collect import Collector
from tally.web.ended_sessions import EndedSessions
from tally.web.metrics import Metrics
from tally.web.replica import ReadRouter
from tally.web.responses import DATABASE_DOWN, error_as_json
from tally.web.sessions import SESSION_SECONDS
from tally.web.stats import StatsReader
from tally.web.view_writer import ViewWriter
from tally.web.warm import WarmAnswers

logger = logging.getLogger("tally.web")


def build_app(
    config: Config,
    pool: psycopg_pool.ConnectionPool,
    jobs_app: procrastinate.App,
    reads: ReadRouter | None = None,
) -> bottle.Bottle:
    """Wire the routes to `pool` and `jobs_app`; the caller serves the returned WSGI app.

    `reads` sends the owner's reads to a replica (tally/web/replica.py; started and closed by
    the caller); without it they read from `pool`. Everything that writes uses `pool`."""
    app = bottle.Bottle()
    # Bottle's `<id:int>` matches `-?\d+`, and `\d` and int() take any script's digits: "/api/jobs/%D9%A1"
    # (Arabic-Indic) opened and acted on job 1. Ids in addresses are ASCII digits.
    app.router.add_filter("int", lambda conf: (r"-?[0-9]+", int, lambda value: str(int(value))))
    request_headers.install(app)  # every header decodable, the query decoded, before any route
    jobs_app.open(pool)  # deferring from web uses the same pool, synchronously

    def request_rollup() -> None:
        """Ask a worker to fold the stats tail now; one such job waits at a time."""
        try:
            jobs_app.tasks["rollup_page_views"].configure(queueing_lock="rollup_page_views").defer()
        except procrastinate.exceptions.AlreadyEnqueued:
            pass  # one is already waiting: it will fold these views too
        except (procrastinate.exceptions.ConnectorException, *DATABASE_DOWN) as error:
            logger.warning("could not ask for a rollup: %s", error)

    reads = reads or ReadRouter(pool)
    auth = Auth(config, EndedSessions(pool, SESSION_SECONDS))  # who may read what: tally/web/auth.py
    stats = StatsReader(pool, config.retention_days, request_rollup)
    metrics = Metrics(pool, config.stalled_after_seconds, reads)
    writer = ViewWriter(pool, metrics.view_inserts, metrics.views_recorded)
    collector = Collector(pool, writer, config.sites)

    routes_stats.register(app, config, pool, auth, stats, reads)
    routes_auth.register(app, auth)
    routes_health.register(app, config, pool, auth, metrics, reads)
    routes_collect.register(app, config, writer, collector)
    routes_jobs.register(app, pool, auth, jobs_app)
    routes_jobs_page.register(app, config, pool, auth)
    routes_reports.register(app, config, auth, stats)
    routes_openapi.register(app)

    app.default_error_handler = error_as_json
    # Readers' answers read again as each rollup lands: started and closed by web.py, not here
    # (an app made in a test reads nothing behind its back).
    app.config["tally.warm_answers"] = WarmAnswers(stats, reads)
    return app
