"""Owner sessions ended by a logout, kept in PostgreSQL (migrations/0044) so every web dyno refuses them.

The session is a signed cookie, not a row (tally/web/sessions.py): ending it on the server means
keeping it on a list until it would have expired anyway. The list holds the SHA-256 digest of
the random value each session carries, never the value or the cookie, so reading the table
gives nothing to send. Both statements go to the primary, never the replica: a logout must hold
on every dyno at once, not once a standby has replayed it.

    >>> session_digest("a-sessions-random-value").hex()[:16]
    'b01e333f0d12e26a'
"""

from __future__ import annotations

import hashlib

import psycopg_pool

from tally.db import QUERIES


def session_digest(secret: str) -> bytes:
    """What the table keeps of a session: the digest of its random value."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


class EndedSessions:
    """Record a logout, and tell whether a session was logged out."""

    def __init__(self, pool: psycopg_pool.ConnectionPool, lifetime_seconds: int):
        self.pool = pool
        self.lifetime_seconds = lifetime_seconds

    def contains(self, secret: str) -> bool:
        """Whether a logout ended the session that carries `secret`."""
        with self.pool.connection() as conn:
            return conn.execute(QUERIES["session_ended"], {"digest": session_digest(secret)}).fetchone()[0]

    def end(self, secret: str) -> None:
        """End the session that carries `secret` on every dyno, until it would have expired."""
        with self.pool.connection() as conn:
            conn.execute(
                QUERIES["end_session"],
                {"digest": session_digest(secret), "lifetime_seconds": self.lifetime_seconds},
            )
