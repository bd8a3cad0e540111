"""The dashboard page: server-rendered HTML with an inline SVG chart, no external assets.

The owner sees the job queue, its errors and the processes; a share link or a public
dashboard shows the numbers only (tally/web/auth.py decides who is reading).

Every panel comes from the table of dimensions (tally/dimensions.py): a row links to the
same page with that value as a filter, and each active filter is a chip linking to the page
without it. Links are built here, with urlencode, and keep the window, the site, the zone,
a share link's token and the other filters; the template escapes every value it prints.

>>> query_string(7, None, filters={"country": "DE", "path": "/a&b"}, share="t")
'?days=7&share=t&path=%2Fa%26b&country=DE'
>>> change(12.5), change(-40.0), change(None) == NONE
('+12.5%', '-40%', True)
>>> card_value("bounce_rate", 0.25), card_value("visit_duration_seconds", 273.9), card_value("visits", 12)
('25%', '273.9 s', '12')
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import html
import urllib.parse
import zoneinfo
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import bottle

from tally.dimensions import DIMENSIONS, value_label, visible
from tally.hosts import shown_host
from tally.paths import stored_path
from tally.web.chart import CHART_BOTTOM, CHART_HEIGHT, CHART_WIDTH, MARKERS_UP_TO, chart_bars, previous_line
from tally.web.filters import FILTER_NAMES
from tally.web.sessions import PAGE_HEADERS

TEMPLATE = bottle.SimpleTemplate(Path(__file__).with_name("dashboard.tpl").read_text(encoding="utf-8"))
REFRESH_SECONDS = 30
# A page whose numbers took seconds to count (a filter over many views) reloads less often: each
# open tab otherwise ran the same count every 30 s (3.3 s of a core for the busiest country of a
# week at 1M views). After REFRESH_COST_FACTOR times what it took, at most MAX_REFRESH_SECONDS.
REFRESH_COST_FACTOR = 20
MAX_REFRESH_SECONDS = 300


def refresh_seconds(counted_in: float) -> int:
    """How long the page waits before it reloads, given the seconds its numbers took.

    >>> refresh_seconds(0.05), refresh_seconds(3.3), refresh_seconds(60)
    (30, 66, 300)
    """
    return min(MAX_REFRESH_SECONDS, max(REFRESH_SECONDS, round(counted_in * REFRESH_COST_FACTOR)))


HEADERS = PAGE_HEADERS
WINDOWS = ((7, "7 days"), (30, "30 days"), (90, "90 days"), (366, "a year"))
# A dimension's name in chips and column heads where capitalizing it is not enough.
LABELS = {"os": "OS", "goal_path": "Goal page"}
NONE = "\N{EN DASH}"  # a change from nothing, a count not made


def label_of(name: str) -> str:
    """How a dimension is named on the page: 'Country', 'OS'."""
    return LABELS.get(name, name.replace("_", " ").capitalize())


def change(percent: float | None) -> str:
    """A change in percent for people: '+12.5%', '-40%', and a dash where there was nothing before."""
    if percent is None:
        return NONE
    return f"{percent:+g}%"


def card_value(key: str, value: float) -> str:
    """A visits card's figure as the card writes it, this period's and the one before alike (the
    period before's bounce rate read "vs 0.25 before" beside "2%")."""
    if key == "bounce_rate":
        return f"{round(100 * value)}%"
    if key == "visit_duration_seconds":
        return f"{value:g} s"
    return str(value)


def query_string(
    days: int,
    site: str | None,
    tz: str = "UTC",
    share: str | None = None,
    filters: Mapping[str, str] | None = None,
    refresh: bool = True,
) -> str:
    """The dashboard's address for a window, a site (None: every site), a zone and filters
    (in the order of tally/dimensions.py, then the goals); a share link's reader keeps the
    share token in each, and a reader who stopped the page's reloads (`refresh=off`) that."""
    filters = filters or {}
    parameters = {
        "days": days,
        **({"site": site} if site else {}),
        **({"tz": tz} if tz != "UTC" else {}),
        **({"share": share} if share is not None else {}),
        **({"refresh": "off"} if not refresh else {}),
        **{name: filters[name] for name in FILTER_NAMES if filters.get(name) not in (None, "")},
    }
    return "?" + urllib.parse.urlencode(parameters)


@dataclasses.dataclass(frozen=True)
class Chip:
    """One active filter: its label and the address without it."""

    name: str
    label: str
    href: str


@dataclasses.dataclass(frozen=True)
class Row:
    value: str
    label: str
    views: int
    visitors: int
    href: str  # the page with this value as a filter
    active: bool  # the value is a filter already


@dataclasses.dataclass(frozen=True)
class Panel:
    name: str
    id: str
    title: str
    heading: str
    rows: list[Row]


def panels(stats: dict[str, Any], address: functools.partial) -> list[Panel]:
    """Each dimension's top values, each linking to the page filtered by it."""
    filters = stats.get("filters") or {}
    return [
        Panel(
            dimension.name,
            dimension.panel.replace("_", "-"),
            dimension.title,
            label_of(dimension.name),
            [
                Row(
                    value=row[dimension.name],
                    label=value_label(dimension.name, row[dimension.name]),
                    views=row["views"],
                    visitors=row.get("visitors", 0),
                    href="/" + address(filters={**filters, dimension.name: row[dimension.name]}),
                    active=is_filtered_by(filters, dimension.name, row[dimension.name]),
                )
                for row in stats.get(dimension.panel, [])
            ],
        )
        for dimension in DIMENSIONS
    ]


def is_filtered_by(filters: Mapping[str, str], name: str, value: str) -> bool:
    """Whether the answer is filtered by `value` of `name`: a path in whatever form it is stored
    (a filter holds it as browsers send it, tally/paths.py)."""
    return filters.get(name) == (stored_path(value) if name == "path" else value)


def chips(filters: Mapping[str, str], address: functools.partial) -> list[Chip]:
    """The active filters, in the order of the dimensions then the goals, each linking to the
    page without it."""
    return [
        Chip(
            name,
            f"{label_of(name)}: {value_label(name, filters[name])}",
            "/" + address(filters={other: value for other, value in filters.items() if other != name}),
        )
        for name in FILTER_NAMES
        if name in filters
    ]


def event_rows(stats: dict[str, Any], address: functools.partial) -> list[dict[str, Any]]:
    """The top events, each linking to the page narrowed to the visitors who sent it."""
    filters = stats.get("filters") or {}
    return [
        {
            **row,
            "percent": f"{100 * row['conversion_rate']:.1f}%",
            "label": value_label("event", row["event"]),
            "href": "/" + address(filters={**filters, "event": row["event"]}),
            "active": filters.get("event") == row["event"],
        }
        for row in stats.get("top_events", [])
    ]


def visit_page_rows(stats: dict[str, Any], key: str, address: functools.partial) -> list[dict[str, Any]]:
    """The top entry or exit pages (`key`), each linking to the page filtered by its path, as a
    row of the paths panel does."""
    filters = stats.get("filters") or {}
    return [
        {
            **row,
            "label": value_label("path", row["path"]),
            "href": "/" + address(filters={**filters, "path": row["path"]}),
            "active": is_filtered_by(filters, "path", row["path"]),
        }
        for row in stats.get(key, [])
    ]


def breakable(name: str) -> str:
    """A task's name as HTML that a narrow column may break after each underscore, nowhere else.

    >>> breakable("cleanup_old_page_views"), breakable("a<b")
    ('cleanup_<wbr>old_<wbr>page_<wbr>views', 'a&lt;b')
    """
    return "_<wbr>".join(html.escape(part) for part in name.split("_"))


def age(seconds: float | None) -> str:
    """Say how long ago, for people: '4 s ago', '3 min ago', 'never'."""
    if seconds is None:
        return "never"
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def tracker_tag(tally_url: str | None) -> str:
    """The tag a site copies to send its views here. Its address is absolute, since a `src` of
    `/tally.js` on another site loads from that site: the configured public address, else the
    one this request came to (behind a router, the one the browser used, as sessions.py reads it).

    >>> tracker_tag("https://tally.example.com")
    '<script defer src="https://tally.example.com/tally.js"></script>'
    """
    if not tally_url:
        environ = bottle.request.environ
        scheme = _first(environ.get("HTTP_X_FORWARDED_PROTO")).lower() or environ.get(
            "wsgi.url_scheme", "http"
        )
        host = (
            _first(environ.get("HTTP_X_FORWARDED_HOST"))
            or environ.get("HTTP_HOST")
            or environ.get("SERVER_NAME")
        )
        tally_url = f"{scheme if scheme in ('http', 'https') else 'http'}://{host or 'localhost'}"
    return f'<script defer src="{tally_url.rstrip("/")}/tally.js"></script>'


def _first(header: str | None) -> str:
    """A forwarded header's first entry: the one the client's side of the proxies saw."""
    return (header or "").split(",")[0].strip()


def written_as(when: Callable[[datetime.datetime | None], str]) -> Callable[[str | None], str]:
    """`when` (the jobs page's way of writing a time) for the ISO text the answers carry, so the
    same failure reads the same on both pages; '' for None."""
    return lambda text: when(datetime.datetime.fromisoformat(text) if text else None)


@dataclasses.dataclass(frozen=True)
class Retention:
    """What filtered figures leave out: they count the raw views, which the cleanup deletes
    after RETENTION_DAYS (the rollups that unfiltered ones read are kept 400 days)."""

    note: str | None  # the sentence that says so, when the window or the period before reaches past the cut
    previous_not_kept: bool  # the period before lies wholly before the cut: its zeros are no count


def retention(stats: dict[str, Any]) -> Retention:
    """What the answer's filters leave out; nothing unfiltered. The cut is the answer's own time
    less retention_days, as a day of its zone: every view of an earlier day is older than it."""
    if not stats.get("filters"):
        return Retention(None, False)
    kept = stats["retention_days"]
    at = datetime.datetime.fromisoformat(stats["generated_at"]) - datetime.timedelta(days=kept)
    cut = at.astimezone(zoneinfo.ZoneInfo(stats["tz"])).date()
    previous = stats.get("previous")
    earliest = datetime.date.fromisoformat((previous or stats)["first_day"])
    if earliest > cut:
        return Retention(None, False)
    note = (
        f"Filtered figures count the raw views, kept {kept} day{'' if kept == 1 else 's'}:"
        f" days before {cut.isoformat()} count none."
    )
    return Retention(note, previous is not None and datetime.date.fromisoformat(previous["last_day"]) < cut)


def render(
    stats: dict[str, Any],
    queue: dict[str, Any] | None,
    processes: dict[str, Any] | None,
    dyno: str,
    sites: list[dict[str, Any]] | None = None,
    *,
    owner: bool = True,
    logout_token: str | None = None,
    share: str | None = None,
    counted_in: float = 0.0,
    tally_url: str | None = None,
    reloads: bool = True,
) -> str:
    """The page; `queue` and `processes` (owner only) are None for anyone else; `counted_in`, the
    seconds its numbers took, sets how soon it reloads (`reloads`: at all); `tally_url`, the
    public address when one is configured, goes into the tag a fresh page offers to copy."""
    filters = stats.get("filters") or {}
    previous = stats.get("previous")
    # The page as it is (window, site, zone, share token, filters, reloads); a link changes one.
    here = functools.partial(query_string, stats["days"], stats["site"], stats["tz"], share, filters)
    address = functools.partial(
        query_string, stats["days"], stats["site"], stats["tz"], share, refresh=reloads
    )
    # This page for the owner, who needs no share token: the CSV export's and the login's.
    unshared = query_string(stats["days"], stats["site"], stats["tz"], filters=filters)
    bars = chart_bars(stats["daily"], previous["daily"] if previous else None)
    # Not at the top: jobs_page imports (through params, responses) error_page, which imports
    # this module's REFRESH_SECONDS; whichever of the two came first would meet the other half made.
    from tally.web.jobs_page import time_shown

    return TEMPLATE.render(
        stats=stats,
        sites=sites or [],
        host_label=shown_host,  # a site's name as its owner writes it (tally/hosts.py)
        query=functools.partial(query_string, share=share, filters=filters, refresh=reloads),
        export=unshared,
        windows=WINDOWS,
        queue=queue,
        processes=processes,
        dyno=dyno,
        owner=owner,
        logout_token=logout_token,
        bars=bars,
        previous=previous,
        previous_points=previous_line(bars),
        markers=len(bars) <= MARKERS_UP_TO,
        change=change,
        card_value=card_value,
        none=NONE,
        panels=panels(stats, address),
        events=event_rows(stats, address),
        visit_pages=[
            (key, title, visit_page_rows(stats, key, address))
            for key, title in (("top_entry_pages", "Entry pages"), ("top_exit_pages", "Exit pages"))
        ],
        chips=chips(filters, address),
        clear="/" + address(filters={}),
        login="/login?" + urllib.parse.urlencode({"next": "/" + unshared}),  # and back here
        age=age,
        breakable=breakable,
        # In the zone the page counts days in (TIMEZONE unless ?tz= says), as the jobs page.
        when=written_as(time_shown(stats["tz"])),
        tracker_tag=tracker_tag(tally_url) if not filters and not stats["total_views"] else None,
        retention=retention(stats),
        as_text=lambda value: visible(str(value)),  # an event's prop or value, as value_label shows text
        # A reload moves the keyboard's focus back to the top: a reader may stop them (WCAG 2.2.1).
        refresh=refresh_seconds(counted_in) if reloads else None,
        reloads_toggle="/" + here(refresh=not reloads),
        width=CHART_WIDTH,
        height=CHART_HEIGHT,
        baseline=CHART_HEIGHT - CHART_BOTTOM,
    )
