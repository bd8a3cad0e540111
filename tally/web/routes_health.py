"""Routes that tell operators how the processes are: health (public) and Prometheus metrics."""

from __future__ import annotations

import logging
from typing import Any

import bottle
import psycopg_pool

from tally.checked_pool import why_no_connection
from tally.config import Config
from tally.web import queue_state
from tally.web.auth import Auth
from tally.web.metrics import Metrics
from tally.web.probe import BoundedProbe
from tally.web.replica import ReadRouter
from tally.web.responses import DATABASE_DOWN, NOT_MIGRATED, json_response

logger = logging.getLogger("tally.web")

# Health answers within this, whatever the database does (a router asks for it in 2 s).
HEALTH_BUDGET_SECONDS = 1.8
READ_ONLY = (
    "read-only: DATABASE_URL's role may not write (a follower, a read-only credential, a plan over"
    " its row limit)"
)


def register(
    app: bottle.Bottle,
    config: Config,
    pool: psycopg_pool.ConnectionPool,
    auth: Auth,
    metrics: Metrics,
    reads: ReadRouter,
) -> None:
    """Add /api/health and /metrics to `app`."""

    def read_process_state() -> dict[str, Any]:
        with pool.connection() as conn:  # the state queries are the database check
            return {
                **queue_state.process_state(conn, config.stalled_after_seconds),
                "writable": queue_state.writable(conn),
            }

    probe_process_state = BoundedProbe(read_process_state, HEALTH_BUDGET_SECONDS)

    @app.get("/api/health")
    def health():
        """Report database state, live workers' youngest heartbeat, the last clock tick and the replica
        (and, to the owner and the metrics token, the views waiting for the rollup)."""
        body: dict[str, Any] = {"status": "ok", "process": config.process_type, "dyno": config.dyno}
        # The replica as its checker last saw it (no wait here): when only it is down, health
        # stays 200 and says so, since the primary serves its reads.
        replica = reads.status()
        body.update(replica=replica.state, replica_lag_seconds=replica.lag_seconds)
        try:
            # A copy: callers that arrive during one read share its result, and this one pops and
            # deletes keys (two health checks at once answered one of them 500, a KeyError).
            state = dict(probe_process_state())
            if not state.pop("writable"):
                # It answers every read and refuses every write: no view can be stored.
                body.update(status="unavailable", database=READ_ONLY, **state)
                del body["rollup_views_waiting"]
                return json_response(503, body)
            body.update(database="ok", **state)
            if not auth.reads_metrics():
                # Views waiting for the rollup are the last minute's traffic: stats, the owner's.
                del body["rollup_views_waiting"]
        except DATABASE_DOWN as error:
            problem = why_no_connection(pool)
            logger.warning("health: database %s: %s", problem, error)
            body.update(status="unavailable", database=problem)
            return json_response(503, body)
        except NOT_MIGRATED as error:
            logger.error("health: schema missing: %s", error)
            body.update(status="unavailable", database="not migrated: run `python -m migrations`")
            return json_response(503, body)
        return json_response(200, body)

    @app.get("/metrics")
    @auth.metrics_reader
    def show_metrics():
        """Expose queue, worker, clock and page-view metrics in Prometheus text format."""
        return bottle.HTTPResponse(body=metrics.exposition(), headers={"Content-Type": metrics.content_type})
