"""The errors of the pages people open in a browser (the dashboard, the jobs pages and their
forms' actions, the report's preview), as a page.

Every route answers an error as `{"error": "<sentence>"}` with its status (DESIGN.md). A
browser that asked one of the HTML pages for HTML (`Accept: text/html`, as every browser's
address bar does) would show that JSON as text; it gets the same status and sentence as a
small page instead, with the ways out: the same address again (for a 503), the address
without each of its parameters (a filter that counts too many views, a `days=abc`), and the
page with none. curl, scripts and tests, which do not ask for HTML, keep the JSON.

    >>> @page_errors                    # doctest: +SKIP
    ... def show_dashboard(): ...
"""

from __future__ import annotations

import functools
import http
import json
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bottle

from tally.web.dashboard import REFRESH_SECONDS
from tally.web.sessions import PAGE_HEADERS
from tally.web.windows import DEFAULT_DAYS

TEMPLATE = bottle.SimpleTemplate(Path(__file__).with_name("error.tpl").read_text(encoding="utf-8"))
# Parameters offered one by one for removal; an address with more is offered whole, not each.
MOST_PARAMETERS = 12
SHOWN_VALUE = 60  # characters of a parameter's value in a link's label
KEPT = ("share",)  # a share link's reader keeps the token in every way out
PAGE_NAMES = {"/": "The dashboard", "/jobs": "The jobs page"}
ACTIONS = ("/api/jobs/", "/api/queues/")  # where the jobs pages' forms post
FEWER_DAYS = 7
HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-store",
    "Vary": "Accept",
    **PAGE_HEADERS,
}


def wants_html() -> bool:
    """Whether the request asked for HTML, as a browser navigating to a page does."""
    return "text/html" in bottle.request.headers.get("Accept", "")


def is_page(path: str) -> bool:
    """Whether `path` is a page people open in a browser, or where the jobs pages' forms post."""
    return path in PAGE_NAMES or path == "/reports/preview" or path.startswith(("/jobs/", *ACTIONS))


def ways_out(status: int) -> list[tuple[str, str]]:
    """(label, address): this address again (503: the database may answer later), without
    each of its parameters, and the page with none; the share token kept in each."""
    path = bottle.request.path
    if path.startswith(ACTIONS):  # a form of the jobs pages, posted: no address of it to open again
        return [("The jobs page", "/jobs")]
    given = urllib.parse.parse_qsl(bottle.request.query_string, keep_blank_values=True, errors="replace")
    kept = [(name, value) for name, value in given if name in KEPT]
    others = [(name, value) for name, value in given if name not in KEPT]

    def address(pairs: list[tuple[str, str]]) -> str:
        return path + ("?" + urllib.parse.urlencode(pairs) if pairs else "")

    links = []
    if status == http.HTTPStatus.SERVICE_UNAVAILABLE:
        links.append(("Try again", address(given)))
        days = dict(given).get("days", "")
        shorter = not days.isdigit() or int(days) > FEWER_DAYS  # not offered when it is no shorter
        if path == "/" and shorter:  # a count that took too long: a shorter window counts fewer views
            fewer = [(name, value) for name, value in given if name != "days"] + [("days", str(FEWER_DAYS))]
            links.append((f"The last {FEWER_DAYS} days", address(fewer)))
    if 1 < len(others) <= MOST_PARAMETERS:
        for index, (name, value) in enumerate(others):
            if name == "days" and value == str(DEFAULT_DAYS):
                continue  # without it is the same window, and the same answer
            shown = value if len(value) <= SHOWN_VALUE else value[:SHOWN_VALUE] + "\N{HORIZONTAL ELLIPSIS}"
            links.append((f"Without {name}={shown}", address(kept + others[:index] + others[index + 1 :])))
    if path.startswith("/jobs/"):  # a job's page: the list of jobs
        links.append(("The jobs page", "/jobs"))
    elif path == "/reports/preview":  # needs its site: the dashboard lists them
        links.append(("The dashboard", "/"))
    else:
        links.append((PAGE_NAMES.get(path, path) + ", as it opens", address(kept)))
    return links


def as_page(response: bottle.HTTPResponse) -> bottle.HTTPResponse:
    """The JSON error `response` as an HTML page of the same status and sentence."""
    try:
        sentence = json.loads(response.body)["error"]
    except (TypeError, ValueError, KeyError):
        return response
    status = response.status_code
    transient = status == http.HTTPStatus.SERVICE_UNAVAILABLE and bottle.request.method == "GET"
    # The dashboard reloads itself; its 503 page goes on reloading, so a screen left open comes
    # back by itself once the database answers again (a 400 would not change: no reload). Not
    # sooner than the answer's Retry-After: a count too slow for the statement timeout asks for
    # minutes, since every reload would run the same seconds-long count again.
    refresh = None
    if transient and bottle.request.path == "/":
        retry_after = response.headers.get("Retry-After", "")
        refresh = max(REFRESH_SECONDS, int(retry_after)) if retry_after.isdigit() else REFRESH_SECONDS
    body = _render(status, sentence, ways_out(status), refresh)
    return bottle.HTTPResponse(status=status, body=body, headers=HEADERS)


def no_route_page(status: int, sentence: str) -> str:
    """Bottle's own 404 or 405 (no such page: `/jobs/abc`) as a page with the way to the pages
    that are; sets the response's headers."""
    for name, value in HEADERS.items():
        bottle.response.set_header(name, value)
    links = [("The jobs page", "/jobs")] if bottle.request.path.startswith("/jobs/") else []
    return _render(status, sentence, [*links, ("The dashboard", "/")])


def _render(status: int, sentence: str, links: list[tuple[str, str]], refresh: int | None = None) -> str:
    try:
        title = http.HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    return TEMPLATE.render(title=title, status=status, sentence=sentence, links=links, refresh=refresh)


def _is_json_error(result: Any) -> bool:
    return (
        isinstance(result, bottle.HTTPResponse)
        and not isinstance(result, bottle.HTTPError)  # Bottle's own errors go to its handler
        and result.status_code >= 400
        and result.headers.get("Content-Type", "").startswith("application/json")
    )


def page_errors(route: Callable) -> Callable:
    """A page route whose JSON errors reach a browser as a page (see the module's docstring)."""

    @functools.wraps(route)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            result = route(*args, **kwargs)
        except bottle.HTTPResponse as raised:
            if not (_is_json_error(raised) and wants_html()):
                raise
            return as_page(raised)
        return as_page(result) if _is_json_error(result) and wants_html() else result

    return wrapper
