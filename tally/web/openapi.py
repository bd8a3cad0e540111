"""The OpenAPI 3.1 description of every route, served at GET /api/openapi.json.

Kept equal to the app's routes by tests/test_openapi.py (every route here, nothing more),
checked by openapi-spec-validator, and fuzzed by Schemathesis against a live web.py.

To add a query parameter to a route, add its name to the route's `params` (and, if it is
new, one line to PARAMETERS in tally/web/openapi_inputs.py). To add a route, add one
`operation(...)` line: here, or in tally/web/openapi_jobs.py for the job queue's routes.
"""

from __future__ import annotations

from typing import Any

from tally.dimensions import DIMENSIONS
from tally.web import openapi_inputs as inputs
from tally.web.openapi_inputs import OWNER_ERRORS, REPORT_SITE, operation
from tally.web.openapi_jobs import JOB_OPERATIONS
from tally.web.openapi_parts import (
    FORM,
    HTML,
    JSON,
    METRICS,
    NOT_IN_SITES,
    OBJECT,
    OWNER,
    PAGE_REFUSED,
    PUBLIC,
    SCHEMAS,
    SECURITY_SCHEMES,
    SHARED,
    json_body,
    ref,
    text_body,
)

FILTERS = (*(dimension.name for dimension in DIMENSIONS), "event", "goal_path")
STATS_PARAMS = ("days", "site", "tz", *FILTERS)
OPERATIONS = [
    operation(
        "get",
        "/",
        "show_dashboard",
        "The dashboard (HTML).",
        SHARED,
        {"200": text_body(HTML, "The dashboard."), **PAGE_REFUSED},
        (*STATS_PARAMS, "compare", "share", "refresh"),
        errors=("400", "503"),
        page=True,
    ),
    operation(
        "get",
        "/login",
        "show_login",
        "The owner's login form.",
        PUBLIC,
        {"200": text_body(HTML, "The form.")},
    ),
    operation(
        "post",
        "/login",
        "log_in",
        "Log in with the admin token (form field `token`).",
        PUBLIC,
        {
            "303": {"description": "Logged in: to the dashboard."},
            **{
                status: text_body(HTML, "The form, saying why not.")
                for status in ("400", "401", "403", "413", "429")
            },
        },
        body={
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "properties": {"token": {"type": "string", "minLength": 1}},
                    }
                }
            },
        },
    ),
    operation(
        "post",
        "/logout",
        "log_out",
        "End the session (form field `csrf`).",
        PUBLIC,
        {
            "303": {"description": "Logged out."},
            **{status: text_body(HTML, "Why not.") for status in ("403", "413")},
        },
        body=FORM,
    ),
    operation(
        "get",
        "/api/health",
        "health",
        "Database, workers, clock, rollup lag, paused queues (views waiting: with a token only).",
        PUBLIC,
        {"200": json_body("Health", "Healthy."), "503": json_body("Health", "The database is unreachable.")},
    ),
    operation(
        "post",
        "/api/pageviews",
        "record_page_views",
        "Store a view or a batch of views.",
        PUBLIC,
        {"201": json_body("Stored", "Stored."), "403": NOT_IN_SITES},
        body={
            "required": True,
            "content": {JSON: {"schema": inputs.page_views()}},
        },
        errors=("400", "413", "415", "503"),
    ),
    operation(
        "get",
        "/api/stats",
        "show_stats",
        "Views and visitors per day, top lists.",
        SHARED,
        {"200": json_body("Stats", "The window's numbers.")},
        (*STATS_PARAMS, "compare", "share"),
        errors=OWNER_ERRORS,
    ),
    operation(
        "get",
        "/api/sites",
        "show_sites",
        "Sites with views over the last 30 days.",
        OWNER,
        {"200": json_body("Sites", "The sites.")},
        errors=OWNER_ERRORS,
    ),
    operation(
        "get",
        "/api/export",
        "export_daily_paths",
        "Views and visitors per day and path, as CSV.",
        OWNER,
        {"200": text_body("text/csv", "day,path,views,visitors")},
        STATS_PARAMS,
        errors=OWNER_ERRORS,
    ),
    operation(
        "get",
        "/tally.js",
        "serve_tracker",
        "The tracker script.",
        PUBLIC,
        {"200": text_body("text/javascript", "The script."), "304": {"description": "Not modified."}},
    ),
    operation(
        "options",
        "/api/collect",
        "allow_collect_from_any_origin",
        "CORS preflight of the tracker.",
        PUBLIC,
        {"204": {"description": "Any origin may post views."}},
    ),
    operation(
        "post",
        "/api/collect",
        "collect_page_view",
        "The tracker's beacon.",
        PUBLIC,
        {
            "201": json_body(OBJECT, "Stored."),
            "202": json_body(OBJECT, "A crawler: counted, not stored."),
            "403": NOT_IN_SITES,
        },
        body={
            "required": True,
            "content": {
                JSON: {"schema": ref("Beacon")},
                # sendBeacon's string: the same JSON object, as text (no CORS preflight).
                "text/plain": {"schema": ref("Beacon")},
            },
        },
        errors=("400", "413", "415", "503"),
    ),
    operation(
        "get",
        "/reports/preview",
        "preview_report",
        "The emailed report of one site for its last full week or month (HTML).",
        OWNER,
        {"200": text_body(HTML, "The report, as mailed."), **PAGE_REFUSED},
        ("period",),
        own_params=(REPORT_SITE,),
        errors=("400", "503"),
        page=True,
    ),
    operation(
        "get",
        "/metrics",
        "show_metrics",
        "Prometheus metrics.",
        METRICS,
        {"200": text_body("text/plain", "Prometheus text format.")},
        errors=("400", "401", "403", "429"),
    ),
    *JOB_OPERATIONS,
    operation(
        "get",
        "/api/openapi.json",
        "show_openapi",
        "This document.",
        PUBLIC,
        {"200": json_body(OBJECT, "OpenAPI 3.1.")},
    ),
]


def document() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document."""
    paths: dict[str, dict[str, Any]] = {}
    for route, method, details in OPERATIONS:
        paths.setdefault(route, {})[method] = details
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tally",
            "version": "1",
            "description": "Page-view analytics: collect views, read stats, run the job queue. "
            'Errors are JSON {"error": sentence}.',
        },
        "paths": paths,
        "components": {
            "schemas": {
                **SCHEMAS,
                "PageView": inputs.page_view(),
                "Beacon": inputs.beacon(),
                "TimeZone": inputs.time_zone(),
            },
            "securitySchemes": SECURITY_SCHEMES,
        },
    }
