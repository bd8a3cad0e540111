"""Routes that read the numbers: the dashboard, stats, sites and the CSV export.

Their numbers come through `reads` (tally/web/replica.py): from the replica when one is set and
fit, else from the primary. Each read is one function of the pool it is given, so a read that
fails on the replica starts over on the primary; the request's parameters are parsed before,
since the read may run on another thread. The owner's queue and process state on the dashboard
stay on the primary: they are the live state the jobs page acts on. With the primary down and
the numbers from the replica, the page still shows the numbers, and says the queue is out of reach."""

from __future__ import annotations

import logging
import time

import bottle
import psycopg_pool

from tally.config import Config
from tally.search_engines import with_reported_domains
from tally.web import dashboard, export, queue_state, routes_reports
from tally.web import stats as stats_module
from tally.web.auth import Auth, Reader
from tally.web.error_page import page_errors
from tally.web.params import (
    parse_compare,
    parse_days,
    parse_filter_parameters,
    parse_reloads,
    parse_site_parameter,
    parse_time_zone,
)
from tally.web.replica import ReadRouter
from tally.web.responses import DATABASE_DOWN, database_unavailable, json_response
from tally.web.stats import StatsReader

logger = logging.getLogger("tally.web")


def register(
    app: bottle.Bottle,
    config: Config,
    pool: psycopg_pool.ConnectionPool,
    auth: Auth,
    stats: StatsReader,
    reads: ReadRouter,
) -> None:
    """Add the dashboard and stats routes to `app`."""

    @app.get("/")
    @auth.owner_or_share
    @page_errors
    @database_unavailable
    def show_dashboard():
        """Render the dashboard: views per day, top paths, and queue state for the owner."""
        query = bottle.request.query
        days, site = parse_days(query), parse_site_parameter(query)
        tz, filters = (
            parse_time_zone(query, config.timezone),
            parse_filter_parameters(query, ("compare", "refresh")),
        )
        compare = parse_compare(query) or True  # the chart always shows the period before
        reloads = parse_reloads(query)
        started = time.monotonic()
        window, sites = reads.run(
            lambda read_pool: (
                stats.stats_for_window(days, site, tz, filters=filters, compare=compare, pool=read_pool),
                stats.sites(pool=read_pool),
            )
        )
        queue = processes = None
        if auth.reader() is Reader.OWNER:
            try:
                with pool.connection() as conn:
                    queue = queue_state.queue_summary(conn)
                    processes = queue_state.process_state(conn, config.stalled_after_seconds)
                    queue["report_failures"] = routes_reports.delivery_failures(conn)
            except DATABASE_DOWN as error:  # the numbers came from the replica (else they had failed)
                logger.warning("GET /: the job queue is out of reach: %s", error)
                queue, processes = {"unreachable": True}, None
        for name, value in dashboard.HEADERS.items():
            bottle.response.set_header(name, value)
        return dashboard.render(
            window,
            queue,
            processes,
            dyno=config.dyno,
            sites=sites,
            counted_in=time.monotonic() - started,
            tally_url=config.tally_url if config.tally_url_set else None,
            reloads=reloads,
            **auth.page_context(),
        )

    @app.get("/api/stats")
    @auth.owner_or_share
    @database_unavailable
    def show_stats():
        """Views and visitors per day over ?days=N of ?site=H in ?tz=Z, of the views matching every filter."""
        query = bottle.request.query
        days, site = parse_days(query), parse_site_parameter(query)
        tz, filters = parse_time_zone(query, config.timezone), parse_filter_parameters(query, ("compare",))
        compare = parse_compare(query)
        window = reads.run(
            lambda read_pool: stats.stats_for_window(
                days, site, tz, filters=filters, compare=compare, pool=read_pool
            )
        )
        return json_response(200, with_reported_domains(window))

    @app.get("/api/sites")
    @auth.owner_only
    @database_unavailable
    def show_sites():
        """List the sites that have views, with their views over the last 30 days."""
        return json_response(
            200,
            {
                "days": stats_module.SITES_DAYS,
                "sites": reads.run(lambda read_pool: stats.sites(pool=read_pool)),
            },
        )

    @app.get("/api/export")
    @auth.owner_only
    @database_unavailable
    def export_daily_paths():
        """Send views and visitors per day and path over ?days=N of ?site=H in ?tz=Z as CSV."""
        query = bottle.request.query
        days, site = parse_days(query), parse_site_parameter(query)
        filters = parse_filter_parameters(query)
        tz = parse_time_zone(query, config.timezone)
        spool = reads.run(lambda read_pool: export.daily_paths(read_pool, days, site, tz, filters))
        name = f"tally-{site or 'all-sites'}-{days}-days.csv"
        headers = {
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="{name}"',
            "Cache-Control": "no-store",
        }
        return bottle.HTTPResponse(body=export.chunks(spool), headers=headers)
