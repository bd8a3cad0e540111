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
HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*")
MAX_HOST_NAME = 253


def parse_site(value: str) -> str | None:
    """A site's host name in lower case, or None when `value` is not a host name (a port, a path...)."""
    site = value.strip().lower().rstrip(".")
    if len(site) > MAX_HOST_NAME or not HOST_NAME.fullmatch(site):
        return None
    return site
