"""The owner's session cookie and the login page; tally/web/auth.py decides who may log in.

The cookie is JSON signed with HMAC-SHA256 (itsdangerous; never bottle's `secret=`, which
pickles) under a key derived from ADMIN_TOKEN, so changing the token ends every session. It
holds no token, only a random value the logout form must send back. It is HttpOnly,
SameSite=Lax, Secure when the request came over HTTPS (X-Forwarded-Proto), and expires
after SESSION_SECONDS, or at logout: the logout keeps that value's digest in PostgreSQL until
then (tally/web/ended_sessions.py), so a copy of the cookie opens nothing after it. Lax, not
Strict: the cookie alone changes nothing (logout and the jobs page's actions check their
origin and that value, the CSRF token); Lax lets a link to the dashboard from mail or chat
open it logged in, where Strict would show the login form to an owner who is logged in.

    >>> sessions = session_serializer("admin-token")
    >>> read_session(sessions, sessions.dumps({"csrf": "x"}))
    {'csrf': 'x'}
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import urllib.parse
from pathlib import Path
from typing import Any

import bottle
import itsdangerous

SESSION_COOKIE = "tally_session"
SESSION_SECONDS = 7 * 24 * 3600
# For every HTML page: no framing (the login form), no scripts, and no Referer to other
# sites (a share link carries its token in the URL). Not `no-referrer`: under it Chromium
# sends `Origin: null` with the page's own forms, and the origin check refuses them.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:;"
    " form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
# A longer address to go back to after logging in is dropped (the login leads to the dashboard):
# the form sends it URL-encoded, up to three times as long, and all of it within MAX_FORM_BYTES.
MAX_RETURN_ADDRESS = 1024
LOGIN_TEMPLATE = bottle.SimpleTemplate(Path(__file__).with_name("login.tpl").read_text(encoding="utf-8"))


def session_serializer(admin_token: str) -> itsdangerous.URLSafeTimedSerializer:
    """Sign and check session cookies with a key that only this ADMIN_TOKEN gives."""
    key = hmac.new(admin_token.encode(), b"tally session cookie", hashlib.sha256).digest()
    return itsdangerous.URLSafeTimedSerializer(
        key, salt="tally.session", signer_kwargs={"digest_method": hashlib.sha256}
    )


def read_session(sessions: itsdangerous.URLSafeTimedSerializer, value: str | None) -> dict[str, str] | None:
    """The session in a cookie's value, if it is genuine, unexpired and this token's."""
    if not value:
        return None
    try:
        session = sessions.loads(value, max_age=SESSION_SECONDS)
    except itsdangerous.BadData:  # tampered, expired, or signed under another ADMIN_TOKEN
        return None
    if not isinstance(session, dict) or not isinstance(session.get("csrf"), str):
        return None
    return session


def return_address(address: str | None) -> str | None:
    """`address` if it is a page of this site to go back to after logging in (a path with its
    query), else None. A browser takes `//evil.example` and `/\\evil.example` to another host,
    drops tabs and line breaks (`/<tab>/evil.example` is `//evil.example` to it) and runs
    `javascript:`; so the address starts with one "/" and holds printable ASCII only.

    >>> return_address("/?site=example.com&days=7"), return_address("//evil.example")
    ('/?site=example.com&days=7', None)
    """
    if not address or len(address) > MAX_RETURN_ADDRESS or not address.startswith("/"):
        return None
    if address[1:2] in ("/", "\\") or not all("!" <= character <= "~" for character in address):
        return None
    return address


def start_session(sessions: itsdangerous.URLSafeTimedSerializer, location: str = "/") -> bottle.HTTPResponse:
    """Set a new session's cookie and go to `location` (a checked `return_address`) or the dashboard."""
    response = bottle.HTTPResponse(status=303, headers={"Location": location, **PAGE_HEADERS})
    response.set_cookie(
        SESSION_COOKIE,
        sessions.dumps({"csrf": secrets.token_urlsafe(24)}),
        max_age=SESSION_SECONDS,
        expires=time.time() + SESSION_SECONDS,  # for clients that ignore Max-Age
        **_cookie_attributes(),
    )
    return response


def end_session(problem: str | None = None) -> bottle.HTTPResponse:
    """Clear the session's cookie and go to the dashboard (its login form); with a `problem`
    (the logout could not be recorded), the login form at once, saying it, as a 503."""
    if problem is None:
        response = bottle.HTTPResponse(status=303, headers={"Location": "/", **PAGE_HEADERS})
    else:
        response = login_page(503, problem, login_enabled=True)
    response.delete_cookie(SESSION_COOKIE, **_cookie_attributes())
    return response


def _cookie_attributes() -> dict[str, Any]:
    environ = bottle.request.environ
    scheme = environ.get("HTTP_X_FORWARDED_PROTO") or environ.get("wsgi.url_scheme", "http")
    secure = scheme.split(",")[0].strip().lower() == "https"
    return {"path": "/", "httponly": True, "samesite": "Lax", "secure": secure}


def sent_from_own_pages() -> bool:
    """Whether a form's Origin (or, without one, its Referer) names Tally's own host."""
    environ = bottle.request.environ
    source = environ.get("HTTP_ORIGIN") or environ.get("HTTP_REFERER") or ""
    own = {_authority(environ.get(name, "")) for name in ("HTTP_HOST", "HTTP_X_FORWARDED_HOST")}
    sent_from = _authority(urllib.parse.urlsplit(source).netloc) if "//" in source else ""
    return bool(sent_from) and sent_from in own


def _authority(netloc: str) -> str:
    """host[:port] in lower case, without the default ports, for comparing origins."""
    try:
        parts = urllib.parse.urlsplit("//" + netloc.split(",")[0].strip())
        port = parts.port
    except ValueError:
        return ""
    host = parts.hostname or ""
    return host if port in (None, 80, 443) else f"{host}:{port}"


def login_page(
    status: int, message: str | None, login_enabled: bool, return_to: str | None = None, **headers: str
) -> bottle.HTTPResponse:
    """The login form (or, without ADMIN_TOKEN, why there is none), with `message` above it; the
    form carries `return_to`, the page to go to once logged in (a checked `return_address`)."""
    return bottle.HTTPResponse(
        status=status,
        body=LOGIN_TEMPLATE.render(message=message, login_enabled=login_enabled, return_to=return_to),
        headers={"Content-Type": "text/html; charset=utf-8", **PAGE_HEADERS, **headers},
    )
