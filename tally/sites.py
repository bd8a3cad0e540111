"""What a site is, for every process: a host name in lower case, without a port.

>>> parse_site("WWW.Example.com.")
'www.example.com'
>>> parse_site("example.com:8080") is None
True
"""

from __future__ import annotations

import re

# The site of views whose sender names none: the page_views.site column's default
# (migrations/0005), so server-side views and plain SQL inserts land on the same site.
DEFAULT_SITE = "default"
# A host name as in a URL (browsers send international names as punycode).
LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
HOST_NAME = re.compile(rf"{LABEL}(?:\.{LABEL})*")
MAX_HOST_NAME = 253
# A site as the API takes it (a `site` parameter or field): a host name in any case, a final
# dot allowed, nothing around it. The OpenAPI document gives this same pattern, so what it
# calls valid and what the app accepts are one set.
SITE_NAME = re.compile(HOST_NAME.pattern.replace("a-z", "A-Za-z") + r"\.?")
# An IPv6 address in RFC 4291's text forms (eight groups, or fewer around one "::"), as a URL
# holds it in brackets; no zone id, no IPv4 tail. The OpenAPI document gives it too.
_GROUP = "[0-9A-Fa-f]{1,4}"
IPV6_ADDRESS = re.compile(
    "|".join(
        [
            f"(?:{_GROUP}:){{7}}{_GROUP}",
            f"::(?:{_GROUP}(?::{_GROUP}){{0,6}})?",
            *(
                f"(?:{_GROUP}:){{{left - 1}}}{_GROUP}::(?:{_GROUP}(?::{_GROUP}){{0,{6 - left}}})?"
                for left in range(1, 7)
            ),
            f"(?:{_GROUP}:){{6}}{_GROUP}::",
        ]
    )
)


def parse_site(value: str) -> str | None:
    """A site's host name in lower case, or None when `value` is not a host name (a port, a path,
    spaces around it...)."""
    site = value.lower().rstrip(".")
    if len(site) > MAX_HOST_NAME or not HOST_NAME.fullmatch(site):
        return None
    return site


def parse_site_name(value: str) -> str | None:
    """A `site` the API was given (SITE_NAME), in lower case without the final dot; else None."""
    if len(value) > MAX_HOST_NAME or not SITE_NAME.fullmatch(value):
        return None
    return value.lower().rstrip(".")
