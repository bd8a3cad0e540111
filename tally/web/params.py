"""The query parameters that several routes share: `days`, `tz`, `site`, the filters and `compare`
(stats, export, the dashboard), the jobs page's, and what each single one must be: given once.

A bad value raises a 400 `{"error": ...}` response, which Bottle sends as it is.
"""

from __future__ import annotations

import re
from collections.abc import Set

import bottle

from tally.env import is_time_zone, zone_spelt_as
from tally.hosts import international_hint
from tally.sites import parse_site_name
from tally.web.filters import InvalidFilter, parse_filters
from tally.web.pageviews import CONTROL_CHARACTERS
from tally.web.responses import json_error
from tally.web.stats import MAX_DAYS
from tally.web.windows import DEFAULT_DAYS

DAYS_PARAMETER = re.compile(r"[0-9]{1,3}")
SITE_PARAMETER = "site must be one host name such as example.com, without a port."


def given_once(query: bottle.FormsDict, name: str) -> str | None:
    """The value of the query parameter `name`, None when absent; a 400 when it is given twice.
    An empty copy counts: which of the two was meant is not known (as for a filter). Said as
    such, or `?days=7&days=7` read "days must be a whole number", of a value that is one."""
    values = query.getall(name)
    if len(values) > 1:
        raise json_error(400, f"Give {name} once.")
    return values[0] if values else None


def refuse_unknown(query: bottle.FormsDict, known: Set[str], takes: str) -> None:
    """A 400 naming the first parameter of `query` not in `known`, then `takes` (what the route
    takes): a misspelt one (`perod=monthly`) would be answered as if it were absent."""
    unknown = sorted(set(query) - known)
    if unknown:
        raise json_error(400, f"Unknown parameter {unknown[0]}: {takes}.")


def parse_days(query: bottle.FormsDict) -> int:
    """The `days` query parameter: a whole number from 1 to 366, 30 when absent."""
    value = given_once(query, "days")
    if value is None:
        return DEFAULT_DAYS
    if not DAYS_PARAMETER.fullmatch(value) or not 1 <= int(value) <= MAX_DAYS:
        raise json_error(400, f"days must be a whole number from 1 to {MAX_DAYS}.")
    return int(value)


def parse_time_zone(query: bottle.FormsDict, default: str) -> str:
    """The `tz` query parameter: an IANA zone name, TIMEZONE's when absent."""
    value = given_once(query, "tz")
    if not value:
        return default
    if not is_time_zone(value):
        spelt = zone_spelt_as(value)
        hint = f" ({spelt}?)" if spelt else ""
        raise json_error(400, f"tz must be one IANA time zone such as Europe/Paris or Asia/Tokyo{hint}.")
    return value


def parse_site_parameter(query: bottle.FormsDict) -> str | None:
    """The `site` query parameter: a host name, or None (every site) when absent or empty."""
    value = given_once(query, "site")
    if not value:
        return None
    site = parse_site_name(value)
    if site is None:
        raise json_error(400, SITE_PARAMETER + international_hint(value))
    return site


JOB_STATUSES = ("todo", "doing", "succeeded", "failed", "cancelled", "aborted")
MAX_NAME_LENGTH = 128  # procrastinate's task_name and queue_name are varchar(128)
MAX_JOB_ID = 2**63 - 1
JOB_PARAMETERS = frozenset({"status", "task", "queue", "before"})


def parse_filter_parameters(query: bottle.FormsDict, own: tuple[str, ...] = ()) -> dict[str, str]:
    """The filters among the query parameters (tally/web/filters.py); 400 for an unknown name."""
    try:
        return parse_filters({name: query.getall(name) for name in query}, own)
    except InvalidFilter as error:
        raise json_error(400, str(error)) from None


def parse_compare(query: bottle.FormsDict) -> bool:
    """The `compare` query parameter: `previous` adds the period before; absent, nothing."""
    value = given_once(query, "compare")
    if not value:
        return False
    if value != "previous":
        raise json_error(400, "compare must be previous (the period of the same length just before).")
    return True


def parse_reloads(query: bottle.FormsDict) -> bool:
    """The dashboard's `refresh` query parameter: `off` stops the page's reloads; absent, on."""
    value = given_once(query, "refresh")
    if value is None:
        return True
    if value != "off":
        raise json_error(400, "refresh must be off (the page then does not reload itself).")
    return False


def _one_value(query: bottle.FormsDict, name: str) -> str | None:
    return given_once(query, name) or None  # empty: a form's field left blank, so any


def _name(query: bottle.FormsDict, name: str) -> str | None:
    value = _one_value(query, name)
    if value is not None and (len(value) > MAX_NAME_LENGTH or CONTROL_CHARACTERS.search(value)):
        raise json_error(400, f"{name} must be at most {MAX_NAME_LENGTH} characters, no control character.")
    return value


def parse_job_filters(query: bottle.FormsDict, also: frozenset[str] = frozenset()) -> dict[str, str | None]:
    """`status`, `task` and `queue` of the jobs page and the bulk actions; absent or empty: any.
    Any other parameter but `before` (the page the form was on) and those of `also` is a 400: a
    misspelt filter would act on every job (the page showed every job for ?stauts=failed)."""
    refuse_unknown(query, JOB_PARAMETERS | also, "the filters are status, task and queue")
    status = _one_value(query, "status")
    if status is not None and status not in JOB_STATUSES:
        raise json_error(400, f"status must be one of {', '.join(JOB_STATUSES)}.")
    return {"status": status, "task": _name(query, "task"), "queue": _name(query, "queue")}


def parse_before(query: bottle.FormsDict) -> int | None:
    """`before`: the jobs page shows the jobs with smaller ids (the next page); absent: the newest."""
    value = _one_value(query, "before")
    if value is None:
        return None
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_JOB_ID:
        raise json_error(400, "before must be a job id (a whole number from 1).")
    return int(value)
