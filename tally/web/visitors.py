"""Visitors without cookies: a keyed hash of the day's salt, the site, the client's address
and user agent. Neither the address nor the agent is kept: only the hash is stored.

The salt is random, one per UTC day, kept in PostgreSQL (`visitor_salts`) so every web
process hashes alike; the clock deletes it two days later (jobs/visitor_salts.py), after
which nobody, Tally included, can tell whose hash a stored id was.

    >>> ids = VisitorIds(pool)                                                # doctest: +SKIP
    >>> ids.visitor_id("example.com", "203.0.113.9", "Mozilla/5.0 ...")       # doctest: +SKIP
    -4311719318201558790
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import threading

import psycopg_pool

from tally.db import QUERIES


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
    message = "\0".join((site, address, user_agent)).encode("utf-8", "surrogatepass")
    digest = hmac.new(salt, message, hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class VisitorIds:
    """Visitor ids for the web's requests; the day's salt is read once per process and day."""

    def __init__(self, pool: psycopg_pool.ConnectionPool):
        self.pool = pool
        self._salts: dict[datetime.date, bytes] = {}
        self._lock = threading.Lock()

    def visitor_id(self, site: str, address: str, user_agent: str) -> int:
        return hashed(self._salt(datetime.datetime.now(datetime.UTC).date()), site, address, user_agent)

    def _salt(self, day: datetime.date) -> bytes:
        salt = self._salts.get(day)
        if salt is None:
            with self.pool.connection() as conn:
                salt = bytes(conn.execute(QUERIES["visitor_salt"], {"day": day}).fetchone()[0])
            with self._lock:
                # Only today's salt is ever used again: forget the others.
                self._salts = {day: salt}
        return salt
