"""A window's values: each panel dimension's rolled-up views per value, over some of its days'
rows of `page_view_day_values`, most viewed first (`Values`, read by `read_values`).

A site whose paths carry ids has about as many values as views, so a window reads each
dimension's most viewed and looks up others only when they might reach a panel's rows. A
window's settled days (migrations/0046) and its other days are read apart, each a `Values`,
and their rankings added up (`merged`); tally/web/rolled_up.py reads them for a window.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import threading

import psycopg

from tally.db import QUERIES
from tally.dimensions import DIMENSIONS
from tally.search_engines import SEARCH_ENGINE_DOMAINS, SEARCH_ENGINE_NAMES, by_name, referrer_name
from tally.web import events, visits
from tally.web.windows import TOP_ROWS, Ranking, Window, count_days

# The dimensions a window's panels rank: the views', the visits' entry and exit pages, events.
PANEL_DIMS = [*(d.name for d in DIMENSIONS), *visits.PAGE_PANELS, events.DIM]
PAGE_DIMS = frozenset(("path", *visits.PAGE_PANELS))  # as many values as pages: the most, by far
# Values of each dimension read with a window (its most viewed, `Ranking`), about 110 bytes
# each: a site whose paths carry ids has as many as views (560,000 paths held 700 MB).
RANKED_VALUES = 200
# Values a window looks up beyond those (a tail's that might reach the top rows), kept with it.
LOOKED_UP_VALUES = 10_000
# A window's other days' values are read whole to be added to its settled days' (`merged`)
# when each dimension has MERGED_VALUES rows there at most, else ranked as the settled days'
# are: the other days of a site whose paths carry ids held 280,000 values (the web at 250 MB
# after reading them), and looking up 115,000 that could each reach a panel took 0.3-0.5 s a
# dimension, more than one read of a 7-day window. `merged` looks up at most MERGED_LOOKUPS
# values in the settled days; past that the window is read whole instead.
MERGED_VALUES = 10_000
MERGED_LOOKUPS = 10_000


@dataclasses.dataclass(frozen=True)
class Values:
    """Every panel dimension's rolled-up views over some of a window's rows, those of the UTC
    days in [from_day, before_day) (None: no bound): the most viewed of each (`Ranking`; all of
    them when `ranked` was None), and, filled on demand, the views of others and the visitors
    per day of some."""

    start: datetime.datetime  # the window's first local midnight
    end: datetime.datetime  # the window's end
    site: str | None
    from_day: datetime.date | None
    before_day: datetime.date | None
    tops: dict[str, Ranking]  # per dimension; referrers by name: search engines grouped
    referrer_domains: list[str]  # the domains behind the referrer names read
    value_visitors: dict[tuple[str, str], collections.Counter]  # per day, filled on demand
    looked_up: dict[tuple[str, str], int]  # views of values beyond `tops`, filled on demand

    @property
    def bounds(self) -> dict:
        """The queries' parameters that say which rows these are."""
        return {
            "start": self.start,
            "end": self.end,
            "site": self.site,
            "from_day": self.from_day,
            "before_day": self.before_day,
        }

    def views_of(
        self, cur: psycopg.Cursor, dim: str, names: list[str] | None, lock: threading.Lock
    ) -> dict[str, int]:
        """The views of `names` of `dim` not read with the ranking (of every name, for None)."""
        ranking = self.tops[dim]
        if ranking.last is None:  # every name with views was read
            return (
                dict(ranking.views) if names is None else {name: ranking.views.get(name, 0) for name in names}
            )
        if names is None:  # every value, this once
            values = _read_values(cur, self.bounds, [dim], None)[0][dim]
            return dict(by_name(values)) if dim == "referrer" else values
        with lock:
            found = {name: self.looked_up[(dim, name)] for name in names if (dim, name) in self.looked_up}
        # A search engine's domains were all read (stats_rolled_up_dims): one not among them has none.
        engines = SEARCH_ENGINE_NAMES if dim == "referrer" else frozenset()
        wanted = [name for name in names if name not in found and name not in engines]
        found.update((name, 0) for name in names if name not in found and name in engines)
        if wanted:
            cur.execute(QUERIES["stats_rolled_up_value_views"], {**self.bounds, "dim": dim, "values": wanted})
            read = dict.fromkeys(wanted, 0)
            read.update(cur.fetchall())
            found.update(read)
            with lock:
                if len(self.looked_up) + len(read) <= LOOKED_UP_VALUES:
                    self.looked_up.update(((dim, name), views) for name, views in read.items())
        return found

    def bounded(self, ranked: int) -> Values:
        """These values as if each dimension's first `ranked` + 1 alone had been read (and every
        search engine's): the others are looked up when asked for. The other days' values are
        read whole to be merged, and kept so: on a site whose paths carry ids, 26 MB a window."""
        return dataclasses.replace(self, tops={dim: bounded(r, dim, ranked) for dim, r in self.tops.items()})

    def visitors_of(
        self, cur: psycopg.Cursor, tz: str, window: Window, wanted: set, lock: threading.Lock
    ) -> dict[tuple[str, str], collections.Counter]:
        """Visitors per day (in `tz`) of each wanted (dimension, value), kept. A referrer name
        (a search engine) adds up its domains' visitors."""
        with lock:
            missing = wanted - set(self.value_visitors)
        if missing:
            counted = {key: collections.Counter() for key in missing}
            names = {value for dim, value in missing if dim == "referrer"}
            domains = [d for d in self.referrer_domains if referrer_name(d) in names]
            # Any other name is its own domain, read with the window or not (beyond its top values).
            domains += sorted(names - SEARCH_ENGINE_NAMES - set(domains))
            pairs = [(dim, value) for dim, value in missing if dim != "referrer"]
            pairs += [("referrer", domain) for domain in domains]
            cur.execute(
                QUERIES["stats_rolled_up_dim_visitors"],
                {
                    **self.bounds,
                    "tz": tz,
                    "dims": [dim for dim, _ in pairs],
                    "values": [value for _, value in pairs],
                },
            )
            for dim, value, day, count in cur.fetchall():
                key = (dim, referrer_name(value) if dim == "referrer" else value)
                if key in counted:
                    count_days(counted[key], window, day, count)
            with lock:
                self.value_visitors.update(counted)
        with lock:
            return {key: collections.Counter(self.value_visitors[key]) for key in wanted}


def bounded(ranking: Ranking, dim: str, ranked: int) -> Ranking:
    """`ranking` with its first `ranked` + 1 names kept (and every search engine's, whose names
    are otherwise taken to have no views), the rest ranking after the last of them, or after
    its own `last` if that comes first."""
    if len(ranking.ranked) <= ranked + 1:
        return ranking
    first = ranking.ranked[: ranked + 1]
    kept = set(first) | (SEARCH_ENGINE_NAMES & set(ranking.views) if dim == "referrer" else set())
    last = (ranking.views[first[-1]], first[-1])
    if ranking.last is not None and (-ranking.last[0], ranking.last[1]) < (-last[0], last[1]):
        last = ranking.last
    return Ranking.of({name: ranking.views[name] for name in kept}, last)


def read_values(
    cur: psycopg.Cursor,
    bounds: dict,
    ranked: int | None = RANKED_VALUES,
    split: bool = False,
) -> Values:
    """The values over the rows `bounds` says (start, end, site, from_day, before_day): each
    dimension's first `ranked` + 1 (all when None); read a statement per page dimension when
    `split` (for a site whose reads are slow)."""
    values, lasts = _read_values(cur, bounds, PANEL_DIMS, ranked, split)
    domains = list(values["referrer"])
    values["referrer"] = by_name(values["referrer"])
    tops = {dim: Ranking.of(views, lasts.get(dim)) for dim, views in values.items()}
    return Values(
        bounds["start"],
        bounds["end"],
        bounds["site"],
        bounds["from_day"],
        bounds["before_day"],
        tops,
        domains,
        {},
        {},
    )


def read_ranking(cur: psycopg.Cursor, bounds: dict, dim: str) -> Ranking:
    """`dim`'s most viewed values over the rows `bounds` says, as `read_values` ranks them."""
    values, lasts = _read_values(cur, bounds, [dim], RANKED_VALUES)
    return Ranking.of(by_name(values[dim]) if dim == "referrer" else values[dim], lasts.get(dim))


def merged(
    cur: psycopg.Cursor, settled: Values, recent: Values, lock: threading.Lock
) -> dict[str, Ranking] | None:
    """The rankings of a window's settled days and of its other days as one.

    A value both read adds up its views. One the other days' ranking left out (it was read
    whole unless a dimension had too many values there) is looked up there: it has at most that
    ranking's `last`'s views there, and the settled days' ranked values must be exact. One the
    settled ranking left out has at most its `last`'s views there, and is looked up only when
    that and its other days' views could reach the panel's rows as they are (a tail's views
    only raise those, but for entries and exits, which `Ranking.top` reads whole for when they
    fall). The others stay unread: a value read by neither has at most the two bounds' views,
    and one left unread at most the settled bound and its own; each then ranks after the
    bounds' names. None when a dimension would look up more than MERGED_LOOKUPS values in the
    settled days."""
    tops = {}
    for dim, ranking in settled.tops.items():
        views = dict(ranking.views)
        others = recent.tops[dim]
        unread = {}
        for name, count in others.views.items():
            if name in views:
                views[name] += count
            elif name:  # '' (an import's "none") is on no panel
                unread[name] = count
        if others.last is not None:
            missing = [name for name in ranking.views if name not in others.views]
            for name, count in recent.views_of(cur, dim, missing, lock).items() if missing else ():
                views[name] += count
        if ranking.last is None:  # every settled value was read: the others had none there
            tops[dim] = bounded(Ranking.of({**views, **unread}, others.last), dim, RANKED_VALUES)
            continue
        floor, floor_name = ranking.last
        shown = sorted((count for name, count in views.items() if count > 0 and name), reverse=True)
        tenth = shown[TOP_ROWS - 1] if len(shown) >= TOP_ROWS else None
        reach = [name for name, count in unread.items() if tenth is None or floor + count >= tenth]
        if len(reach) > MERGED_LOOKUPS:
            return None
        if reach:
            for name, views_there in settled.views_of(cur, dim, reach, lock).items():
                views[name] = views_there + unread.pop(name)
        # Where the values not in `views` rank at best. A value left out of a ranking with as
        # many views as its `last` ranks after it by name: one left unread has at most the
        # settled bound and its own views, then a name after the settled `last`'s; one read by
        # neither at most the two bounds, then a name after both.
        after = [ranking.last]
        if unread:
            after.append((floor + max(unread.values()), floor_name))
        if others.last is not None:
            after.append((floor + others.last[0], max(floor_name, others.last[1])))
        last = min(after, key=lambda bound: (-bound[0], bound[1]))
        tops[dim] = bounded(Ranking.of(views, last), dim, RANKED_VALUES)  # looked-up values held 30 MB
    return tops


def _read_values(
    cur: psycopg.Cursor, bounds: dict, dims: list[str], ranked: int | None, split: bool = False
) -> tuple[dict[str, dict[str, int]], dict[str, tuple[int, str]]]:
    """The rolled-up views of each of `dims`' first `ranked` + 1 values (all when None), and of
    every search engine's referring domain; and, per dimension with more values than were read,
    the (views, value) of the last read in rank order (`Ranking.last`)."""
    # One statement; or, when `split`, the pages' dimensions (a value a path) a statement each,
    # each within the web's statement timeout (all in one passed its 5 s on a site of 600,000
    # paths under traffic), and the rest in one, sent at once in one round trip. Each statement
    # is planned (about 1 ms), so a site whose reads are quick reads them in one.
    groups = [[dim] for dim in dims if dim in PAGE_DIMS] + [[dim for dim in dims if dim not in PAGE_DIMS]]
    groups = [group for group in groups if group] if split else [dims]
    conn = cur.connection
    cursors = [conn.cursor() for _ in groups]
    with conn.pipeline() if split else contextlib.nullcontext():
        for group, each in zip(groups, cursors, strict=True):
            params = {
                **bounds,
                "dims": group,
                "ranked": ranked,
                "engines": SEARCH_ENGINE_DOMAINS,
                "engine_names": sorted(SEARCH_ENGINE_NAMES),
            }
            each.execute(QUERIES["stats_rolled_up_dims"], params)
    values: dict[str, dict[str, int]] = {dim: {} for dim in dims}
    in_rank: dict[str, list[tuple[int, str]]] = {dim: [] for dim in dims}
    for each in cursors:
        for dim, value, views, is_ranked in each.fetchall():
            values[dim][value] = views
            if is_ranked:
                in_rank[dim].append((-views, value))
        each.close()
    lasts = {}
    for dim, keys in in_rank.items():
        if ranked is not None and len(keys) > ranked:
            views, value = max(keys)  # the last in rank order: fewest views, then the greatest value
            lasts[dim] = (-views, value)
    return values, lasts
