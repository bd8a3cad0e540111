"""The dimensions of a page view: what stats rank, filter and export by, in one table.

Each row says how a dimension is named in the API (the filter parameter, the `top_*` panel
and its rows' key), how the dashboard titles it, how collect finds a view's value in what the
request said, and which column of `page_views` stores it. Everything reads this table: the
panels, the filters, the dashboard, the API description and the export's filters in Python,
and the SQL that names every dimension, which is rendered from it (tally/dimension_sql.py):
the named queries' `{{...}}` markers when tally/db.py loads them, and the rollup and filter
functions (migrations/dimension_functions.sql), which the release step applies after the
numbered migrations, every release, with a missing dimension's column added first.

Adding a dimension `x` is one line here, e.g. the first language a browser asks for:

    Dimension("language", "top_languages", "Languages", collect=lambda seen:
        (seen.header("Accept-Language") or "").split(",")[0].split(";")[0].strip()[:35].lower() or None),

Its place sets the panels' order; `collect` gets the request as tally/web/seen.py's `Seen`
(the beacon, its sender's audience, the visitor's id, the headers) and returns the value, or
None, kept short (a header may be 8 KB). The next release (`python -m migrations`) adds the
column `x text` to page_views (catalog only, on a partitioned table) and renders the functions
with it; views stored before count as having no value, as server-side ones do. `column=` stores
it under another name, `reads=` makes its value SQL over the row (the referrer's domain), `case=`
writes a filter's value as stored. Taking a dimension out of the table leaves its column and
the old release's tally_views_matching in place: drop them with a numbered migration once no
process of that release runs.

>>> [dimension.name for dimension in DIMENSIONS][:3]
['path', 'referrer', 'source']
>>> BY_NAME["country"].panel, BY_NAME["referrer"].inputs
('top_countries', ('search_engine', 'referrer', 'site'))
>>> value_label("country", "DE"), value_label("country", "ZZ"), value_label("path", "/%C3%A9t%C3%A9")
('Germany (DE)', 'ZZ', '/été')
>>> value_label("referrer", "xn--bcher-kva.de")
'bücher.de'
"""

from __future__ import annotations

import dataclasses
import functools
import re
import urllib.parse
from collections.abc import Callable
from typing import Any

import pycountry

from tally.hosts import shown_host
from tally.paths import decoded, stored_path

# A name or a column as SQL is rendered with it (tally/dimension_sql.py): never quoted, so plain.
IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
# A column of the row in `reads`: {row}name (the renderer writes "v." or nothing for {row}).
READ_COLUMN = re.compile(r"\{row\}(\w+)")


def _no_value(seen: Any) -> None:
    return None


@dataclasses.dataclass(frozen=True)
class Dimension:
    name: str  # the filter's query parameter, the rollups' `dim`, the panel rows' key
    panel: str  # the stats answer's list of the top values
    title: str  # the dashboard's heading
    _: dataclasses.KW_ONLY
    # A view's value from what collect saw (tally/web/seen.py, `Seen`); None for none.
    # Without one, only views stored by other means (SQL) have values.
    collect: Callable[[Any], str | None] = _no_value
    column: str = ""  # the text column of page_views that stores it: the name unless given
    # SQL of the value over a page_views row, its columns written {row}column: the column itself
    # unless given. The SQL is this repository's, never a request's.
    reads: str = ""
    # How a filter's value is written as stored, when its values have one case ('gb' is GB).
    case: Callable[[str], str] | None = None
    # The filter takes a list of values, any of which matches (a search engine's domains, the
    # forms of a path).
    any_of: bool = False

    def __post_init__(self) -> None:
        if not self.column:
            object.__setattr__(self, "column", self.name)
        if not self.reads:
            object.__setattr__(self, "reads", "{row}" + self.column)
        for identifier in (self.name, self.column, *self.inputs):
            if not IDENTIFIER.match(identifier):
                raise ValueError(
                    f"dimension {self.name!r}: {identifier!r} is not a plain lower-case SQL name"
                )

    @property
    def inputs(self) -> tuple[str, ...]:
        """The columns of page_views its value is read from, in the order `reads` names them."""
        return tuple(dict.fromkeys(READ_COLUMN.findall(self.reads)))

    def value_sql(self, row: str = "") -> str:
        """The SQL of its value over a row whose columns are written `row` + name ("v." or "")."""
        return self.reads.replace("{row}", row)


DIMENSIONS: tuple[Dimension, ...] = (
    # The page's path as browsers send it (tally/paths.py). A filter by it matches the forms
    # its views may be stored in: views a server sent before, or SQL inserted, too.
    Dimension("path", "top_paths", "Top paths", collect=lambda seen: seen.beacon.path, any_of=True),
    # The referring page's domain, www. folded, the site's own pages left out (migrations/0039),
    # or the search engine's name the web stored with the view (tally/search_engines.py): one value
    # for all its search's domains, whose visitors so count once. A filter by a name stands for
    # the domains of views stored without one, too.
    Dimension(
        "referrer",
        "top_referrers",
        "Referrers",
        collect=lambda seen: seen.beacon.referrer,
        reads="coalesce({row}search_engine, tally_referrer_domain({row}referrer, {row}site))",
        any_of=True,
    ),
    Dimension("source", "top_sources", "Sources", collect=lambda seen: seen.beacon.source),
    Dimension("medium", "top_mediums", "Mediums", collect=lambda seen: seen.beacon.medium),
    Dimension("campaign", "top_campaigns", "Campaigns", collect=lambda seen: seen.beacon.campaign),
    Dimension(
        "country", "top_countries", "Countries", collect=lambda seen: seen.audience.country, case=str.upper
    ),
    Dimension("browser", "top_browsers", "Browsers", collect=lambda seen: seen.audience.browser),
    Dimension("os", "top_os", "Operating systems", collect=lambda seen: seen.audience.os),
    Dimension("device", "top_devices", "Devices", collect=lambda seen: seen.audience.device, case=str.lower),
)
BY_NAME = {dimension.name: dimension for dimension in DIMENSIONS}
# The columns of page_views the dimensions store and read (`site` is every view's own): each
# dimension's column in the table's order, then the others their values read (the search
# engine's name). The release adds any that is missing (migrations/__init__.py).
STORED_COLUMNS: tuple[str, ...] = tuple(
    column
    for column in dict.fromkeys(
        [dimension.column for dimension in DIMENSIONS] + [c for d in DIMENSIONS for c in d.inputs]
    )
    if column != "site"
)
# The fields of a view as collect and /api/pageviews hand it to `insert_page_views`: the path,
# referrer and site first (a server-side sender's View(path, referrer, site)), the visitor's id,
# then every other dimension's column in the table's order, then the other stored columns.
VIEW_FIELDS: tuple[str, ...] = (
    "path",
    "referrer",
    "site",
    "visitor",
    *(column for column in STORED_COLUMNS if column not in ("path", "referrer")),
)


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
    code, a path with its letters readable, a referring domain's international labels in
    Unicode where they cannot deceive (tally/hosts.py), anything else as stored; in each, what
    would reorder or hide the text around it escaped (`visible`). Only the text: links,
    filters and the API keep the value as stored."""
    if name == "country":
        country = country_name(value)
        return value if country == value else f"{country} ({value})"
    if name in ("path", "goal_path"):
        return readable_path(stored_path(value))  # a path stored in another form reads as the page
    if name == "referrer":
        return visible(shown_host(value))
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


def readable_path(path: str) -> str:
    """`path` as an address bar shows it: the escaped UTF-8 of letters beyond ASCII decoded
    (`/%C3%BCber` as `/über`), ASCII escapes (`%2F`, `%20`) and bytes that are not UTF-8 kept,
    and a character that would reorder or hide the text around it escaped (`visible`).
    Paths are stored as browsers send them (tally/paths.py): this is how they are shown, not
    what they are.

    >>> readable_path("/%C3%BCber/%E6%97%A5%E6%9C%AC?q=%2F"), readable_path("/%FF%C3")
    ('/über/日本?q=%2F', '/%FF%C3')
    """
    return visible(decoded(path, lambda character: not character.isascii() and character.isprintable()))
