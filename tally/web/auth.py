"""Who may read what: the owner, a share link, a Prometheus scraper, or everyone.

The rule for every route (DESIGN.md, "HTTP API"); each guard is one decorator line under
the route's `@app.get`/`@app.post`:

    no guard               GET /api/health, GET /tally.js, POST /api/collect, POST /api/pageviews:
                           they write views or tell nothing about them
    @auth.owner_or_share   GET / and GET /api/stats: the owner, `?share=$SHARE_TOKEN`, or anyone
                           when PUBLIC_DASHBOARD=true; read-only, never jobs, sites, export, metrics
    @auth.owner_only       every other read (/api/jobs..., /api/sites, /api/export):
                           `Authorization: Bearer $ADMIN_TOKEN` or the dashboard's session cookie
    @auth.admin_token_only every change (POST /api/jobs/...): the bearer token only, never the
                           cookie, so no page on another site can make a browser change anything
    @auth.metrics_reader   GET /metrics: `Bearer $METRICS_TOKEN`, or the owner

A refused request gets 401 when some credential would open it and 403 when none can (a
wrong token; ADMIN_TOKEN unset), in JSON under /api/ and /metrics, elsewhere as the login
page; the route never runs. Wrong tokens (bearer, share link, login form) count as failed
logins: after FAILED_LOGINS of them a client gets 429 with Retry-After for every token it
sends until the window moves on. The client is the last X-Forwarded-For entry (what
Heroku's router appends), else the peer address; it is kept in memory only, never logged.

The session cookie is JSON signed with HMAC-SHA256 (itsdangerous; no pickle) under a key
derived from ADMIN_TOKEN, so changing the token ends every session. It is HttpOnly,
SameSite=Lax, Secure when the request came over HTTPS (X-Forwarded-Proto), and expires
after SESSION_SECONDS. Lax, not Strict: the cookie opens only reads, every change needs
the bearer token, and logout checks its Origin and a token from the session; Lax lets a
link to the dashboard from mail or chat open it logged in, where Strict shows the login
form to an owner who is logged in.

    >>> auth = Auth(config)                        # doctest: +SKIP
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
import math
import secrets
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bottle
import itsdangerous
import limits
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from tally.config import Config

SESSION_COOKIE = "tally_session"
SESSION_SECONDS = 7 * 24 * 3600
FAILED_LOGINS = limits.parse("10/15 minutes")  # wrong tokens per client, in a moving window
MAX_FORM_BYTES = 4096
READER = "tally.reader"  # the WSGI environ key where a guard leaves who is reading
# For every HTML page: no framing (the login form), no scripts, and no Referer to other
# sites (a share link carries its token in the URL). Not `no-referrer`: under it Chromium
# sends `Origin: null` with the page's own forms, and the login's origin check refuses them.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:;"
    " form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
LOGIN_TEMPLATE = bottle.SimpleTemplate(Path(__file__).with_name("login.tpl").read_text(encoding="utf-8"))


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


def session_serializer(admin_token: str) -> itsdangerous.URLSafeTimedSerializer:
    """Sign and check session cookies with a key that only this ADMIN_TOKEN gives."""
    key = hmac.new(admin_token.encode(), b"tally session cookie", hashlib.sha256).digest()
    return itsdangerous.URLSafeTimedSerializer(
        key, salt="tally.session", signer_kwargs={"digest_method": hashlib.sha256}
    )


class Auth:
    """The guards, the session cookie and the failed-login limit of one web app."""

    def __init__(self, config: Config):
        self.admin_token = config.admin_token
        self.share_token = config.share_token
        self.metrics_token = config.metrics_token
        self.public = config.public_dashboard
        self.sessions = session_serializer(config.admin_token) if config.admin_token else None
        self.failures = MovingWindowRateLimiter(MemoryStorage())

    # --- the guards ------------------------------------------------------------------------

    def owner_only(self, route: Callable) -> Callable:
        return self._guard(route, self._owner_reads)

    def owner_or_share(self, route: Callable) -> Callable:
        return self._guard(route, self._shared_reads)

    def admin_token_only(self, route: Callable) -> Callable:
        return self._guard(route, self._changes)

    def metrics_reader(self, route: Callable) -> Callable:
        return self._guard(route, self._metrics_reads)

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
            "share": bottle.request.query.get("share") if self.reader() is Reader.SHARE else None,
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
        if self.admin_token and self._is_owner():
            return Reader.OWNER
        if self.public:
            return Reader.PUBLIC
        shared = bottle.request.query.get("share")
        if shared is not None:
            self._check_failures()
            if self.share_token and same_token(shared, self.share_token):
                return Reader.SHARE
            self._count_failure()
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
        self._check_failures()
        if same_token(token, self.admin_token):
            return Reader.OWNER
        self._count_failure()
        raise self._refuse(403, "The admin token is not valid.")

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
        return token.strip() or None

    def _is_owner(self, other_token: str | None = None) -> bool:
        """The admin bearer token (or `other_token`), else a live session; a wrong token is refused."""
        token = self._bearer()
        if token is None:
            return self._session() is not None
        self._check_failures()
        if any(expected and same_token(token, expected) for expected in (self.admin_token, other_token)):
            return True
        self._count_failure()
        raise self._refuse(403, "The token is not valid.")

    def _session(self) -> dict[str, str] | None:
        """The signed session the cookie carries, if it is genuine, unexpired and this token's."""
        value = bottle.request.get_cookie(SESSION_COOKIE)
        if not value or self.sessions is None:
            return None
        try:
            session = self.sessions.loads(value, max_age=SESSION_SECONDS)
        except itsdangerous.BadData:  # tampered, expired, or signed under another ADMIN_TOKEN
            return None
        if not isinstance(session, dict) or not isinstance(session.get("csrf"), str):
            return None
        return session

    # --- failed logins ---------------------------------------------------------------------

    def _client(self) -> str:
        forwarded = bottle.request.environ.get("HTTP_X_FORWARDED_FOR", "")
        return forwarded.rsplit(",", 1)[-1].strip() or bottle.request.environ.get("REMOTE_ADDR", "")

    def _check_failures(self) -> None:
        """429 for every token from a client that sent too many wrong ones, right or wrong."""
        client = self._client()
        if self.failures.test(FAILED_LOGINS, client):
            return
        reset_at = self.failures.get_window_stats(FAILED_LOGINS, client).reset_time
        wait = max(1, math.ceil(reset_at - time.time()))
        raise self._refuse(
            429, f"Too many wrong tokens from here: try again in {wait} s.", **{"Retry-After": str(wait)}
        )

    def _count_failure(self) -> None:
        self.failures.hit(FAILED_LOGINS, self._client())

    # --- login and logout ------------------------------------------------------------------

    def login_page(self) -> bottle.HTTPResponse:
        return self._page(200, None)

    def log_in(self) -> bottle.HTTPResponse:
        """Check the form's token; on success set the session cookie and go to the dashboard."""
        self._check_same_origin()
        if not self.admin_token or self.sessions is None:
            return self._page(403, "Owner login is off: set ADMIN_TOKEN and restart Tally.")
        if bottle.request.content_length > MAX_FORM_BYTES:
            return self._page(413, "That form is far larger than a token.")
        token = (bottle.request.forms.getunicode("token") or "").strip()
        if not token:
            return self._page(400, "Enter the admin token.")
        self._check_failures()
        if not same_token(token, self.admin_token):
            self._count_failure()
            return self._page(401, "That is not the admin token.")
        response = bottle.HTTPResponse(status=303, headers={"Location": "/", **PAGE_HEADERS})
        session = self.sessions.dumps({"csrf": secrets.token_urlsafe(24)})
        response.set_cookie(
            SESSION_COOKIE,
            session,
            max_age=SESSION_SECONDS,
            expires=time.time() + SESSION_SECONDS,  # for clients that ignore Max-Age
            **self._cookie_attributes(),
        )
        return response

    def log_out(self) -> bottle.HTTPResponse:
        """Clear the session cookie; the form must come from the dashboard of this session."""
        self._check_same_origin()
        session = self._session()
        if bottle.request.content_length > MAX_FORM_BYTES:
            return self._page(413, "That form is far larger than a logout.")
        sent = bottle.request.forms.getunicode("csrf") or ""
        if session is not None and not same_token(sent, session["csrf"]):
            return self._page(403, "That logout form is not from this session: reload the dashboard.")
        response = bottle.HTTPResponse(status=303, headers={"Location": "/", **PAGE_HEADERS})
        response.delete_cookie(SESSION_COOKIE, **self._cookie_attributes())
        return response

    def _cookie_attributes(self) -> dict[str, Any]:
        environ = bottle.request.environ
        scheme = environ.get("HTTP_X_FORWARDED_PROTO") or environ.get("wsgi.url_scheme", "http")
        secure = scheme.split(",")[0].strip().lower() == "https"
        return {"path": "/", "httponly": True, "samesite": "Lax", "secure": secure}

    def _check_same_origin(self) -> None:
        """Forms are only taken from Tally's own pages: their Origin (or Referer) names its host."""
        environ = bottle.request.environ
        source = environ.get("HTTP_ORIGIN") or environ.get("HTTP_REFERER") or ""
        own = {_authority(environ.get(name, "")) for name in ("HTTP_HOST", "HTTP_X_FORWARDED_HOST")}
        sent_from = _authority(urllib.parse.urlsplit(source).netloc) if "//" in source else ""
        if not sent_from or sent_from not in own:
            raise self._page(403, "This form only works from Tally's own pages.")

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
        return self._page(status, None if status == 401 else sentence, **headers)

    def _page(self, status: int, message: str | None, **headers: str) -> bottle.HTTPResponse:
        body = LOGIN_TEMPLATE.render(message=message, login_enabled=bool(self.admin_token))
        return bottle.HTTPResponse(
            status=status,
            body=body,
            headers={"Content-Type": "text/html; charset=utf-8", **PAGE_HEADERS, **headers},
        )


def _authority(netloc: str) -> str:
    """host[:port] in lower case, without the default ports, for comparing origins."""
    try:
        parts = urllib.parse.urlsplit("//" + netloc.split(",")[0].strip())
        port = parts.port
    except ValueError:
        return ""
    host = parts.hostname or ""
    return host if port in (None, 80, 443) else f"{host}:{port}"
