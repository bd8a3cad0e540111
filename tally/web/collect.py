"""POST /api/collect: the views that tally.js sends from a site's pages.

A view's site is its URL's host name (lower case, no port), its path the URL's path, its
source the URL's `utm_source` (or `ref`, `source`). Sites outside `SITES` get 403, crawlers
(crawlerdetect's maintained list) a 2xx and a count per day, never a view. The visitor is a
keyed hash (tally/web/visitors.py); the client's address and user agent go into it and
nowhere else: not a column, not a log line.

    >>> beacon = parse_collect_body(b'{"url": "https://Example.com:8443/a?utm_source=news", "width": 390}')
    >>> beacon.site, beacon.path, beacon.source, beacon.referrer, beacon.width, beacon.event
    ('example.com', '/a', 'news', None, 390, None)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import urllib.parse
from collections.abc import Sequence
from typing import Any, NamedTuple

import bottle
import psycopg
import psycopg_pool

from tally.db import QUERIES
from tally.sites import parse_site
from tally.web.audience import audience_of, campaign_of
from tally.web.crawlers import is_crawler
from tally.web.pageviews import CONTROL_CHARACTERS, MAX_TEXT
from tally.web.referrers import stored_referrer
from tally.web.seen import VIEW_FILLS, Seen
from tally.web.view_writer import View, ViewWriter
from tally.web.visitors import VisitorIds, client_address

# A beacon's body: a URL and a referrer of at most MAX_TEXT characters each and an event's
# props (below), as JSON.
MAX_BODY_BYTES = 96 * 1024
MEDIA_TYPES = ("text/plain", "application/json")
SOURCE_PARAMETERS = ("utm_source", "ref", "source")
MAX_SOURCE = 256
FIELDS = {"url", "referrer", "width", "event", "props"}
# An event's limits (DESIGN.md, "Visits and events"); past them a 400 and nothing stored.
MAX_EVENT_NAME = 120
MAX_PROPS = 30
MAX_PROP_KEY = 300
MAX_PROP_VALUE = 2000
# Distinct values kept per site, event and prop; past that a new one is stored as "(other)".
MAX_PROP_VALUES = 1000
MAX_WIDTH = 100_000
# Any page may send views (SITES decides which are kept). A cross-origin isolated page
# (Cross-Origin-Embedder-Policy: require-corp) takes the answer to its no-cors beacon only with
# Cross-Origin-Resource-Policy: cross-origin.
CORS_HEADERS = {"Access-Control-Allow-Origin": "*", "Cross-Origin-Resource-Policy": "cross-origin"}
PREFLIGHT_HEADERS = {
    **CORS_HEADERS,
    "Access-Control-Allow-Methods": "POST",
    "Access-Control-Allow-Headers": "Content-Type",
    "Access-Control-Max-Age": "86400",
    "Cache-Control": "no-store",
}
# An origin as browsers send it: scheme://host[:port], ASCII, nothing else ("null" is not one).
ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[A-Za-z0-9.:\[\]_-]+")
# Line breaks and tabs in a prop's value (an attribute of formatted HTML: data-tally-prop-plan="
#   pro") are folded into one space: the tracker cannot see a 400, so the click would be lost.
FOLDED_WHITESPACE = re.compile(r"\s*[\t\n\r]\s*")


@functools.lru_cache(maxsize=256)  # a site's pages send one origin (or a few): built once each
def cors_headers(origin: str | None, preflight: bool = False) -> dict[str, str]:
    """The CORS headers of a beacon's answer. A request that names its origin gets it back, with
    credentials allowed: `navigator.sendBeacon` with a JSON Blob always sends credentials (and
    so a preflight), and a credentialed request refuses `*`: the view was lost. Collect reads
    no cookie, and its answer tells nothing but what was stored. Callers copy, never change it."""
    headers = PREFLIGHT_HEADERS if preflight else CORS_HEADERS
    if origin is None or not ORIGIN.fullmatch(origin):
        return headers
    return {
        **headers,
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
    }


class Refused(Exception):
    """The request cannot be stored: an HTTP status and the sentence that says why."""

    def __init__(self, status: int, sentence: str):
        super().__init__(sentence)
        self.status = status


@dataclasses.dataclass(frozen=True)
class Beacon:
    """What a beacon's body says of its view."""

    site: str
    path: str
    source: str | None
    referrer: str | None
    medium: str | None = None
    campaign: str | None = None
    width: int | None = None  # window.innerWidth, CSS pixels
    event: str | None = None  # a custom event's name: the beacon is that event, not a view
    props: dict[str, str | int | float | bool] | None = None


@dataclasses.dataclass(frozen=True)
class Outcome:
    status: int
    body: dict[str, Any]


def parse_collect_body(body: bytes) -> Beacon:
    """The view a beacon's body describes; raises Refused(400) saying what is wrong."""
    try:
        document = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise Refused(400, "The body is not valid UTF-8.") from None
    except (ValueError, RecursionError):
        raise Refused(
            400, 'The body must be JSON such as {"url": "https://example.com/", "referrer": ""}.'
        ) from None
    if not isinstance(document, dict):
        raise Refused(400, 'The body must be a JSON object such as {"url": "https://example.com/"}.')
    unknown = sorted(set(document) - FIELDS)
    if unknown:
        raise Refused(
            400,
            f'Unknown field "{unknown[0]}"; a beacon has "url", "referrer", "width", "event" and "props".',
        )
    url = _text(document.get("url"), "url")
    if url is None:
        raise Refused(400, 'The field "url" is missing.')
    try:
        parts = urllib.parse.urlsplit(url)
        hostname, _port = parts.hostname, parts.port  # reading the port checks it
    except ValueError:
        raise Refused(400, '"url" is not a valid URL.') from None
    if parts.scheme.lower() not in ("http", "https") or not hostname:
        raise Refused(400, '"url" must be an http or https URL with a host name.')
    site = parse_site(hostname)
    if site is None:
        raise Refused(400, f'"url" has no valid host name: {hostname!r}.')
    path = parts.path or "/"
    if not path.startswith("/"):
        raise Refused(400, '"url" must have a path starting with "/".')
    medium, campaign = campaign_of(parts.query)
    event = _event_name(document.get("event"))
    props = _props(document.get("props"))
    if props and event is None:
        raise Refused(400, '"props" belong to an event: send "event" with them.')
    return Beacon(
        site,
        path,
        _source(parts.query),
        _referrer(document.get("referrer")),
        medium,
        campaign,
        _width(document.get("width")),
        event,
        props,
    )


def _event_name(value: object) -> str | None:
    name = _text(value, "event")
    if name is None:
        return None
    if not name.strip() or len(name) > MAX_EVENT_NAME:
        raise Refused(400, f'"event" must be a name of 1 to {MAX_EVENT_NAME} characters.')
    return name


def _props(value: object) -> dict[str, str | int | float | bool] | None:
    """An event's props: at most MAX_PROPS keys, each with a string, number or boolean."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise Refused(400, '"props" must be an object such as {"plan": "pro"}.')
    if len(value) > MAX_PROPS:
        raise Refused(400, f'"props" has more than {MAX_PROPS} keys.')
    for key, item in value.items():
        if not key or len(key) > MAX_PROP_KEY or CONTROL_CHARACTERS.search(key):
            raise Refused(400, f"A prop's key must be 1 to {MAX_PROP_KEY} printable characters.")
        _text(key, "props")  # valid Unicode
        if isinstance(item, str):
            folded = FOLDED_WHITESPACE.sub(" ", item)
            if folded != item:
                item = value[key] = folded.strip()
            if len(item) > MAX_PROP_VALUE:
                raise Refused(400, f'Prop "{key[:40]}" is longer than {MAX_PROP_VALUE} characters.')
            _text(item, "props")
        elif isinstance(item, float) and not math.isfinite(item):
            raise Refused(400, f'Prop "{key[:40]}" must be a finite number.')
        elif not isinstance(item, bool | int | float):
            raise Refused(400, f'Prop "{key[:40]}" must be a string, a number or a boolean, not nested.')
        elif len(repr(item)) > MAX_PROP_VALUE:  # shown as text in event_props, as a string is
            raise Refused(400, f'Prop "{key[:40]}" is longer than {MAX_PROP_VALUE} characters.')
    return value


def _width(value: object) -> int | None:
    """The window's width in CSS pixels: a whole number from 0 to MAX_WIDTH, or absent."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise Refused(400, '"width" must be a number of CSS pixels.')
    if not 0 <= value <= MAX_WIDTH:
        raise Refused(400, f'"width" must be from 0 to {MAX_WIDTH}.')
    return int(value)


def _text(value: object, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise Refused(400, f'"{field}" must be a string.')
    if len(value) > MAX_TEXT:
        raise Refused(400, f'"{field}" is longer than {MAX_TEXT} characters.')
    if CONTROL_CHARACTERS.search(value):
        raise Refused(400, f'"{field}" contains a control character.')
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Refused(400, f'"{field}" is not valid Unicode (a lone surrogate).') from None
    return value


def _source(query: str) -> str | None:
    """The campaign: the first printable one of utm_source, ref and source in the page's query
    string, cut to MAX_SOURCE (as medium and campaign are: a stray newline in a mail's link
    loses the source, never the visitor's view)."""
    fields = urllib.parse.parse_qs(query, keep_blank_values=False)
    for name in SOURCE_PARAMETERS:
        for value in fields.get(name, []):
            value = value.strip()
            if value and not CONTROL_CHARACTERS.search(value):
                return value[:MAX_SOURCE]
    return None


def _referrer(value: object) -> str | None:
    """The referring page as stored (tally/web/referrers.py, `stored_referrer`), or None."""
    referrer = _text(value, "referrer")
    if not referrer:
        return None
    try:
        return stored_referrer(referrer)
    except ValueError:
        raise Refused(400, '"referrer" must be a URL such as "https://example.com/page", or empty.') from None


class Collector:
    """Turns one beacon into a stored view, a counted crawler hit or a refusal."""

    def __init__(
        self,
        pool: psycopg_pool.ConnectionPool,
        writer: ViewWriter,
        sites: frozenset[str] | None,
    ):
        self.pool = pool
        self.writer = writer
        # Events go in groups as views do (the same group commit, their own INSERT).
        self.events = ViewWriter(pool, insert=insert_events)
        self.sites = sites
        self.visitors = VisitorIds(pool)

    def collect(self, request: bottle.BaseRequest) -> Outcome:
        media_type = (request.content_type or "").split(";")[0].strip().lower()
        if media_type not in MEDIA_TYPES:
            raise Refused(
                415, "Send the view as Content-Type: text/plain (as tally.js does) or application/json."
            )
        too_large = Refused(413, f"The body is larger than {MAX_BODY_BYTES} bytes.")
        if request.content_length > MAX_BODY_BYTES:
            raise too_large
        body = request.body.read(MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            raise too_large
        beacon = parse_collect_body(body)
        site = beacon.site
        if self.sites is not None and site not in self.sites:
            raise Refused(403, f"{site} is not in SITES: its views and events are not accepted here.")
        user_agent = request.get_header("User-Agent", "").strip()
        if is_crawler(user_agent):
            with self.pool.connection() as conn:
                conn.execute(QUERIES["count_crawler_hit"], {"site": site})
            return Outcome(202, {"stored": 0, "filtered": "crawler"})
        address = client_address(request.get_header("X-Forwarded-For"), request.remote_addr)
        visitor = self.visitors.visitor_id(site, address, user_agent)
        if beacon.event is not None:
            return self._store_event(beacon, visitor)
        seen = Seen(beacon, audience_of(address, user_agent, beacon.width), visitor, request)
        self.writer.write([View._make([fill(seen) for fill in VIEW_FILLS])])
        return Outcome(201, {"stored": 1})

    def _store_event(self, beacon: Beacon, visitor: int) -> Outcome:
        self.events.write([Event(beacon.site, beacon.event or "", beacon.props or {}, beacon.path, visitor)])
        return Outcome(201, {"stored": 1, "event": beacon.event})


class Event(NamedTuple):
    """One custom event to store (checked by parse_collect_body)."""

    site: str
    name: str
    props: dict[str, Any]
    path: str
    visitor: int | None


def insert_events(conn: psycopg.Connection, events: Sequence[Event]) -> None:
    """Store `events` in one statement on `conn` (autocommit: all or none, committed)."""
    # One JSON document (an Event is a tuple: an array), as views go (tally/web/view_writer.py).
    conn.execute(QUERIES["store_events"], {"events": json.dumps(events), "max_values": MAX_PROP_VALUES})
