"""Referring domains as a site owner reads them: each well-known search engine under one name.

The rollups keep the referrer's domain (`www.` folded, the site's own pages left out:
`tally_referrer_domain` in migrations/0005); stats group a search engine's domains in every
country (google.com, google.co.uk, www.google.de) by their registrable name, found with the
Public Suffix List (publicsuffixlist, bundled: no network at run time).

>>> [referrer_name(domain) for domain in ("google.co.uk", "news.ycombinator.com", "search.brave.com")]
['Google', 'news.ycombinator.com', 'Brave Search']
"""

from __future__ import annotations

import collections
import functools
import urllib.parse

from publicsuffixlist import PublicSuffixList

from tally.sites import IPV6_ADDRESS, parse_site_name

_SUFFIXES = PublicSuffixList()
# The registrable label (the name before the public suffix) of well-known search engines.
SEARCH_ENGINES = {
    "google": "Google",
    "bing": "Bing",
    "duckduckgo": "DuckDuckGo",
    "yahoo": "Yahoo",
    "yandex": "Yandex",
    "baidu": "Baidu",
    "ecosia": "Ecosia",
    "brave": "Brave Search",
    "startpage": "Startpage",
    "qwant": "Qwant",
    "naver": "Naver",
    "seznam": "Seznam",
    "kagi": "Kagi",
}


def _is_host(host: str) -> bool:
    """Whether `host` (as urlsplit gives it: lower case, brackets off) is a host name as a site's
    is (international ones in their ASCII form, as browsers send them) or an IPv6 address."""
    if ":" in host:
        return IPV6_ADDRESS.fullmatch(host) is not None
    return parse_site_name(host) is not None


@functools.lru_cache(maxsize=4096)
def referrer_name(domain: str) -> str:
    """A search engine's name for any of its domains; any other domain as it is."""
    registrable = _SUFFIXES.privatesuffix(domain)
    if registrable:
        name = SEARCH_ENGINES.get(registrable.split(".", 1)[0])
        if name:
            return name
    return domain


def by_name(domains: dict[str, int]) -> collections.Counter[str]:
    """Views per referrer name, from views per referring domain."""
    named: collections.Counter[str] = collections.Counter()
    for domain, views in domains.items():
        named[referrer_name(domain)] += views
    return named


def stored_referrer(referrer: str) -> str:
    """The referring page as stored: scheme, host and path, lower-case host, no user name or
    password, query or fragment (they can carry people's data). ValueError unless it is a URL
    with a scheme and a host.

    >>> stored_referrer("HTTPS://me:secret@News.Example.com:8443/a/b?email=x#top")
    'https://news.example.com:8443/a/b'
    """
    parts = urllib.parse.urlsplit(referrer)
    host, port = parts.hostname, parts.port  # reading the port checks it
    if not parts.scheme or not host:
        raise ValueError("no scheme or host")
    if not _is_host(host):  # "exa mple.com", "ex%41mple.com", "-bad-.com": no domain to show
        raise ValueError("not a host name or address")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc = f"{netloc}:{port}"
    return urllib.parse.urlunsplit((parts.scheme.lower(), netloc, parts.path, "", ""))
