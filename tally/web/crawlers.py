"""Is a user agent a crawler's? Two maintained lists, either one suffices.

- crawlerdetect: a port of JayBizzle's CrawlerDetect (PHP), a list of crawler, monitor and
  headless-browser names, with exclusions for browsers' look-alike tokens;
- is-bot: the patterns of the `isbot` npm package (omrilotan), which also catches the
  shapes that only bots send (`name/1.0` alone, an e-mail or `.com` in the agent, no
  spaces in 50 characters).

On a public corpus that neither list comes from (matomo's device-detector fixtures, see
bench/crawlers.py and docs/BENCHMARKS.md) crawlerdetect alone let 21% of the crawlers
through; together they let 0.7% through and drop 0.8% of the browsers.

The lists' own regular expressions run in Python's engines, which try ~1,700 alternatives
one after another at every position of the agent: a browser's agent, which matches none,
cost 0.6 to 0.9 ms holding the GIL (a new visitor's browser slowed every other request).
RE2 (google-re2) runs the same alternatives as one automaton in a few microseconds, but
has no look-arounds. With them removed each pattern matches a superset of what it matched,
so "RE2 finds nothing" proves "the lists find nothing", and only the agents RE2 flags (the
crawlers, and a few browsers naming Google or a URL) are asked of the lists themselves: the
answers are the lists' own. The proof holds for printable ASCII, where RE2's `\\d \\w \\s
\\b` and case folding agree with Python's; any other agent goes to the lists directly, as
do all of them if a future list holds a pattern RE2 cannot take.

Only the first MAX_AGENT characters are looked at: no real browser's user agent is longer
(the corpus's longest is 419), and crawlerdetect's regular expressions take time that
grows with the square of the length (12 s for 10,000 characters; within 512, an agent built
to be slow cost 45 ms, a real one 0.4 ms on average). Answers are kept in an LRU in memory,
keyed by those characters (0.2 µs a hit); the user agent is written nowhere.

    >>> is_crawler("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)")
    True
    >>> is_crawler("Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0")
    False
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

import is_bot
import re2
from crawlerdetect import CrawlerDetect
from crawlerdetect.crawlerdetect import get_compiled_exclusions_regex
from crawlerdetect.providers.crawlers import data as crawlerdetect_patterns

MAX_AGENT = 512
CACHED_AGENTS = 8192

_crawlerdetect = CrawlerDetect()
_isbot = is_bot.Bots()

# A look-ahead or look-behind, with at most one level of parentheses inside; one nested
# deeper is left in place, RE2 refuses it, and the automaton is not used.
_LOOKAROUND = re.compile(r"\(\?<?[!=](?:[^()\\]|\\.|\((?:[^()\\]|\\.)*\))*\)")
_PRINTABLE_ASCII = re.compile(r"[ -~]*\Z")


def without_lookarounds(pattern: str) -> str:
    """`pattern` with its look-arounds removed: it matches wherever `pattern` does, and more."""
    return _LOOKAROUND.sub("", pattern)


def _superset_automaton(patterns: Iterable[str]) -> re2._Regexp | None:
    options = re2.Options()
    options.case_sensitive = False  # both lists compile with IGNORECASE
    options.never_capture = True
    options.log_errors = False
    try:
        return re2.compile("|".join(f"(?:{without_lookarounds(p)})" for p in patterns), options)
    except re2.error:
        return None


_crawlerdetect_superset = _superset_automaton(crawlerdetect_patterns)
_isbot_superset = _superset_automaton(_isbot.patterns)
PREFILTER = _crawlerdetect_superset is not None and _isbot_superset is not None


def by_crawlerdetect(user_agent: str) -> bool:
    return bool(_crawlerdetect.isCrawler(user_agent))


def by_isbot(user_agent: str) -> bool:
    return _isbot.is_bot(user_agent)


def by_lists(user_agent: str) -> bool:
    """The definition: empty, or named by either list (isbot first, the faster one)."""
    return not user_agent or by_isbot(user_agent) or by_crawlerdetect(user_agent)


def may_be_crawler(user_agent: str) -> bool:
    """False only where neither list can match: RE2's superset of both finds nothing."""
    if not PREFILTER or not _PRINTABLE_ASCII.match(user_agent):
        return True
    if _isbot_superset.search(user_agent):
        return True
    # crawlerdetect looks for its crawlers in the agent with its exclusions cut out (which can
    # join two parts into a name), so the superset does the same, with crawlerdetect's own.
    without_exclusions = get_compiled_exclusions_regex().sub("", user_agent.strip())
    return _crawlerdetect_superset.search(without_exclusions) is not None


@functools.lru_cache(maxsize=CACHED_AGENTS)
def _detect(user_agent: str) -> bool:
    return not user_agent or (may_be_crawler(user_agent) and by_lists(user_agent))


def is_crawler(user_agent: str) -> bool:
    """Whether `user_agent` (a request's User-Agent header, decoded) names a crawler, a monitor,
    a headless browser or an HTTP library; an empty one counts as a crawler."""
    return _detect(user_agent.strip()[:MAX_AGENT])
