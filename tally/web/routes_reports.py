"""GET /reports/preview?site=H&period=weekly|monthly (owner): the emailed report as a page.

The routes live here and `register` adds them to the app, so they move with the report.
"""

from __future__ import annotations

from typing import Any

import bottle
import psycopg

from tally import reports
from tally.config import Config
from tally.db import QUERIES
from tally.web.auth import Auth
from tally.web.error_page import page_errors
from tally.web.params import SITE_PARAMETER, given_once, parse_site_parameter, refuse_unknown
from tally.web.responses import database_unavailable, json_error
from tally.web.sessions import PAGE_HEADERS
from tally.web.stats import StatsReader

REPORT_PARAMETERS = frozenset({"site", "period"})


def register(app: bottle.Bottle, config: Config, auth: Auth, stats: StatsReader) -> None:
    """Add the report's preview route to `app`."""

    @app.get("/reports/preview")
    @auth.owner_only
    @page_errors
    @database_unavailable
    def preview_report():
        """Show the report of ?site=H for its last full ?period=weekly|monthly, as mailed."""
        query = bottle.request.query
        # As stats, export and the jobs page do: a misspelt `perod=monthly` showed the week.
        refuse_unknown(query, REPORT_PARAMETERS, "the report's preview takes site and period")
        site = parse_site_parameter(query)
        if site is None:  # absent or empty: the report is of one site
            return json_error(400, SITE_PARAMETER)
        kind = given_once(query, "period")
        if kind is None:
            kind = "weekly"
        elif kind not in ("weekly", "monthly"):
            return json_error(400, "period must be weekly or monthly.")
        today = reports.local_today(config.timezone)
        period = reports.last_full_period(kind, today)
        report = reports.build(stats, site, period, config.timezone, config.tally_url, today)
        return bottle.HTTPResponse(
            body=report.html(), headers={**PAGE_HEADERS, "Content-Type": "text/html; charset=utf-8"}
        )


def delivery_failures(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """The last reports not delivered (failed for good, or waiting to be tried again)."""
    cursor = conn.execute(QUERIES["report_delivery_failures"])
    names = [column.name for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
