"""The web process's Bottle app: routes top to bottom, each with one docstring line.

    >>> app = build_app(config.from_env({}, process_type="web"), db.web_pool(...))  # doctest: +SKIP
    >>> waitress.serve(app, port=5000)                                             # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging

import bottle
import psycopg
import psycopg_pool

from tally import config as config_module
from tally.db import QUERIES

logger = logging.getLogger("tally.web")

# What the database's absence looks like from a request: connect, pool wait, lost socket.
DATABASE_DOWN = (psycopg.OperationalError, psycopg_pool.PoolTimeout, psycopg.InterfaceError)


def json_response(status: int, body: object) -> bottle.HTTPResponse:
    return bottle.HTTPResponse(
        status=status,
        body=json.dumps(body, default=str),
        headers={"Content-Type": "application/json", "Cache-Control": "no-store"},
    )


def json_error(status: int, sentence: str) -> bottle.HTTPResponse:
    return json_response(status, {"error": sentence})


def build_app(config: config_module.Config, pool: psycopg_pool.ConnectionPool) -> bottle.Bottle:
    """Wire the routes to `pool`; the caller serves the returned WSGI app."""
    app = bottle.Bottle()

    def query_one(name: str, **params: object) -> dict:
        with pool.connection() as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            cur.execute(QUERIES[name], params)
            return cur.fetchone()

    @app.get("/api/health")
    def health():
        """Report database state, live workers' youngest heartbeat and the last clock tick."""
        body = {"status": "ok", "process": config.process_type, "dyno": config.dyno}
        try:
            query_one("database_now")
            workers = query_one("worker_heartbeats", stalled_after=config.stalled_after_seconds)
            clock = query_one("last_periodic_defer")
        except DATABASE_DOWN as error:
            logger.warning("health: database unreachable: %s", error)
            body.update(status="unavailable", database="unreachable")
            return json_response(503, body)
        body.update(
            database="ok",
            workers_alive=workers["alive"],
            worker_heartbeat_age_seconds=_rounded(workers["youngest_heartbeat_age"]),
            clock_last_defer_age_seconds=_rounded(clock["age"]),
        )
        return json_response(200, body)

    def error_as_json(error: bottle.HTTPError) -> str:
        bottle.response.content_type = "application/json"
        sentence = {
            404: "No such resource.",
            405: "Method not allowed on this resource.",
        }.get(error.status_code, error.body if isinstance(error.body, str) else "Request failed.")
        if error.status_code >= 500:
            logger.error("unhandled error: %s", error.exception, exc_info=error.exception)
            sentence = "Internal error."
        return json.dumps({"error": sentence})

    app.default_error_handler = error_as_json
    return app


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)
