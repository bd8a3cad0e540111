"""Visitors without cookies: a keyed hash of the day's salt, the site, the client's address
and user agent. Neither the address nor the agent is kept: only the hash is stored.

The salt is random, one per UTC day, kept in PostgreSQL (`visitor_salts`) so every web
process hashes alike; the clock deletes it two days later (jobs/visitor_salts.py), after
which nobody, Tally included, can tell whose hash a stored id was.

    >>> ids = VisitorIds(pool)                                                # doctest: +SKIP
    >>> ids.visitor("example.com", "203.0.113.9", "Mozilla/5.0 ...")          # doctest: +SKIP
    Visitor(id=-4311719318201558790, day='2026-05-01')
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import hmac
import time
from typing import NamedTuple

import psycopg_pool

from tally.db import QUERIES

# The longest a web process counts on from one reading of the database's clock: the monotonic
# clock's drift from it over that time (NTP slews a clock by 500 ppm at most: 0.3 s) bounds the
# estimate's error, with half the reading's round trip. One query a process per 10 minutes.
RELEARN_SECONDS = 600.0


def client_address(forwarded_for: str | None, remote_addr: str | None) -> str:
    """The client's address: behind a router (Heroku's), the last X-Forwarded-For entry, the one
    the router itself added; else the socket's peer."""
    if forwarded_for:
        last = forwarded_for.split(",")[-1].strip()
        if last:
            return last
    return remote_addr or ""


def hashed(salt: bytes, site: str, address: str, user_agent: str) -> int:
    """HMAC-SHA256 keyed by the salt, cut to a signed 64-bit integer (PostgreSQL bigint)."""
    keyed = _keyed(salt).copy()  # the key hashed in once a salt, not once a view (1.5 -> 1.0 us)
    keyed.update("\0".join((site, address, user_agent)).encode("utf-8", "surrogatepass"))
    return int.from_bytes(keyed.digest()[:8], "big", signed=True)


@functools.lru_cache(maxsize=2)  # the day's salt, and the day before's around midnight: no older
def _keyed(salt: bytes) -> hmac.HMAC:
    return hmac.new(salt, digestmod=hashlib.sha256)


class Visitor(NamedTuple):
    """A visitor's id and the UTC day (ISO, as the database's clock tells it) whose salt made it:
    the insert dates the view on that day (tally/queries.sql, `insert_page_views`)."""

    id: int
    day: str


class _Known(NamedTuple):
    """A day's salt and when, by the monotonic clock, the database's clock is on that day."""

    day: str
    salt: bytes
    starts: float  # monotonic time at which the database's clock was (will be) at the day's 00:00
    ends: float  # at the next 00:00, or at the next reading of the database's clock if sooner


class VisitorIds:
    """Visitor ids for the web's requests, with the salt of the database's UTC day.

    Views are dated by the database's clock (`now()` at their INSERT), so the salt's day comes
    from that clock too, never the web's: a web a minute off made the ids of views around
    midnight with one day's salt while they were dated on the other (a visitor counted twice,
    or an id across two days). The day's salt is read with the database's time in the same
    statement; from then on the web counts on with its monotonic clock (which no step of the
    system time moves) and reads the database's clock again when that count passes a UTC
    midnight, or RELEARN_SECONDS after the last reading. No request costs a query but the
    first of each (estimated) day and one per RELEARN_SECONDS.

    The estimate is off by at most half the round trip of that statement plus the monotonic
    clock's drift since (ppm). A view whose id was made within that of midnight, or that
    waits for its group's INSERT across it, can still find `now()` on the other day: the
    insert then dates it on its id's day, at that day's nearest instant (`Visitor.day`).
    """

    def __init__(self, pool: psycopg_pool.ConnectionPool):
        self.pool = pool
        self._known: _Known | None = None

    def visitor(self, site: str, address: str, user_agent: str) -> Visitor:
        """The visitor's id with the salt of the database's UTC day now, and that day."""
        known = self._known
        if known is None or not known.starts <= time.monotonic() < known.ends:
            known = self._learn()
        return Visitor(hashed(known.salt, site, address, user_agent), known.day)

    def _learn(self) -> _Known:
        """Read the database's UTC day, its salt and its clock in one statement. Not under a
        lock: the requests that meet a day's end at once each read it (as they each read the
        day's salt before), and none waits behind another's stuck query."""
        with self.pool.connection() as conn:
            sent = time.monotonic()  # not before: the wait for a connection is no round trip
            day, salt, database_now = conn.execute(QUERIES["visitor_salt"]).fetchone()
            received = time.monotonic()
        # The database read its clock between sending and receiving: the midpoint is off by
        # at most half the round trip.
        at = (sent + received) / 2
        midnight = datetime.datetime.combine(day, datetime.time(), datetime.UTC)
        since = (database_now - midnight).total_seconds()
        known = _Known(
            day=day.isoformat(),
            salt=bytes(salt),
            starts=at - since,
            ends=min(at + 86_400.0 - since, at + RELEARN_SECONDS),
        )
        self._known = known  # one assignment: requests read the whole tuple or the one before
        return known
