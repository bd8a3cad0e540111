"""Search engines: each well-known engine's search under one name, stored with the views it refers.

A view's referrer is its domain (`www.` folded, the site's own pages left out:
`tally_referrer_domain` in migrations/0039), or the name of the search engine whose search it
is: a search engine's domains in every country (google.com, google.co.uk, www.google.de) are
told by their registrable name, found with the Public Suffix List (publicsuffixlist, bundled:
no network at run time). That list is Python's, not SQL's, so the web finds the name when it
stores a view (`search_engine`, in page_views.search_engine) and the rollups count the name:
a visitor who searched on google.com and google.de on one day is one of Google's. Views stored
without it (before that column, or by SQL) keep their domain, which stats read by name here,
until a rebuild of their days' rollups names them (jobs/rebuild.py).

>>> [referrer_name(domain) for domain in ("google.co.uk", "news.ycombinator.com", "search.brave.com")]
['Google', 'news.ycombinator.com', 'Brave Search']
"""

from __future__ import annotations

import collections
import functools
import re
from typing import Any

from publicsuffixlist import PublicSuffixList

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
# The domain under which the API reports each engine's search (DESIGN.md: referrers are reported
# by domain), all of its domains' views and visitors together; the dashboard and the reports,
# read by people, say its name.
REPORTED_DOMAINS = {
    "Google": "google.com",
    "Bing": "bing.com",
    "DuckDuckGo": "duckduckgo.com",
    "Yahoo": "search.yahoo.com",
    "Yandex": "yandex.com",
    "Baidu": "baidu.com",
    "Ecosia": "ecosia.org",
    "Brave Search": "search.brave.com",
    "Startpage": "startpage.com",
    "Qwant": "qwant.com",
    "Naver": "search.naver.com",
    "Seznam": "search.seznam.cz",
    "Kagi": "kagi.com",
}
# Every domain `referrer_name` may give an engine's name for matches this (and some others do), as
# a PostgreSQL regular expression (`~*`): stats read all of them and the names
# (SEARCH_ENGINE_NAMES, compared by `= ANY`), however few views each has. The names are not
# in the pattern: with `|^(Baidu|Bing|...)$` added, each connection's first use of it took
# 1.5 s more on 215,000 rows (PostgreSQL compiling it), and each use after half as long again.
SEARCH_ENGINE_DOMAINS = r"(^|\.)(" + "|".join(sorted(SEARCH_ENGINES)) + r")\."
# A stored referrer's host, as tally_referrer_domain reads it (migrations/0039): a bracketed
# address whole, or the name up to a port.
_REFERRER_HOST = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(\[[^\]/?#]*\]|[^/?#:]+)")


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


def reported_domain(value: str) -> str:
    """A referrer value as the API reports it: a search engine's name as its domain (REPORTED_DOMAINS),
    any other value as it is.

    >>> reported_domain("Google"), reported_domain("news.ycombinator.com")
    ('google.com', 'news.ycombinator.com')
    """
    return REPORTED_DOMAINS.get(value, value)


def with_reported_domains(answer: dict[str, Any]) -> dict[str, Any]:
    """A stats answer as the API sends it: the search engines of its referrer rows and of its
    `referrer` filter by their domains (`reported_domain`), the rows listed by views, then by
    what they now read. The answer given is left as it is (its rows may be kept for others)."""
    answer = dict(answer)
    if "top_referrers" in answer:
        rows = [{**row, "referrer": reported_domain(row["referrer"])} for row in answer["top_referrers"]]
        answer["top_referrers"] = sorted(rows, key=lambda row: (-row["views"], row["referrer"]))
    filters = answer.get("filters")
    if filters and filters.get("referrer") in REPORTED_DOMAINS:
        answer["filters"] = {**filters, "referrer": REPORTED_DOMAINS[filters["referrer"]]}
    return answer


def by_name(domains: dict[str, int]) -> collections.Counter[str]:
    """Views per referrer name, from views per referring domain."""
    named: collections.Counter[str] = collections.Counter()
    for domain, views in domains.items():
        named[referrer_name(domain)] += views
    return named
