"""The pieces of the OpenAPI document (tally/web/openapi.py): body schemas, errors, who may call.

The routes themselves, and their parameters, are listed in tally/web/openapi.py.
"""

from __future__ import annotations

from typing import Any

from tally.dimensions import DIMENSIONS

JSON = "application/json"
HTML = "text/html"
NUMBER_OR_NULL = {"type": ["number", "null"]}


def query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def path(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


OBJECT = {"type": "object"}
ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
DAY_ROWS = {"type": "array", "items": {"type": "object"}}
DAILY = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["day", "views", "visitors"],
        "properties": {
            "day": {"type": "string", "format": "date"},
            "views": {"type": "integer"},
            "visitors": {"type": "integer"},
            "visits": {"type": "integer", "description": "Visits that started that day."},
        },
    },
}
VISIT_FIGURES = {
    "visits": {
        "type": "integer",
        "description": "One visitor's views on one UTC day with no gap over 30 minutes.",
    },
    "bounce_rate": {
        "type": "number",
        "minimum": 0,
        "maximum": 1,
        "description": "Share of visits of one view.",
    },
    "visit_duration_seconds": {
        "type": "number",
        "description": "Mean time from a visit's first to last view.",
    },
    "views_per_visit": {"type": "number"},
}
VISIT_PAGES = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["path", "visits"],
        "properties": {"path": {"type": "string"}, "visits": {"type": "integer"}},
    },
}
SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": ERROR_SCHEMA,
    "Stats": {
        "type": "object",
        "required": [
            "days",
            "first_day",
            "last_day",
            "total_views",
            "visitors",
            "views_last_24h",
            "current_visitors",
            "daily",
            "filters",
            "retention_days",
            *VISIT_FIGURES,
            "top_entry_pages",
            "top_exit_pages",
            "top_events",
            *(dimension.panel for dimension in DIMENSIONS),
        ],
        "properties": {
            "days": {"type": "integer"},
            "first_day": {"type": "string", "format": "date"},
            "last_day": {"type": "string", "format": "date"},
            "total_views": {"type": "integer"},
            "visitors": {"type": "integer"},
            "views_last_24h": {"type": "integer"},
            "current_visitors": {"type": "integer", "description": "Visitors of the last 5 minutes."},
            **VISIT_FIGURES,
            "top_entry_pages": VISIT_PAGES,
            "top_exit_pages": VISIT_PAGES,
            "top_events": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["event", "events", "visitors", "conversion_rate"],
                    "properties": {
                        "event": {"type": "string"},
                        "events": {"type": "integer"},
                        "visitors": {"type": "integer"},
                        "conversion_rate": {"type": "number", "minimum": 0, "maximum": 1},
                    },
                },
            },
            "event_props": {
                "type": "array",
                "description": "With ?event=: that event by each prop and value.",
                "items": {
                    "type": "object",
                    "required": ["prop", "value", "events", "visitors"],
                    "properties": {
                        "prop": {"type": "string"},
                        "value": {"type": "string"},
                        "events": {"type": "integer"},
                        "visitors": {"type": "integer"},
                    },
                },
            },
            "daily": DAILY,
            "filters": {"type": "object", "additionalProperties": {"type": "string"}},
            "previous": {
                "type": "object",
                "description": "With ?compare=previous: the period of the same length just before.",
                "required": ["first_day", "last_day", "total_views", "visitors", "daily", "change_percent"],
                "properties": {
                    "daily": DAILY,
                    "change_percent": {
                        "type": "object",
                        "properties": {
                            key: NUMBER_OR_NULL for key in ("total_views", "visitors", *VISIT_FIGURES)
                        },
                    },
                },
            },
            "retention_days": {"type": "integer"},
            **{
                dimension.panel: {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": [dimension.name, "views", "visitors"],
                        "properties": {
                            dimension.name: {"type": "string"},
                            "views": {"type": "integer"},
                            "visitors": {"type": "integer"},
                        },
                    },
                }
                for dimension in DIMENSIONS
            },
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"enum": ["ok", "unavailable"]},
            "database": {"type": "string"},
            "workers_alive": {"type": "integer"},
            "worker_heartbeat_age_seconds": NUMBER_OR_NULL,
            "clock_last_defer_age_seconds": NUMBER_OR_NULL,
            "rollup_age_seconds": NUMBER_OR_NULL,
            "rollup_views_waiting": {"type": ["integer", "null"]},
            "paused_queues": {
                "type": "array",
                "items": {"type": "object", "required": ["queue", "paused_at"]},
            },
            # DATABASE_REPLICA_URL (tally/web/replica.py): "in use" while stats read from it.
            "replica": {
                "enum": [
                    "off",
                    "starting",
                    "in use",
                    "primary down",
                    "lagging",
                    "unreachable",
                    "full",
                    "not a standby",
                    "another cluster",
                    "another database",
                    "unverified",
                ]
            },
            "replica_lag_seconds": NUMBER_OR_NULL,
        },
    },
    "Stored": {"type": "object", "required": ["stored"], "properties": {"stored": {"type": "integer"}}},
    "Sites": {"type": "object", "required": ["days", "sites"], "properties": {"sites": DAY_ROWS}},
    "Queue": {"type": "object", "required": ["by_status", "by_task", "recent_failures"]},
    "Job": {"type": "object", "required": ["id", "task", "status", "attempts", "queue"]},
    "JobAction": {"type": "object", "required": ["job_id"], "properties": {"job_id": {"type": "integer"}}},
    "BulkAction": {"type": "object", "required": ["limit"], "properties": {"limit": {"type": "integer"}}},
    "QueueState": {
        "type": "object",
        "required": ["queue", "paused"],
        "properties": {"queue": {"type": "string"}, "paused": {"type": "boolean"}},
    },
}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_body(schema: str | dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {JSON: {"schema": ref(schema) if isinstance(schema, str) else schema}},
    }


def text_body(media_type: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


def error(description: str) -> dict[str, Any]:
    return json_body("Error", description)


def page_error(answer: dict[str, Any]) -> dict[str, Any]:
    """An error of an HTML page: JSON, or for a browser (Accept: text/html) the same as a page."""
    return {
        "description": answer["description"] + " A browser (Accept: text/html) gets it as a page.",
        "content": {**answer["content"], HTML: {"schema": {"type": "string"}}},
    }


# The collect routes' 403: they take no credential.
NOT_IN_SITES = error("A site not in SITES (with SITES set, each view of /api/pageviews names one).")

ERRORS = {
    "400": error("A parameter or the body is not valid, or two Authorization headers."),
    "401": error("No credential that this route takes."),
    "403": error("A wrong token, or nothing configured that opens this route."),
    "404": error("Nothing at this address."),
    "409": error("The job or the filter is in a state that does not allow this."),
    "413": error("The body is too large."),
    "415": error("The body's media type is not the one this route takes."),
    "429": error("Too many wrong tokens from this client: wait for Retry-After seconds."),
    "503": error("The database is unreachable or not migrated."),
}
PAGE_REFUSED = {
    "401": text_body(HTML, "The login form."),
    "403": text_body(HTML, "Why nothing opens it."),
    "429": text_body(HTML, "Too many wrong tokens."),
}
SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "ADMIN_TOKEN: the owner."},
    "metricsBearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "METRICS_TOKEN: /metrics only.",
    },
    "session": {
        "type": "apiKey",
        "in": "cookie",
        "name": "tally_session",
        "description": "The owner's login session; changes also need the form's `csrf` field "
        "and an Origin (or Referer) of Tally's own host.",
    },
    "shareLink": {
        "type": "apiKey",
        "in": "query",
        "name": "share",
        "description": "SHARE_TOKEN.",
    },
}
# Who may call a route (tally/web/auth.py), as OpenAPI security requirements.
OWNER = [{"bearer": []}, {"session": []}]
SHARED = [*OWNER, {"shareLink": []}, {}]  # {}: anyone with PUBLIC_DASHBOARD=true
METRICS = [{"bearer": []}, {"metricsBearer": []}, {"session": []}]
CHANGES = [{"bearer": []}, {"session": []}]  # the session with the form's CSRF token
PUBLIC: list[dict[str, list[str]]] = [{}]
FORM = {
    "required": False,
    "content": {
        "application/x-www-form-urlencoded": {
            "schema": {
                "type": "object",
                "properties": {
                    "csrf": {
                        "type": "string",
                        "description": "The session's CSRF token (the page's forms carry it).",
                    },
                    "next": {"type": "string", "description": "The jobs page to go back to (303)."},
                },
            }
        }
    },
}
BACK_TO_PAGE = {"303": {"description": "From the page's form: back to `next` with the outcome as ?notice=."}}
