"""What clients send, for the OpenAPI document (tally/web/openapi.py): every query parameter,
the path parameters, the bodies' schemas.

Each is written from the parser's own limits and patterns (tally/web/pageviews.py,
tally/web/beacon.py, tally/sites.py, tally/web/params.py), so a value the document calls
valid is never refused and one it calls invalid is never taken: Schemathesis checks both
ways (tests/test_openapi.py). To add a query parameter, add one line to PARAMETERS and its
name to the route's `params` in tally/web/openapi.py.
"""

from __future__ import annotations

from typing import Any

from tally.dimensions import DIMENSIONS
from tally.env import time_zone_names
from tally.hosts import UNICODE_DOMAIN
from tally.sites import IPV6_ADDRESS, MAX_HOST_NAME, SITE_NAME
from tally.web import beacon as beacon_body
from tally.web.openapi_parts import ERRORS, page_error, path, query, ref
from tally.web.pageviews import CONTROL, MAX_BATCH, MAX_TEXT, TEXT_PATTERN
from tally.web.params import MAX_JOB_ID, MAX_NAME_LENGTH
from tally.web.referrers import BROWSER_HOST as BROWSER_HOST_NAME

MAX_URL = beacon_body.MAX_URL

TEXT = {"type": "string", "maxLength": MAX_TEXT, "pattern": TEXT_PATTERN}
NAME = {"type": "string", "maxLength": MAX_NAME_LENGTH, "pattern": TEXT_PATTERN}
SITE = {"type": "string", "maxLength": MAX_HOST_NAME, "pattern": f"^{SITE_NAME.pattern}$"}
SITE_OR_EMPTY = {**SITE, "pattern": f"^({SITE_NAME.pattern})?$"}
# A port as Python's urlsplit takes it: empty, or digits (leading zeros too) up to 65535.
PORT = "(:0*(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})?)?"
# user:password@, which urlsplit reads past (and refuses with a bracket in it: not an IPv6 host)
USER = f"([^/?#@\\[\\]{CONTROL}]*@)?"
# The page's address: http(s), a host name, a port, a path of at most MAX_TEXT characters, then
# anything but control characters.
PAGE_URL = (
    f"^[Hh][Tt][Tt][Pp][Ss]?://{USER}{SITE_NAME.pattern}{PORT}"
    f"(/[^?#{CONTROL}]{{0,{MAX_TEXT - 1}}})?([?#][^{CONTROL}]*)?$"
)
# The referring page: empty, or any scheme with a host name or an IPv6 address (its query and
# fragment are dropped).
REFERRER_HOST = f"({SITE_NAME.pattern}|\\[({IPV6_ADDRESS.pattern})\\])"
REFERRER_URL = f"^([A-Za-z][A-Za-z0-9+.-]*://{USER}{REFERRER_HOST}{PORT}([/?#][^{CONTROL}]*)?)?$"
# A beacon's referrer also has the hosts browsers open that no DNS name is (tally/web/referrers.py).
BROWSER_HOST = BROWSER_HOST_NAME.pattern.replace("a-z", "A-Za-z")
BROWSER_REFERRER_URL = REFERRER_URL.replace(REFERRER_HOST, f"({REFERRER_HOST}|{BROWSER_HOST})")
# The referrer filter (tally/web/filters.py): any printable ASCII (a domain, an address, a search
# engine's name), or a domain written in Unicode, which it matches in its xn-- form.
REFERRER_FILTER = {
    "type": "string",
    "maxLength": MAX_TEXT,
    "pattern": f"^([\\x20-\\x7e]*|{UNICODE_DOMAIN.pattern})$",
}


# Every query parameter of every route, by name: a route lists the names it takes.
PARAMETERS: dict[str, dict[str, Any]] = {
    "days": query(
        "days", {"type": "integer", "minimum": 1, "maximum": 366}, "Days in the window, today included (30)."
    ),
    "site": query(
        "site",
        SITE_OR_EMPTY,
        "One site's host name (any case); absent or empty: every site.",
    ),
    "tz": query("tz", ref("TimeZone"), "IANA time zone in which days count; absent or empty: TIMEZONE."),
    "share": query("share", {"type": "string"}, "A share link's token (SHARE_TOKEN): read-only numbers."),
    "status": query(
        "status",
        {"enum": ["todo", "doing", "succeeded", "failed", "cancelled", "aborted", ""]},
        "Only jobs in this status.",
    ),
    "task": query("task", NAME, "Only jobs of this task; absent or empty: any."),
    "queue": query("queue", NAME, "Only jobs of this queue; absent or empty: any."),
    "before": query(
        "before",
        {"anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_JOB_ID}, {"const": ""}]},
        "The next page: jobs with smaller ids (keyset); absent or empty: the newest.",
    ),
    "notice": query(
        "notice",
        {"type": "string"},
        "What the last action did, shown on the page (its first 300 characters).",
    ),
    "period": query(
        "period", {"enum": ["weekly", "monthly"]}, "The report's period: the last full week or month."
    ),
    "compare": query(
        "compare", {"enum": ["previous", ""]}, "previous: add the period of the same length just before."
    ),
    "refresh": query("refresh", {"enum": ["off"]}, "off: the dashboard does not reload itself."),
    # The filters (tally/web/filters.py): one parameter per dimension, AND-ed.
    **{
        dimension.name: query(
            dimension.name, TEXT, f"Count only the views whose {dimension.name} is this value."
        )
        for dimension in DIMENSIONS
        if dimension.name not in ("referrer", "path")
    },
    "path": query(
        "path",
        TEXT,
        "Count only the views of this path: as top_paths lists it, as browsers send it (/%C3%BCber),"
        " or as it reads (/über) or with lower-case escapes (/%c3%bcber), which stand for it; views"
        " stored as it reads (inserted by SQL) count too.",
    ),
    "referrer": query(
        "referrer",
        REFERRER_FILTER,
        "Count only the views from this referring domain, as top_referrers lists it (an"
        " international one in its xn-- form or in Unicode: bücher.de). A search engine's search"
        " is listed and filtered as one domain (google.com) that any of its domains (google.de)"
        " or its name (Google, as the dashboard shows it) stands for.",
    ),
    "event": query("event", TEXT, "Count only the views of the visitors who sent this event."),
    "goal_path": query(
        "goal_path", TEXT, "Count only the views of the visitors who viewed this path (as for path)."
    ),
}
JOB_ID = path("job", {"type": "integer", "minimum": 1}, "A job id.")
TASK = path("job", {"type": "string"}, "A task's name (GET takes a job id at this place).")
REPORT_SITE = {
    **query("site", SITE, "The site whose report it is (its host name, any case)."),
    "required": True,
}
QUEUE = path("name", {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,40}$"}, "A queue's name.")


def time_zone() -> dict[str, Any]:
    """?tz=: a zone of the database Python reads (tally.env.time_zone_names), or empty."""
    return {"enum": ["", *sorted(time_zone_names())]}


def page_view() -> dict[str, Any]:
    """A view of POST /api/pageviews (tally/web/pageviews.py)."""
    return {
        "type": "object",
        "required": ["path"],
        "additionalProperties": False,
        "properties": {
            "path": {
                "type": "string",
                "maxLength": MAX_TEXT,
                "pattern": f"^/[^{CONTROL}]*$",
                "description": "Stored as browsers send it: /über as /%C3%BCber, /%c3%bcber as /%C3%BCber.",
            },
            "referrer": {"type": ["string", "null"], "maxLength": MAX_TEXT, "pattern": REFERRER_URL},
            "site": {
                **SITE,
                "type": ["string", "null"],
                "description": "Absent or null: the default site, refused (403) while SITES is set.",
            },
        },
    }


def page_views() -> dict[str, Any]:
    """The body of POST /api/pageviews: one view, or a batch of them."""
    batch = {"type": "array", "items": {"$ref": "#/components/schemas/PageView"}}
    return {
        "oneOf": [{"$ref": "#/components/schemas/PageView"}, {**batch, "minItems": 1, "maxItems": MAX_BATCH}]
    }


def beacon() -> dict[str, Any]:
    """The body of POST /api/collect (tally/web/beacon.py): a view, or an event with props."""
    prop_value = {"type": ["string", "number", "boolean"], "maxLength": beacon_body.MAX_PROP_VALUE}
    return {
        "type": "object",
        "required": ["url"],
        "additionalProperties": False,
        "properties": {
            "url": {"type": "string", "maxLength": MAX_URL, "pattern": PAGE_URL},
            "referrer": {"type": ["string", "null"], "maxLength": MAX_URL, "pattern": BROWSER_REFERRER_URL},
            "width": {
                "type": ["number", "null"],
                "minimum": 0,
                "maximum": beacon_body.MAX_WIDTH,
                "description": "window.innerWidth",
            },
            "event": {
                "type": ["string", "null"],
                "maxLength": beacon_body.MAX_EVENT_NAME,
                # Not blank: something besides spaces.
                "pattern": f"^[^{CONTROL}]*[^\\s{CONTROL}][^{CONTROL}]*$",
                "description": "A custom event's name: the beacon is that event, not a view.",
            },
            "props": {
                "type": ["object", "null"],
                "maxProperties": beacon_body.MAX_PROPS,
                "propertyNames": {
                    "minLength": 1,
                    "maxLength": beacon_body.MAX_PROP_KEY,
                    "pattern": TEXT_PATTERN,
                },
                "additionalProperties": {**prop_value, "pattern": TEXT_PATTERN},
                "description": "The event's props; never personal data.",
            },
        },
        # Props belong to an event.
        "if": {"required": ["props"], "properties": {"props": {"type": "object", "minProperties": 1}}},
        "then": {"required": ["event"], "properties": {"event": {"type": "string"}}},
    }


def operation(
    method: str,
    route: str,
    name: str,
    summary: str,
    security: list[dict[str, list[str]]],
    responses: dict[str, Any],
    params: tuple[str, ...] = (),
    own_params: tuple[dict[str, Any], ...] = (),
    body: dict[str, Any] | None = None,
    errors: tuple[str, ...] = (),
    page: bool = False,
) -> tuple[str, str, dict[str, Any]]:
    """One route: `params` name entries of PARAMETERS, `own_params` are parameters of its own
    (of its path, or required), `errors` keys of ERRORS (`page`: an HTML page's, which a
    browser gets as a page, tally/web/error_page.py)."""
    shown = {status: page_error(ERRORS[status]) if page else ERRORS[status] for status in errors}
    answer: dict[str, Any] = {
        "operationId": name,
        "summary": summary,
        "security": security,
        "parameters": [*own_params, *(PARAMETERS[param] for param in params)],
        "responses": {**responses, **shown},
    }
    if body is not None:
        answer["requestBody"] = body
    return route, method, answer


# 400 too: two Authorization headers are refused on every route that takes a token.
OWNER_ERRORS = ("400", "401", "403", "429", "503")
CHANGE_ERRORS = ("400", "401", "403", "404", "409", "413", "429", "503")
