"""Referring domains as a site owner reads them: each well-known search engine's search under one name.

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
import re
import urllib.parse

from publicsuffixlist import PublicSuffixList

from tally.hosts import international_hint
from tally.sites import IPV6_ADDRESS, parse_site_name

_SUFFIXES = PublicSuffixList()
# Well-known search engines by their registrable label (the name before the public suffix): the
# name stats show, and the hosts under that name that are the search (the part before the
# registrable domain, `www.` folded already: "" is google.com and www.google.co.uk). Only those:
# mail.google.com, docs.google.com or news.google.com referring is no search, nor is brave.com
# (the browser's site) or seznam.cz (a portal). "*.search" is any country's search.yahoo.com.
SEARCH_ENGINES: dict[str, tuple[str, tuple[str, ...]]] = {
    "google": ("Google", ("",)),
    "bing": ("Bing", ("", "cn")),
    "duckduckgo": ("DuckDuckGo", ("", "html", "lite", "start")),
    "yahoo": ("Yahoo", ("search", "*.search")),
    "yandex": ("Yandex", ("",)),
    "baidu": ("Baidu", ("", "m")),
    "ecosia": ("Ecosia", ("",)),
    "brave": ("Brave Search", ("search",)),
    "startpage": ("Startpage", ("", "eu", "us")),
    "qwant": ("Qwant", ("", "lite")),
    "naver": ("Naver", ("search", "m.search")),
    "seznam": ("Seznam", ("search",)),
    "kagi": ("Kagi", ("",)),
}
SEARCH_ENGINE_NAMES = frozenset(name for name, _ in SEARCH_ENGINES.values())
# Every domain `referrer_name` may give an engine's name matches this (and some others do), as a
# PostgreSQL regular expression: stats read all of them, however few views each has.
SEARCH_ENGINE_DOMAINS = r"(^|\.)(" + "|".join(sorted(SEARCH_ENGINES)) + r")\."
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


@functools.lru_cache(maxsize=4096)
def referrer_name(domain: str) -> str:
    """A search engine's name for any of its search's domains; any other domain as it is.

    >>> [referrer_name(domain) for domain in ("uk.search.yahoo.com", "mail.google.com", "brave.com")]
    ['Yahoo', 'mail.google.com', 'brave.com']
    """
    registrable = _SUFFIXES.privatesuffix(domain)
    if registrable:
        engine = SEARCH_ENGINES.get(registrable.split(".", 1)[0])
        if engine:
            name, hosts = engine
            below = domain[: -len(registrable)].rstrip(".")  # `www.` is folded already
            if any(below == host or (host.startswith("*.") and below.endswith(host[1:])) for host in hosts):
                return name
    return domain


def by_name(domains: dict[str, int]) -> collections.Counter[str]:
    """Views per referrer name, from views per referring domain."""
    named: collections.Counter[str] = collections.Counter()
    for domain, views in domains.items():
        named[referrer_name(domain)] += views
    return named


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
