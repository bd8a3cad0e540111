"""A beacon's body, as tally.js (or an app, or a server) posts it to /api/collect: checked whole,
or refused with a status and a sentence that says what is wrong (nothing is stored then).

    >>> beacon = parse_collect_body(b'{"url": "https://Example.com:8443/a?utm_source=news", "width": 390}')
    >>> beacon.site, beacon.path, beacon.source, beacon.referrer, beacon.width, beacon.event
    ('example.com', '/a', 'news', None, 390, None)
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from typing import NamedTuple

from tally.paths import stored_path
from tally.sites import parse_site
from tally.web.audience import campaign_of
from tally.web.pageviews import CONTROL_CHARACTERS, MAX_TEXT, RepeatedKey, unique_keys
from tally.web.referrers import refused_referrer, stored_referrer

SOURCE_PARAMETERS = ("utm_source", "ref", "source")
MAX_SOURCE = 256
FIELDS = {"url", "referrer", "width", "event", "props"}
# An event's limits (DESIGN.md, "Visits and events"); past them a 400 and nothing stored.
MAX_EVENT_NAME = 120
MAX_PROPS = 30
MAX_PROP_KEY = 300
MAX_PROP_VALUE = 2000
MAX_WIDTH = 100_000
# A page's address and its referrer as the browser gives them: longer than what is kept of them
# (a query string of a shop's filters, an app's state, click ids). Only the page's path must fit
# in MAX_TEXT; a referrer kept (no query) past it keeps its origin, which is what stats report.
MAX_URL = 16 * 1024
# Line breaks and tabs in a prop's value (an attribute of formatted HTML: data-tally-prop-plan="
#   pro") are folded into one space: the tracker cannot see a 400, so the click would be lost.
FOLDED_WHITESPACE = re.compile(r"\s*[\t\n\r]\s*")
# What a refused prop value is, in JSON's words (anything else is null).
NOT_PROP_VALUES = {dict: "an object: props are not nested", list: "a list: props are not nested"}


class Refused(Exception):
    """The request cannot be stored: an HTTP status and the sentence that says why."""

    def __init__(self, status: int, sentence: str):
        super().__init__(sentence)
        self.status = status


class Beacon(NamedTuple):
    """What a beacon's body says of its view (a tuple: built in a third of a frozen dataclass's time)."""

    site: str
    path: str
    source: str | None
    referrer: str | None
    medium: str | None = None
    campaign: str | None = None
    width: int | None = None  # window.innerWidth, CSS pixels
    event: str | None = None  # a custom event's name: the beacon is that event, not a view
    props: dict[str, str | int | float | bool] | None = None


def parse_collect_body(body: bytes) -> Beacon:
    """The view a beacon's body describes; raises Refused(400) saying what is wrong."""
    try:
        document = json.loads(body.decode("utf-8"), object_pairs_hook=unique_keys)
    except RepeatedKey as repeated:
        raise Refused(400, repeated.sentence()) from None
    except UnicodeDecodeError:
        raise Refused(400, "The body is not valid UTF-8.") from None
    except (ValueError, RecursionError):
        raise Refused(
            400, 'The body must be JSON such as {"url": "https://example.com/", "referrer": ""}.'
        ) from None
    if not isinstance(document, dict):
        raise Refused(400, 'The body must be a JSON object such as {"url": "https://example.com/"}.')
    if not FIELDS.issuperset(document):
        unknown = sorted(set(document) - FIELDS)
        raise Refused(
            400,
            f'Unknown field "{unknown[0]}"; a beacon has "url", "referrer", "width", "event" and "props".',
        )
    url = _text(document.get("url"), "url", MAX_URL)
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
    path = stored_path(parts.path or "/")
    if not path.startswith("/"):
        raise Refused(400, '"url" must have a path starting with "/".')
    if len(path) > MAX_TEXT:
        raise Refused(400, f'The path of "url" is longer than {MAX_TEXT} characters.')
    query = urllib.parse.parse_qs(parts.query) if parts.query else {}  # once, for all three
    medium, campaign = campaign_of(query)
    event = _event_name(document.get("event"))
    props = _props(document.get("props"))
    if props and event is None:
        raise Refused(400, '"props" belong to an event: send "event" with them.')
    return Beacon(
        site,
        path,
        _source(query),
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
        if not _is_unicode(key):
            raise Refused(400, "A prop's key is not valid Unicode (a lone surrogate).")
        named = f'Prop "{key[:40]}"'
        if isinstance(item, str):
            folded = FOLDED_WHITESPACE.sub(" ", item)
            if folded != item:
                item = value[key] = folded.strip()
            if len(item) > MAX_PROP_VALUE:
                raise Refused(400, f"{named} is longer than {MAX_PROP_VALUE} characters.")
            if CONTROL_CHARACTERS.search(item):
                raise Refused(400, f"{named} contains a control character.")
            if not _is_unicode(item):
                raise Refused(400, f"{named} is not valid Unicode (a lone surrogate).")
        elif isinstance(item, float) and not math.isfinite(item):
            raise Refused(400, f"{named} must be a finite number.")
        elif not isinstance(item, bool | int | float):
            # null is no nesting: "not nested" sent its sender looking for an object that is not there.
            kind = NOT_PROP_VALUES.get(type(item), "null")
            raise Refused(400, f"{named} must be a string, a number or a boolean, not {kind}.")
        elif len(repr(item)) > MAX_PROP_VALUE:  # shown as text in event_props, as a string is
            raise Refused(400, f"{named} is longer than {MAX_PROP_VALUE} characters.")
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


def _is_unicode(text: str) -> bool:
    """Whether `text` can be stored (json.loads takes "\\ud800", a lone surrogate, UTF-8 cannot)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(value: object, field: str, limit: int = MAX_TEXT) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise Refused(400, f'"{field}" must be a string.')
    if len(value) > limit:
        raise Refused(400, f'"{field}" is longer than {limit} characters.')
    if CONTROL_CHARACTERS.search(value):
        raise Refused(400, f'"{field}" contains a control character.')
    if not _is_unicode(value):
        raise Refused(400, f'"{field}" is not valid Unicode (a lone surrogate).')
    return value


def _source(query: dict[str, list[str]]) -> str | None:
    """The campaign: the first printable one of utm_source, ref and source in the page's query
    string (parsed), cut to MAX_SOURCE (as medium and campaign are: a stray newline in a mail's
    link loses the source, never the visitor's view)."""
    for name in SOURCE_PARAMETERS:
        for value in query.get(name, ()):
            value = value.strip()
            if value and not CONTROL_CHARACTERS.search(value):
                return value[:MAX_SOURCE]
    return None


def _referrer(value: object) -> str | None:
    """The referring page as stored (tally/web/referrers.py, `stored_referrer`; a host browsers
    open that no DNS name is, such as `foo-.blogspot.com`, kept too), or None."""
    referrer = _text(value, "referrer", MAX_URL)
    if not referrer:
        return None
    try:
        stored = stored_referrer(referrer, from_browser=True)
    except ValueError:
        raise Refused(400, refused_referrer("", referrer)) from None
    if len(stored) > MAX_TEXT:
        parts = urllib.parse.urlsplit(stored)
        stored = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/", "", ""))
    return stored
