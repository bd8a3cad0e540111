"""The dimensions of a page view: what stats rank, filter and export by, in one table.

Each row says how a dimension is named in the API (the filter parameter, the `top_*` panel
and its rows' key), which column of `page_views` holds it (documentation: no SQL is built
from it; tests/test_audience.py checks a plain column's filter is in tally/queries.sql), and
how the dashboard titles it. The panels, the filters' names, the dashboard and the API
description read this table; the SQL names each column itself. Adding a dimension `x`:

- a line here. Its place sets the panels' order, and must be its column's place in
  `stats_tail`: tally/web/panels.py reads the tail's rows by position;
- a migration: `ALTER TABLE page_views ADD COLUMN x text`, and these functions again, whole,
  with `x` added: `tally_rollup_page_views()` (as last written in migrations/0020: `fresh`'s
  two branches, `grouped`'s two lists and one more GROUP BY position, a line in its VALUES
  list), `tally_visitor_moves()` (migrations/0023: `seen`, one more NULL in its events branch,
  a line in its VALUES list) and a `tally_views_matching` with an `of_x` argument (keep the
  old one for the old release's web, as migrations/0022 does);
- tally/queries.sql: `insert_page_views` (the column and its `v->>N`), `stats_tail` (the
  column, one more position in both GROUP BYs), `filtered_answer` (the column in `matching`,
  `%(x)s` among the arguments, a line in its VALUES list), and `%(x)s` in `recent_visitors`
  and `filtered_export`;
- a field of `View` (tally/web/view_writer.py) in insert_page_views' order, which
  tally/web/collect.py fills (from tally/web/audience.py for what the sender's request says);
- tests/test_audience.py reads migrations/0020's VALUES lists: point it at the new migration.

>>> [dimension.name for dimension in DIMENSIONS][:3]
['path', 'referrer', 'source']
>>> BY_NAME["country"].panel
'top_countries'
>>> value_label("country", "DE"), value_label("country", "ZZ"), value_label("path", "/%C3%A9t%C3%A9")
('Germany (DE)', 'ZZ', '/été')
"""

from __future__ import annotations

import dataclasses
import functools
import re
import urllib.parse
from collections.abc import Callable

import pycountry


@dataclasses.dataclass(frozen=True)
class Dimension:
    name: str  # the filter's query parameter, the rollups' `dim`, the panel rows' key
    panel: str  # the stats answer's list of the top values
    title: str  # the dashboard's heading
    column: str  # SQL over a page_views row (a column name, or an expression of columns)
    # How a filter's value is written as stored, when its values have one case ('gb' is GB).
    case: Callable[[str], str] | None = None


DIMENSIONS: tuple[Dimension, ...] = (
    Dimension("path", "top_paths", "Top paths", "path"),
    # The referring page's domain, www. folded, the site's own pages left out (migrations/0005).
    Dimension("referrer", "top_referrers", "Referrers", "tally_referrer_domain(referrer, site)"),
    Dimension("source", "top_sources", "Sources", "source"),
    Dimension("medium", "top_mediums", "Mediums", "medium"),
    Dimension("campaign", "top_campaigns", "Campaigns", "campaign"),
    Dimension("country", "top_countries", "Countries", "country", str.upper),
    Dimension("browser", "top_browsers", "Browsers", "browser"),
    Dimension("os", "top_os", "Operating systems", "os"),
    Dimension("device", "top_devices", "Devices", "device", str.lower),
)
BY_NAME = {dimension.name: dimension for dimension in DIMENSIONS}


@functools.lru_cache(maxsize=1024)
def country_name(code: str) -> str:
    """The common English name of an ISO 3166-1 alpha-2 code ('Taiwan', not 'Taiwan, Province
    of China'); the code itself when it names no country."""
    try:
        country = pycountry.countries.get(alpha_2=code)
    except (KeyError, LookupError):
        country = None
    if country is None:
        return code
    return getattr(country, "common_name", None) or country.name


def value_label(name: str, value: str) -> str:
    """A value as a reader sees it (the dashboard, the report): a country by its name and
    code, a path with its letters readable, anything else as stored; in each, what would
    reorder or hide the text around it escaped (`visible`)."""
    if name == "country":
        country = country_name(value)
        return value if country == value else f"{country} ({value})"
    if name in ("path", "goal_path"):
        return readable_path(value)
    return visible(value)


# Bidirectional controls (marks, embeddings, overrides, isolates) and invisible characters
# (zero-width space, word joiner, invisible operators, BOM). Any stranger chooses the values a
# page shows (a source, an event, a path sent to /api/pageviews): with U+202E, a source
# "\u202emoc.elgoog" showed as "google.com". Joiners (U+200C, U+200D) stay: written Persian
# and emoji sequences need them, and they move nothing.
DECEPTIVE = re.compile("[\u061c\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")


def visible(text: str) -> str:
    r"""`text` with each character that reorders or hides the text around it shown as its
    escaped UTF-8, as an address bar shows it.

    >>> visible("\u202emoc.elgoog"), visible("zero\u200bwidth"), visible("joined\u200c") == "joined\u200c"
    ('%E2%80%AEmoc.elgoog', 'zero%E2%80%8Bwidth', True)
    """
    return DECEPTIVE.sub(lambda match: urllib.parse.quote(match.group()), text)


# Escaped bytes of characters beyond ASCII: browsers send /%C3%BCber for /über.
ESCAPED_NON_ASCII = re.compile(r"(?:%[89A-Fa-f][0-9A-Fa-f])+")


def readable_path(path: str) -> str:
    """`path` as an address bar shows it: the escaped UTF-8 of letters beyond ASCII decoded
    (`/%C3%BCber` as `/über`), ASCII escapes (`%2F`, `%20`) and bytes that are not UTF-8 kept,
    and a character that would reorder or hide the text around it escaped (`visible`).
    Stored paths stay as sent: this is how they are shown, not what they are.

    >>> readable_path("/%C3%BCber/%E6%97%A5%E6%9C%AC?q=%2F"), readable_path("/%FF%C3")
    ('/über/日本?q=%2F', '/%FF%C3')
    """

    def decoded(match: re.Match[str]) -> str:
        try:
            text = bytes.fromhex(match.group().replace("%", "")).decode("utf-8")
        except UnicodeDecodeError:
            return match.group()
        return text if text.isprintable() else match.group()

    return visible(ESCAPED_NON_ASCII.sub(decoded, path))
