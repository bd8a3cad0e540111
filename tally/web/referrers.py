"""Referring domains as a site owner reads them: each well-known search engine's search under one name.

A view's referrer is its domain (`www.` folded, the site's own pages left out:
`tally_referrer_domain` in migrations/0039), or the name of the search engine whose search it
is: a search engine's domains in every country (google.com, google.co.uk, www.google.de) are
told by their registrable name, found with the Public Suffix List (publicsuffixlist, bundled:
no network at run time). That list is Python's, not SQL's, so the web finds the name when it
stores a view (`search_engine`, in page_views.search_engine) and the rollups count the name:
a visitor who searched on google.com and google.de on one day is one of Google's. Views stored
without it (before that column, or by SQL) keep their domain, which stats read by name here.

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
assert all(re.fullmatch(r"[A-Za-z ]+", name) for name in SEARCH_ENGINE_NAMES)  # no regex syntax in them
# Every engine's name, and every domain `referrer_name` may give one for (and some others), match
# this PostgreSQL regular expression (compared case-insensitively, `~*`): stats read all of
# them, however few views each has.
SEARCH_ENGINE_VALUES = (
    r"(^|\.)(" + "|".join(sorted(SEARCH_ENGINES)) + r")\.|^(" + "|".join(sorted(SEARCH_ENGINE_NAMES)) + ")$"
)
# A stored referrer's host, as tally_referrer_domain reads it (migrations/0039): a bracketed
# address whole, or the name up to a port.
_REFERRER_HOST = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(\[[^\]/?#]*\]|[^/?#:]+)")
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
    if domain in SEARCH_ENGINE_NAMES:  # a name the web stored (`search_engine`)
        return domain
    registrable = _SUFFIXES.privatesuffix(domain)
    if registrable:
        engine = SEARCH_ENGINES.get(registrable.split(".", 1)[0])
        if engine:
            name, hosts = engine
            below = domain[: -len(registrable)].rstrip(".")  # `www.` is folded already
            if any(below == host or (host.startswith("*.") and below.endswith(host[1:])) for host in hosts):
                return name
    return domain


def referrer_domain(referrer: str | None, site: str) -> str | None:
    """A stored referrer's domain as SQL's tally_referrer_domain reads it: lower case, final dots
    and one `www.` off; None when there is no host or it is the site's own (`www.` folded).

    >>> referrer_domain("https://WWW.Google.de./search", "example.com")
    'google.de'
    >>> referrer_domain("https://example.com/", "www.example.com") is None
    True
    """
    match = _REFERRER_HOST.match(referrer or "")
    if match is None:
        return None
    domain = match.group(1).lower().rstrip(".").removeprefix("www.")
    return None if domain == site.removeprefix("www.") else domain


def search_engine(referrer: str | None, site: str) -> str | None:
    """The name of the search engine whose search `referrer` (as stored) is, which the web stores
    with the view; None for any other referrer.

    >>> search_engine("https://www.google.co.uk/", "a.org"), search_engine("https://mail.google.com/", "a")
    ('Google', None)
    """
    domain = referrer_domain(referrer, site)
    if not domain:
        return None
    name = referrer_name(domain)
    return name if name != domain else None


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
