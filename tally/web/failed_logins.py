"""The failed-login limit: wrong tokens (bearer, share link, login form) per client.

After FAILED_LOGINS wrong tokens in a moving window a client gets 429 with Retry-After for
every token it sends, right or wrong, until the window moves on. The client is the last
X-Forwarded-For entry (what Heroku's router appends), else the peer address, kept as a
digest in this process's memory only: never logged, never stored.

    >>> limit = FailedLogins()
    >>> limit.wait_seconds({"REMOTE_ADDR": "198.51.100.7"}) is None
    True
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping
from typing import Any

import limits
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

FAILED_LOGINS = limits.parse("10/15 minutes")  # wrong tokens per client, in a moving window


class FailedLogins:
    """Counts wrong tokens per client, and says how long a client past the limit must wait."""

    def __init__(self) -> None:
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    def wait_seconds(self, environ: Mapping[str, Any]) -> int | None:
        """Whole seconds until the client of `environ` may send a token again; None if it may now."""
        client = client_key(environ)
        if self.limiter.test(FAILED_LOGINS, client):
            return None
        reset_at = self.limiter.get_window_stats(FAILED_LOGINS, client).reset_time
        return max(1, math.ceil(reset_at - time.time()))

    def count(self, environ: Mapping[str, Any]) -> None:
        """One more wrong token from the client of `environ`."""
        self.limiter.hit(FAILED_LOGINS, client_key(environ))


def client_key(environ: Mapping[str, Any]) -> str:
    """The limit's key for a client: a digest of its address, so that a client naming itself
    with a long X-Forwarded-For entry (200 KB, kept 15 minutes) costs the dyno's memory no
    more than an address does."""
    forwarded = environ.get("HTTP_X_FORWARDED_FOR", "")
    client = forwarded.rsplit(",", 1)[-1].strip() or environ.get("REMOTE_ADDR", "")
    return hashlib.sha256(client.encode("utf-8", "surrogatepass")).hexdigest()[:32]
