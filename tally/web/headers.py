"""Request headers and query strings as real clients send them, made safe once, before any
route reads them.

A WSGI server hands each header over as a latin-1 `str` (the bytes as they came); Bottle's
`request.get_header` then decodes it as UTF-8 and raises UnicodeDecodeError on anything
else, so an app's user agent with a version string in another encoding made every route
that reads a header answer 500. `clean_headers` (a `before_request` hook) re-decodes each
header as UTF-8 with U+FFFD for the bytes that are not, stores it back the way Bottle
expects, drops a Cookie header that Python's cookie parser refuses (Bottle would raise
CookieError in any route that reads a cookie: unreadable cookies are no cookies, so no
session), refuses a Content-Length that is not a whole number (400), and sends Bottle's own
traceback dump (`wsgi.errors`, which carries exception messages and so input) nowhere:
the app's error handler logs errors itself, without messages (tally.logs.describe_error).

Bottle's `request.query` hands each value over the same way, as the latin-1 `str` of its
bytes: `?campaign=%C3%A9t%C3%A9` read as `Ã©tÃ©`, so a filter by any value that is not
ASCII (a campaign, an event's name) matched nothing, and one whose UTF-8 bytes hold a C1
control's (`Ë`) was refused. `decode_query` (the same hook) puts the query decoded as UTF-8
in its place, and refuses a query that is not UTF-8 (400); and an address whose path is not
UTF-8, which Bottle would answer with its undecodable bytes dropped (`/api/stats%FF` as
`/api/stats`).

A form's body is read only by the routes that take one, through `form_fields`: Bottle's
parser raises on a multipart form it cannot read (a field's bytes not in its part's charset,
a part's header parameter without "="), which made the public login form answer 500.

    >>> environ = {"HTTP_USER_AGENT": "App/1.0 (\\xe9t\\xe9)", "CONTENT_TYPE": "text/plain"}
    >>> clean_headers(environ)
    >>> environ["HTTP_USER_AGENT"].encode("latin-1").decode("utf-8")
    'App/1.0 (\\ufffdt\\ufffd)'
"""

from __future__ import annotations

import http.cookies
import json
import re
from collections.abc import MutableMapping
from typing import Any

import bottle

from tally.web import error_page

# Bottle decodes these through `request.headers`; CONTENT_TYPE also through `content_type`.
DECODED = re.compile(r"HTTP_.*|CONTENT_TYPE")
CONTENT_LENGTH = re.compile(r"[0-9]{1,15}")


class Discard:
    """A `wsgi.errors` stream that drops what it is given."""

    def write(self, text: str) -> int:
        return len(text)

    def writelines(self, lines: Any) -> None:
        pass

    def flush(self) -> None:
        pass


DISCARD = Discard()


def as_utf8_latin1(value: str) -> str:
    """`value` (the latin-1 str of a header's bytes) with its bytes made valid UTF-8."""
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:  # not from a WSGI server: already text
        return value.encode("utf-8", "replace").decode("latin-1")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace").encode("utf-8").decode("latin-1")
    return value


def clean_headers(environ: MutableMapping[str, Any]) -> None:
    """Make every header of `environ` decodable by Bottle; raise a 400 for a bad Content-Length."""
    # ASCII is the same text in latin-1 and UTF-8: most requests have nothing to re-decode.
    for key in [key for key, value in environ.items() if isinstance(value, str) and not value.isascii()]:
        if DECODED.fullmatch(key):
            environ[key] = as_utf8_latin1(environ[key])
    if environ.get("HTTP_COOKIE"):
        try:
            http.cookies.SimpleCookie(environ["HTTP_COOKIE"])
        except http.cookies.CookieError:
            del environ["HTTP_COOKIE"]
    content_type = environ.get("CONTENT_TYPE")
    if isinstance(content_type, str) and ";" in content_type and '"' not in content_type:
        # Bottle's form parser splits each parameter at "=" and raises on one without it
        # (`text/plain; charset`, or `;` alone): a 500 on any form. Such a parameter says nothing.
        media_type, *params = content_type.split(";")
        kept = [param for param in params if "=" in param]
        if len(kept) != len(params):
            environ["CONTENT_TYPE"] = ";".join([media_type, *kept])
    length = environ.get("CONTENT_LENGTH")
    if length and not (isinstance(length, str) and CONTENT_LENGTH.fullmatch(length.strip())):
        raise _refused("Content-Length must be a whole number of bytes.")
    environ["wsgi.errors"] = DISCARD


def decode_query(environ: MutableMapping[str, Any]) -> None:
    """Put Bottle's `request.query` of `environ` decoded as UTF-8 in its place; a 400 if it is not
    (or if the path is not)."""
    raw_path = str(environ.get("bottle.raw_path", ""))
    if not raw_path.isascii():
        try:
            raw_path.encode("latin-1").decode("utf-8")
        except UnicodeError:
            raise _refused("The address is not valid UTF-8.") from None
    if not environ.get("QUERY_STRING"):  # a beacon has none: spare it the parse (3 µs)
        return
    try:
        environ["bottle.request.query"] = bottle.BaseRequest(environ).query.decode()
    except UnicodeError:  # not UTF-8; or (not from a WSGI server) not latin-1 text
        raise _refused("The address's query string is not valid UTF-8.") from None


def clean_request(environ: MutableMapping[str, Any]) -> None:
    """Every header decodable, the query decoded: what routes may read."""
    clean_headers(environ)
    decode_query(environ)


def form_fields() -> bottle.FormsDict:
    """This request's form fields (URL-encoded or multipart); a 400 when its body cannot be
    read as a form. (Bottle raises its own 400 for a multipart body it cannot split.)"""
    try:
        return bottle.request.forms
    except ValueError:  # UnicodeDecodeError among them
        raise _refused("The form could not be read: send its fields as UTF-8 text.") from None


def install(app: bottle.Bottle) -> None:
    """Clean each request's headers and query before routing (hooks run before the router)."""
    app.add_hook("before_request", lambda: clean_request(bottle.request.environ))


def _refused(sentence: str) -> bottle.HTTPResponse:
    response = bottle.HTTPResponse(
        status=400,
        body=json.dumps({"error": sentence}),
        headers={"Content-Type": "application/json", "Cache-Control": "no-store"},
    )
    # Refused before any route: a browser that opened a page gets a page, as the route's own
    # errors reach it (tally/web/error_page.py).
    if error_page.wants_html() and error_page.is_page(bottle.request.path):
        return error_page.as_page(response)
    return response
