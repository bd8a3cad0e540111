"""Referrers as collect and /api/pageviews take them: the page before, stored without what can
carry people's data, and the sentence refusing one that is no URL. How stats name them (a
search engine's domains under its name) is tally/search_engines.py."""

from __future__ import annotations

import re
import urllib.parse

from tally.hosts import international_hint
from tally.sites import IPV6_ADDRESS, parse_site_name

# Hosts browsers open that no DNS name is, of a DNS name's characters: a label that starts or
# ends with "-" (Blogger's `foo-.blogspot.com`), an empty label (`a..b`). A browser's referrer
# keeps them (`stored_referrer(..., from_browser=True)`: the page before is not the site's to
# choose, and the tracker cannot see a 400); POST /api/pageviews refuses them.
BROWSER_HOST = re.compile(r"[a-z0-9_.-]*[a-z0-9][a-z0-9_.-]*")


def _is_host(host: str) -> bool:
    """Whether `host` (as urlsplit gives it: lower case, brackets off) is a host name as a site's
    is (international ones in their ASCII form, as browsers send them) or an IPv6 address."""
    if ":" in host:
        return IPV6_ADDRESS.fullmatch(host) is not None
    return parse_site_name(host) is not None


def refused_referrer(prefix: str, referrer: str) -> str:
    """The sentence refusing `referrer` (after `prefix`), with how to write an international
    host: browsers send `https://xn--bcher-kva.de/`, never `https://bücher.de/`."""
    try:
        host = urllib.parse.urlsplit(referrer).hostname or ""
    except ValueError:
        host = ""
    hint = international_hint(host)
    return f'{prefix}"referrer" must be a URL such as "https://example.com/page", or empty.{hint}'


def stored_referrer(referrer: str, from_browser: bool = False) -> str:
    """The referring page as stored: scheme, host and path, lower-case host, no user name or
    password, query or fragment (they can carry people's data). ValueError unless it is a URL
    with a scheme and a host (`from_browser`: a BROWSER_HOST too).

    >>> stored_referrer("HTTPS://me:secret@News.Example.com:8443/a/b?email=x#top")
    'https://news.example.com:8443/a/b'
    """
    parts = urllib.parse.urlsplit(referrer)
    host, port = parts.hostname, parts.port  # reading the port checks it
    if not parts.scheme or not host:
        raise ValueError("no scheme or host")
    if not _is_host(host) and not (from_browser and BROWSER_HOST.fullmatch(host)):
        raise ValueError("not a host name or address")  # "exa mple.com", "ex%41mple.com", "-bad-.com"
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc = f"{netloc}:{port}"
    return urllib.parse.urlunsplit((parts.scheme.lower(), netloc, parts.path, "", ""))
