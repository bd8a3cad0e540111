"""The query parameters of stats, export and the dashboard: which views to count.

One filter model for every reader (Plausible's): a parameter named after a dimension
(tally/dimensions.py) keeps only the views with that value; several are AND-ed. A name
that is neither a dimension nor one of the route's own parameters is a 400, so a typo
never silently shows unfiltered numbers.

A referrer filter written in Unicode is matched in the ASCII form referrers are stored in:

>>> parse_filters({"country": ["DE"], "days": ["7"]}, ("days",)), parse_filters({"referrer": ["bücher.de"]})
({'country': 'DE'}, {'referrer': 'xn--bcher-kva.de'})

a path as a browser's address has it, as paths are stored, whether written as it reads or not:

>>> parse_filters({"path": ["/über"]}), parse_filters({"goal_path": ["/%c3%bcber"]})
({'path': '/%C3%BCber'}, {'goal_path': '/%C3%BCber'})

and a search engine's domain as its name, as the referrer panel lists it:

>>> parse_filters({"referrer": ["Google.co.uk"]}), parse_filters({"referrer": ["mail.google.com"]})
({'referrer': 'Google'}, {'referrer': 'mail.google.com'})
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tally.dimensions import BY_NAME
from tally.hosts import UNICODE_DOMAIN, ascii_host
from tally.paths import stored_path
from tally.search_engines import referrer_name
from tally.web.pageviews import CONTROL_CHARACTERS, MAX_TEXT

# Parameters every reader accepts besides the filters: the window, the site, the zone, and a
# share link's token.
COMMON_PARAMETERS = ("days", "site", "tz", "share")
# Filters by what a visitor did rather than by a view's own value (migrations/0018): the
# views of the visitors who sent the event, or who viewed the page, in the window.
GOAL_FILTERS = ("event", "goal_path")
FILTER_NAMES = (*BY_NAME, *GOAL_FILTERS)
# Filters whose value is a page's path: looked up as paths are stored (tally/paths.py), so a
# page is found by its path as it reads (`/über`, as the dashboard shows it) or as sent.
PATH_FILTERS = ("path", "goal_path")


class InvalidFilter(ValueError):
    """A parameter that names no filter, or a filter's value that cannot be one."""


def parse_filters(query: Mapping[str, list[str]], own: Iterable[str] = ()) -> dict[str, str]:
    """The filters in `query` (a mapping of each name to its values), by dimension name.

    Raises InvalidFilter naming the first unknown parameter or bad value."""
    known = set(COMMON_PARAMETERS) | set(own)
    filters: dict[str, str] = {}
    for name in sorted(query):
        if name in known:
            continue
        if name not in FILTER_NAMES:
            raise InvalidFilter(f"Unknown parameter {name!r}; filters are {', '.join(FILTER_NAMES)}.")
        if len(query[name]) > 1:  # an empty copy too: which one was meant is not known
            raise InvalidFilter(f"Give the filter {name!r} once.")
        value = query[name][0]
        if value == "":  # a form's empty field: no filter
            continue
        if len(value) > MAX_TEXT or CONTROL_CHARACTERS.search(value):
            raise InvalidFilter(f"The filter {name!r} must be at most {MAX_TEXT} printable characters.")
        if name == "referrer":
            value = _stored_referrer(value)
        elif name in PATH_FILTERS:
            value = stored_path(value)
        dimension = BY_NAME.get(name)
        filters[name] = dimension.case(value) if dimension and dimension.case else value
    return filters


def _stored_referrer(value: str) -> str:
    """A referrer filter as referrers are stored: a domain written in Unicode (`bücher.de`) in
    its ASCII form (`xn--bcher-kva.de`), as browsers send it; an ASCII domain or address in
    lower case, as every stored one is (`Example.COM` matched nothing); a search engine's name
    (no dot: `Google`) as given. A value past ASCII that is no domain's shape (a space,
    punctuation, an empty label) is a 400; one of that shape that IDNA refuses (a symbol:
    `★.com`) can be no stored domain, and is kept as given, a value nobody has. A search
    engine's domain (`google.de`) is its name, as the panel lists it: views are stored so."""
    if value.isascii():
        return referrer_name(value.lower()) if "." in value or ":" in value else value
    if not UNICODE_DOMAIN.fullmatch(value):
        raise InvalidFilter(
            "The filter 'referrer' must be a domain such as bücher.de or xn--bcher-kva.de,"
            " an address, or a search engine's name such as Google."
        )
    try:
        return ascii_host(value)
    except ValueError:
        return value


def sql_parameters(filters: Mapping[str, object]) -> dict[str, object]:
    """One query parameter per filter: its value, or None for no filter on it."""
    return {name: filters.get(name) for name in FILTER_NAMES}
