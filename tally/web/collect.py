"""POST /api/collect: the views that tally.js sends from a site's pages.

A view's site is its URL's host name (lower case, no port), its path the URL's path, its
source the URL's `utm_source` (or `ref`, `source`). Sites outside `SITES` get 403, crawlers
(crawlerdetect's maintained list) a 2xx and a count per day, never a view. The visitor is a
keyed hash (tally/web/visitors.py); the client's address and user agent go into it and
nowhere else: not a column, not a log line. What a beacon's body may say, and how it is
checked, is tally/web/beacon.py's.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import bottle
import psycopg
import psycopg_pool

from tally.db import QUERIES
from tally.web.audience import audience_of
from tally.web.beacon import Beacon, Refused, parse_collect_body
from tally.web.crawlers import is_crawler
from tally.web.later import LATER, Later
from tally.web.seen import VIEW_FILLS, Seen
from tally.web.view_writer import View, ViewWriter
from tally.web.visitors import Visitor, VisitorIds, client_address

# A beacon's body: a URL and a referrer of at most MAX_URL characters each and an event's
# props (below), as JSON.
MAX_BODY_BYTES = 96 * 1024
MEDIA_TYPES = ("text/plain", "application/json")
# Distinct values kept per site, event and prop; past that a new one is stored as "(other)".
MAX_PROP_VALUES = 1000
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


class Outcome(NamedTuple):
    """The answer to a beacon: its status and JSON body."""

    status: int
    body: dict[str, Any]


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
        # The socket's peer: Bottle's `remote_addr` would be the first X-Forwarded-For entry.
        address = client_address(request.get_header("X-Forwarded-For"), request.environ.get("REMOTE_ADDR"))
        # The id goes with its salt's day: the insert dates the view (event) on that day.
        visitor = self.visitors.visitor(site, address, user_agent)
        # Served by web.py, the answer is held until the commit and no thread waits (later.py).
        later = request.environ.get(LATER)
        if beacon.event is not None:
            return self._store_event(beacon, visitor, later)
        seen = Seen(beacon, audience_of(address, user_agent, beacon.width), visitor.id, request)
        self.writer.write([View._make([*[fill(seen) for fill in VIEW_FILLS], visitor.day])], later)
        return Outcome(201, {"stored": 1})

    def _store_event(self, beacon: Beacon, visitor: Visitor, later: Later | None) -> Outcome:
        name, props = beacon.event or "", beacon.props or {}
        self.events.write([Event(beacon.site, name, props, beacon.path, visitor.id, visitor.day)], later)
        return Outcome(201, {"stored": 1, "event": beacon.event})


class Event(NamedTuple):
    """One custom event to store (checked by parse_collect_body)."""

    site: str
    name: str
    props: dict[str, Any]
    path: str
    visitor: int | None
    # The UTC day (ISO) of the visitor id's salt: the event is dated on it (None: now()).
    salt_day: str | None = None


def insert_events(conn: psycopg.Connection, events: Sequence[Event]) -> None:
    """Store `events` in one statement on `conn` (autocommit: all or none, committed)."""
    # One JSON document (an Event is a tuple: an array), as views go (tally/web/view_writer.py).
    conn.execute(QUERIES["store_events"], {"events": json.dumps(events), "max_values": MAX_PROP_VALUES})
