"""Who may read what: the owner, a share link, a Prometheus scraper, or everyone.

The rule for every route (DESIGN.md, "HTTP API"); each guard is one decorator line under
the route's `@app.get`/`@app.post`:

    no guard               GET /api/health, GET /tally.js, POST /api/collect, POST /api/pageviews:
                           they write views or tell nothing about them
    @auth.owner_or_share   GET / and GET /api/stats: the owner, `?share=$SHARE_TOKEN`, or anyone
                           when PUBLIC_DASHBOARD=true; read-only, never jobs, sites, export, metrics
    @auth.owner_only       every other read (/api/jobs..., /api/sites, /api/export):
                           `Authorization: Bearer $ADMIN_TOKEN` or the dashboard's session cookie
    @auth.admin_token_only a change that only scripts make: the bearer token only, never the cookie
    @auth.owner_changes    the changes the jobs page makes (POST /api/jobs/..., /api/queues/...):
                           the bearer token, or the session cookie together with the form's CSRF
                           token (the session's own) from a page of Tally's own origin; so no page
                           on another site can make a logged-in browser change anything
    @auth.metrics_reader   GET /metrics: `Bearer $METRICS_TOKEN`, or the owner

A refused request gets 401 when some credential would open it and 403 when none can (a
wrong token; ADMIN_TOKEN unset), in JSON under /api/ and /metrics, elsewhere as the login
page; the route never runs. Wrong tokens (bearer, share link, login form) count as failed
logins: after FAILED_LOGINS of them a client gets 429 with Retry-After for every token it
sends until the window moves on (tally/web/failed_logins.py: the client is the last
X-Forwarded-For entry, kept in memory only, never logged).

Logging in and out is tally/web/login.py (the signed session cookie, why SameSite=Lax:
tally/web/sessions.py). A logout ends the session on every dyno (tally/web/ended_sessions.py):
a request with a session cookie looks there first, on the primary. This module decides who may.

    >>> auth = Auth(config, EndedSessions(pool, sessions.SESSION_SECONDS))  # doctest: +SKIP
    >>> @app.get("/api/sites")                     # doctest: +SKIP
    ... @auth.owner_only
    ... def list_sites(): ...
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import json
import logging
from collections.abc import Callable
from typing import Any

import bottle
import psycopg
import psycopg_pool

from tally.config import Config
from tally.logs import describe_error
from tally.web import sessions
from tally.web.ended_sessions import EndedSessions
from tally.web.failed_logins import FailedLogins
from tally.web.headers import form_fields

logger = logging.getLogger("tally.web.auth")

MAX_FORM_BYTES = 4096
READER = "tally.reader"  # the WSGI environ key where a guard leaves who is reading
ACTOR = "tally.actor"  # where @owner_changes leaves who acts, for the log: never an address
SESSION = "tally.session"  # where the request's session is kept once read (a query each time)
# Whatever stops the database from saying whether a session was logged out.
SESSION_CHECK_FAILED = (psycopg.Error, psycopg_pool.PoolTimeout)
SESSION_UNCHECKED = "The database is unreachable, so this session cannot be checked; try again shortly."
BY_TOKEN = "owner (bearer token)"
BY_SESSION = "owner (session)"


class Reader(enum.Enum):
    """Who a guard let in: the owner sees everything, the others the numbers only."""

    OWNER = "owner"
    SHARE = "share link"
    PUBLIC = "public"


def same_token(given: str, expected: str) -> bool:
    """Compare in constant time; hashing first hides the expected token's length too."""
    return hmac.compare_digest(
        hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest(),
        hashlib.sha256(expected.encode("utf-8")).digest(),
    )


class Auth:
    """The guards, the credentials they read and the failed-login limit of one web app."""

    def __init__(self, config: Config, ended: EndedSessions):
        self.ended = ended
        self.admin_token = config.admin_token
        self.share_token = config.share_token
        self.metrics_token = config.metrics_token
        self.public = config.public_dashboard
        self.sessions = sessions.session_serializer(config.admin_token) if config.admin_token else None
        self.failures = FailedLogins()

    # --- the guards ------------------------------------------------------------------------

    def owner_only(self, route: Callable) -> Callable:
        return self._guard(route, self._owner_reads)

    def owner_or_share(self, route: Callable) -> Callable:
        return self._guard(route, self._shared_reads)

    def admin_token_only(self, route: Callable) -> Callable:
        return self._guard(route, self._changes)

    def metrics_reader(self, route: Callable) -> Callable:
        return self._guard(route, self._metrics_reads)

    def owner_changes(self, route: Callable) -> Callable:
        return self._guard(route, self._owner_changes)

    def actor(self) -> str:
        """Who @owner_changes let act: the bearer token or the session (for the log)."""
        return bottle.request.environ.get(ACTOR, BY_TOKEN)

    def csrf_token(self) -> str | None:
        """The current session's CSRF token, which the jobs page's forms carry."""
        session = self._session()
        return session["csrf"] if session else None

    def reads_metrics(self) -> bool:
        """Whether the request carries the admin or metrics token or the owner's session; never
        refuses (a public route asks), but a wrong token counts, as everywhere, toward the limit."""
        try:
            return self._is_owner(self.metrics_token)
        except bottle.HTTPResponse:  # a wrong token (counted), or a client past the limit
            return False

    def reader(self) -> Reader:
        """Who the guard of the current route let in."""
        return bottle.request.environ[READER]

    def page_context(self) -> dict[str, Any]:
        """What the dashboard needs to know about its reader: owner parts, logout, share links."""
        owner = self.reader() is Reader.OWNER
        session = self._session() if owner else None
        return {
            "owner": owner,
            "logout_token": session["csrf"] if session else None,
            "share": bottle.request.query.getunicode("share") if self.reader() is Reader.SHARE else None,
        }

    def _guard(self, route: Callable, decide: Callable[[], Reader]) -> Callable:
        @functools.wraps(route)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            bottle.request.environ[READER] = decide()
            return route(*args, **kwargs)

        return guarded

    def _owner_reads(self) -> Reader:
        if not self.admin_token:
            raise self._refuse(403, "Owner pages are off: set ADMIN_TOKEN to open them.")
        if self._is_owner():
            return Reader.OWNER
        raise self._refuse(401, "Log in on the dashboard, or send Authorization: Bearer <ADMIN_TOKEN>.")

    def _shared_reads(self) -> Reader:
        # Given twice, which one is meant is not known: Bottle would read the last, so a link with
        # a wrong token before the right one opened. Refused whoever asks, as README says.
        if len(bottle.request.query.getall("share")) > 1:
            raise self._refuse(400, "Give share once: open the share link as it was sent.")
        if self.admin_token and self._is_owner():
            return Reader.OWNER
        if self.public:
            return Reader.PUBLIC
        shared = bottle.request.query.getunicode("share")
        if shared is not None:
            self.check_failures()
            if self.share_token and same_token(shared, self.share_token):
                return Reader.SHARE
            self.count_failure()
            raise self._refuse(403, "This share link is not valid.")
        if not (self.admin_token or self.share_token):
            raise self._refuse(
                403, "Stats are private and nothing opens them: set ADMIN_TOKEN (or PUBLIC_DASHBOARD=true)."
            )
        raise self._refuse(401, "Log in, open a share link, or send Authorization: Bearer <ADMIN_TOKEN>.")

    def _changes(self) -> Reader:
        if not self.admin_token:
            raise self._refuse(403, "Admin endpoints are disabled: set ADMIN_TOKEN to enable them.")
        token = self._bearer()
        if not token:
            raise self._refuse(401, "Send Authorization: Bearer <ADMIN_TOKEN>.")
        self.check_failures()
        if same_token(token, self.admin_token):
            return Reader.OWNER
        self.count_failure()
        raise self._refuse(403, "The admin token is not valid.")

    def _owner_changes(self) -> Reader:
        if not self.admin_token:
            raise self._refuse(403, "Admin endpoints are disabled: set ADMIN_TOKEN to enable them.")
        if self._bearer() is not None:
            bottle.request.environ[ACTOR] = BY_TOKEN
            return self._changes()
        session = self._session()
        if session is None:
            raise self._refuse(401, "Log in on the dashboard, or send Authorization: Bearer <ADMIN_TOKEN>.")
        if not sessions.sent_from_own_pages():
            raise self._refuse(403, "This form only works from Tally's own pages.")
        if bottle.request.content_length > MAX_FORM_BYTES:
            raise self._refuse(413, "That form is far larger than an action.")
        sent = form_fields().getunicode("csrf") or ""
        if not same_token(sent, session["csrf"]):
            raise self._refuse(
                403, "That form's CSRF token is missing or not this session's: reload the page."
            )
        bottle.request.environ[ACTOR] = BY_SESSION
        return Reader.OWNER

    def _metrics_reads(self) -> Reader:
        if not (self.admin_token or self.metrics_token):
            raise self._refuse(403, "Metrics are off: set METRICS_TOKEN (or ADMIN_TOKEN) to open them.")
        if self._is_owner(self.metrics_token):
            return Reader.OWNER
        raise self._refuse(401, "Send Authorization: Bearer <METRICS_TOKEN>.")

    # --- credentials -----------------------------------------------------------------------

    def _bearer(self) -> str | None:
        """The token of an `Authorization: Bearer` header; None when there is none."""
        scheme, _, token = bottle.request.get_header("Authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        token = token.strip()
        # A token has no comma or space (RFC 6750): two headers, which the server joins with
        # ", ". Said as such, not counted as a wrong token (a client that sent the right one
        # twice was told its token was not valid, and counted towards the failed-login limit).
        if "," in token or " " in token:
            raise self._refuse(400, "Send one Authorization header, with one Bearer token.")
        return token or None

    def _is_owner(self, other_token: str | None = None) -> bool:
        """The admin bearer token (or `other_token`), else a live session; a wrong token is refused."""
        token = self._bearer()
        if token is None:
            return self._session() is not None
        self.check_failures()
        if any(expected and same_token(token, expected) for expected in (self.admin_token, other_token)):
            return True
        self.count_failure()
        raise self._refuse(403, "The token is not valid.")

    def signed_session(self) -> dict[str, str] | None:
        """The session the cookie carries, if it is genuine, unexpired and this token's."""
        if self.sessions is None:
            return None
        return sessions.read_session(self.sessions, bottle.request.get_cookie(sessions.SESSION_COOKIE))

    def _session(self) -> dict[str, str] | None:
        """The request's live session: signed, and not ended by a logout (asked once a request)."""
        environ = bottle.request.environ
        if SESSION not in environ:
            session = self.signed_session()
            if session is not None:
                try:
                    ended = self.ended.contains(session["csrf"])
                except SESSION_CHECK_FAILED as error:
                    # Not knowing is not a login: neither the stats nor the login form.
                    logger.warning("session check failed: %s", describe_error(error))
                    raise self._refuse(503, SESSION_UNCHECKED) from None
                session = None if ended else session
            environ[SESSION] = session
        return environ[SESSION]

    # --- failed logins (tally/web/failed_logins.py) -------------------------------------

    def check_failures(self) -> None:
        """429 for every token from a client that sent too many wrong ones, right or wrong."""
        wait = self.failures.wait_seconds(bottle.request.environ)
        if wait is not None:
            raise self._refuse(
                429, f"Too many wrong tokens from here: try again in {wait} s.", **{"Retry-After": str(wait)}
            )

    def count_failure(self) -> None:
        self.failures.count(bottle.request.environ)

    # --- answers ---------------------------------------------------------------------------

    def _refuse(self, status: int, sentence: str, **headers: str) -> bottle.HTTPResponse:
        path = bottle.request.path
        if path.startswith("/api/") or path == "/metrics":
            if status == 401:
                headers["WWW-Authenticate"] = "Bearer"
            return bottle.HTTPResponse(
                status=status,
                body=json.dumps({"error": sentence}),
                headers={"Content-Type": "application/json", "Cache-Control": "no-store", **headers},
            )
        # A page's 401 is the login form itself, which says why; other refusals say theirs.
        return self.page(status, None if status == 401 else sentence, **headers)

    def page(self, status: int, message: str | None, **headers: str) -> bottle.HTTPResponse:
        return sessions.login_page(
            status, message, self.sessions is not None, self.return_address(), **headers
        )

    def return_address(self) -> str | None:
        """The page to open once logged in: the one a 401 refused (this request's own address),
        or the one the login form carries (and a link to it names: /login?next=), if it is
        this site's (sessions.return_address); None for the dashboard."""
        request = bottle.request
        if request.path == "/login":
            if request.method != "POST":
                given = request.query.getunicode("next")
            elif request.content_length <= MAX_FORM_BYTES:
                given = form_fields().getunicode("next")
            else:
                given = None
        elif request.method in ("GET", "HEAD"):
            query = request.query_string
            given = request.urlparts.path + (f"?{query}" if query else "")
        else:
            given = None
        return sessions.return_address(given)
