"""Who sent a view, as categories only: country, browser, operating system, device, campaign.

The country comes from the client's address through iptocc's offline database (shipped in
the wheel: no account, no download at run time); browser and operating system are family
names from the user agent by ua-parser with its bundled rules, run as one RE2 set; the
device is a size class of the window's width that tally.js sends. The address and the user
agent are used here, in the request, and kept nowhere: the caches below hold only what the
request already held, in this process's memory, and never reach a log or the database.

>>> device_of(390), device_of(800), device_of(1280), device_of(1920), device_of(None)
('phone', 'tablet', 'laptop', 'desktop', None)
>>> campaign_of({"utm_source": ["news"], "utm_medium": ["email"], "utm_campaign": ["spring", "x"]})
('email', 'spring')
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import iptocc
import ua_parser
from ua_parser import re2 as ua_parser_re2

from tally.web.pageviews import CONTROL_CHARACTERS

# Widths below these are phones, tablets, laptops; the rest desktops (DESIGN.md).
DEVICE_CLASSES = ((576, "phone"), (992, "tablet"), (1440, "laptop"))
MAX_CAMPAIGN = 256
# Distinct agents and addresses remembered; real traffic repeats both within minutes.
CACHE_ENTRIES = 4096
# ua-parser's rules as one RE2 set (google-re2, which the crawler filter runs too): about
# 10 MB of the web's memory, where ua-parser-rs's automaton held 29 MB, for 25-31 µs an
# agent the cache below has not met instead of 13-14; the two give the same families for every
# browser of the crawler corpora (docs/BENCHMARKS.md, "The web's memory"). No cache of its
# own: software_of keeps the answers.
USER_AGENT_PARSER = ua_parser.Parser(ua_parser_re2.Resolver(ua_parser.load_lazy_builtins()))
# The part of a user agent that is parsed and cached: no browser's is longer (bench/crawlers.py's
# corpus: 419 at most), and a cache of 4,096 agents of a header's full size would hold a gigabyte.
MAX_AGENT = 512
# ua-parser's name when no rule matched: stored as unknown, not as a browser called "Other".
UNKNOWN_FAMILY = "Other"


@dataclasses.dataclass(frozen=True)
class Audience:
    country: str | None
    browser: str | None
    os: str | None
    device: str | None


def device_of(width: int | None) -> str | None:
    """The device class of a window `width` CSS pixels wide; None when no width was sent."""
    if width is None:
        return None
    for below, name in DEVICE_CLASSES:
        if width < below:
            return name
    return "desktop"


def campaign_of(query: Mapping[str, list[str]]) -> tuple[str | None, str | None]:
    """`utm_medium` and `utm_campaign` of a page's query string, parsed (the first non-empty of
    each with no control character: as the source is read, so a no-break space or a zero-width
    non-joiner, which written Persian needs, is kept)."""
    return _first(query.get("utm_medium")), _first(query.get("utm_campaign"))


def _first(values: list[str] | None) -> str | None:
    for value in values or ():
        value = value.strip()
        if value and not CONTROL_CHARACTERS.search(value):
            return value[:MAX_CAMPAIGN]
    return None


@functools.lru_cache(maxsize=CACHE_ENTRIES)
def country_of(address: str) -> str | None:
    """The ISO 3166-1 alpha-2 code of the address's country; None for private or unknown ones."""
    try:
        code = iptocc.country_code(address)
    except (ValueError, TypeError):
        return None
    return code.upper() if isinstance(code, str) and len(code) == 2 and code.isalpha() else None


@functools.lru_cache(maxsize=CACHE_ENTRIES)
def software_of(user_agent: str) -> tuple[str | None, str | None]:
    """The (browser family, operating system family) a user agent names, None where unknown."""
    # One pass for both domains: half the time of parse_user_agent and parse_os apart.
    found = USER_AGENT_PARSER(user_agent, ua_parser.Domain.USER_AGENT | ua_parser.Domain.OS)
    browser, system = found.user_agent, found.os
    return _family(browser.family if browser else None), _family(system.family if system else None)


def _family(name: str | None) -> str | None:
    if not name or name == UNKNOWN_FAMILY:
        return None
    return name[:64]


def audience_of(address: str, user_agent: str, width: int | None) -> Audience:
    """The categories of one view's sender; nothing of the address or agent itself."""
    browser, system = software_of(user_agent[:MAX_AGENT])
    return Audience(country_of(address), browser, system, device_of(width))
