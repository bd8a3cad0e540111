"""Validating page views posted to the web process: one sentence per problem.

>>> parse_page_views(b'{"path": "/a", "site": "Example.com"}')[0][:3]
('/a', None, 'example.com')
>>> try:
...     parse_page_views(b'[{"path": "a"}]')
... except InvalidPageViews as error:
...     print(error)
Item 0: "path" must start with "/".
"""

from __future__ import annotations

import json
import re
from typing import Any

from tally.hosts import international_hint
from tally.paths import MAX_PATH, stored_path
from tally.search_engines import search_engine
from tally.sites import DEFAULT_SITE, parse_site_name
from tally.web.referrers import refused_referrer, stored_referrer
from tally.web.view_writer import View

MAX_BODY_BYTES = 1024 * 1024
MAX_BATCH = 1000
MAX_TEXT = MAX_PATH  # a path, a referrer, a site's name
FIELDS = ("path", "referrer", "site")
# C0 and C1 control characters, DEL included; PostgreSQL text cannot hold NUL at all.
CONTROL = r"\x00-\x1f\x7f-\x9f"  # C0, DEL and C1: refused in any text a client sends
CONTROL_CHARACTERS = re.compile(f"[{CONTROL}]")
# The same rule as an OpenAPI pattern: text with no control character.
TEXT_PATTERN = f"^[^{CONTROL}]*$"


class InvalidPageViews(ValueError):
    """The body is not a page view or a batch of them; the message says why."""


class RepeatedKey(Exception):
    """A JSON object of the body has `key` twice."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key

    def sentence(self) -> str:
        return f'The key "{self.key[:40]}" is given twice in one object: give each key once.'


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads' object_pairs_hook: the object, or RepeatedKey. Without it `{"url": A, "url": B}`
    was stored as B, silently: which one the sender meant is not known. It costs a Python call
    per object, which json.loads makes in C without it: a beacon has one or two objects."""
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise RepeatedKey(key)
            seen.add(key)
    return document


def parse_page_views(body: bytes) -> list[View]:
    """Parse a JSON body (one view or a list of views) into views."""
    try:
        document = json.loads(body.decode("utf-8"), object_pairs_hook=unique_keys)
    except RepeatedKey as repeated:  # {"path": "/a", "path": "/b"} was stored as /b, silently
        raise InvalidPageViews(repeated.sentence()) from None
    except UnicodeDecodeError:
        raise InvalidPageViews("The body is not valid UTF-8.") from None
    except RecursionError:
        raise InvalidPageViews("The body is nested too deeply.") from None
    except json.JSONDecodeError as error:
        raise InvalidPageViews(f"The body is not valid JSON ({error}).") from None
    except ValueError:  # an integer past the digits Python converts (4,300): its message names sys
        raise InvalidPageViews("The body holds a number with too many digits.") from None
    if isinstance(document, dict):
        return [_parse_item(document, prefix="")]
    if isinstance(document, list):
        if not document:
            raise InvalidPageViews("The batch is empty: send at least one page view.")
        if len(document) > MAX_BATCH:
            raise InvalidPageViews(
                f"A batch holds at most {MAX_BATCH} page views; this one has {len(document)}."
            )
        return [_parse_item(item, prefix=f"Item {index}: ") for index, item in enumerate(document)]
    raise InvalidPageViews('The body must be a JSON object such as {"path": "/"} or a list of them.')


def _parse_item(item: object, prefix: str) -> View:
    if not isinstance(item, dict):
        raise InvalidPageViews(f'{prefix}A page view must be a JSON object such as {{"path": "/"}}.')
    unknown = sorted(set(item) - set(FIELDS))
    if unknown:
        raise InvalidPageViews(
            f'{prefix}Unknown field "{unknown[0]}"; a page view has "path", "referrer" and "site".'
        )
    if "path" not in item:
        raise InvalidPageViews(f'{prefix}The field "path" is missing.')
    path = _text(item["path"], "path", prefix)
    if not path.startswith("/"):
        raise InvalidPageViews(f'{prefix}"path" must start with "/".')
    path = stored_path(path)  # as a browser sends it: /über as /%C3%BCber
    referrer = item.get("referrer")
    if referrer is not None:
        referrer = _text(referrer, "referrer", prefix)
        try:  # as the tracker's are stored: no user name, query or fragment (people's data)
            referrer = stored_referrer(referrer) if referrer else None
        except ValueError:
            raise InvalidPageViews(refused_referrer(prefix, referrer)) from None
    site = DEFAULT_SITE
    if item.get("site") is not None:
        name = _text(item["site"], "site", prefix)
        site = parse_site_name(name)
        if site is None:
            hint = international_hint(name)
            raise InvalidPageViews(
                f'{prefix}"site" must be a host name such as "example.com", no port.{hint}'
            )
    return View(path, referrer, site, search_engine=search_engine(referrer, site))


def _text(value: object, field: str, prefix: str) -> str:
    if not isinstance(value, str):
        raise InvalidPageViews(f'{prefix}"{field}" must be a string.')
    if len(value) > MAX_TEXT:
        raise InvalidPageViews(f'{prefix}"{field}" is longer than {MAX_TEXT} characters.')
    if CONTROL_CHARACTERS.search(value):
        raise InvalidPageViews(f'{prefix}"{field}" contains a control character.')
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidPageViews(f'{prefix}"{field}" is not valid Unicode (a lone surrogate).') from None
    return value
