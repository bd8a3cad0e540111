"""The rolled-up part of a window: its days' views and visitors, every dimension's values, the
visits, as the rollup tables held them at one rollup state (tally/web/stats.py keeps it per
state, `KeptByState`: no rollup, no change). The tail not yet rolled up is added to it per
request. So are the times of the rolled-up views where the last 24 hours begin (`EdgeTimes`),
which the rollups' 15-minute cells cannot cut.

The values are most of the cost of a read: a month of rows of `page_view_day_values`. A rollup
writes the rows of today and yesterday, but for late views and backfills, and says which days it
left alone (migrations/0046: the settled days). So the values of a window's settled days are
read once and kept while they stay settled, and those of its other days after each rollup
(`Values`, a part each; every value, or the most viewed when there are many), the two added
up (`merged`).
"""

from __future__ import annotations

import array
import bisect
import collections
import contextlib
import dataclasses
import datetime
import functools
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import psycopg

from tally.db import QUERIES
from tally.dimensions import DIMENSIONS
from tally.web import events, visits
from tally.web.referrers import SEARCH_ENGINE_DOMAINS, SEARCH_ENGINE_NAMES, by_name, referrer_name
from tally.web.windows import DAY, TOP_ROWS, Lookup, Ranking, Window, count_days

T = TypeVar("T")
# The dimensions a window's panels rank: the views', the visits' entry and exit pages, events.
PANEL_DIMS = [*(d.name for d in DIMENSIONS), *visits.PAGE_PANELS, events.DIM]
PAGE_DIMS = frozenset(("path", *visits.PAGE_PANELS))  # as many values as pages: the most, by far
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
MICROSECOND = datetime.timedelta(microseconds=1)
STATES_PER_FAMILY = 2  # KeptByState's: the newest rollup state read and the one before it
# How long a request waits for another thread's read of the same window at the same state
# (each of its statements is bounded by the web's statement timeout, 5 s).
READ_WAIT_SECONDS = 6.0
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


@dataclasses.dataclass(frozen=True)
class RolledUp:
    """The rolled-up part of one window, valid for one rollup state."""

    start: datetime.datetime  # the window's first local midnight
    daily: dict[datetime.date, int]
    visitors: dict[datetime.date, int]
    after_boundary: int  # views in the full buckets of the last 24 hours
    tops: dict[str, Ranking]  # per dimension, the parts' added up
    end: datetime.datetime  # the window's end: the midnight after its last day
    visits: dict[datetime.date, visits.VisitCounts]  # per day of their start
    parts: tuple[Values, ...]  # the settled days' values and the others', or all in one
    merged: bool | None  # whether the two parts were added up (None: they were not read apart)
    # Per dimension, its values ranked in one read of the window, read when the parts' rankings
    # added up could not give its rows (`whole_ranking`).
    ranked_whole: dict[str, Ranking] = dataclasses.field(default_factory=dict)

    def whole_ranking(
        self, cur: psycopg.Cursor, dim: str, lock: threading.Lock
    ) -> Callable[[], Ranking] | None:
        """`Ranking.top`'s `whole` of `dim` for a window read in two parts, through `cur`: its
        most viewed values in one read of all its days, kept (None for a window read whole)."""
        if len(self.parts) < 2:
            return None

        def read() -> Ranking:
            with lock:
                kept = self.ranked_whole.get(dim)
            if kept is None:
                kept = read_ranking(cur, {**self.parts[0].bounds, "before_day": None}, dim)
                with lock:
                    self.ranked_whole[dim] = kept
            return kept

        return read

    def lookup(self, cur: psycopg.Cursor, dim: str, lock: threading.Lock) -> Lookup:
        """`Ranking.top`'s lookup of `dim`'s values not read with the window, through `cur`."""

        def views_of(names: list[str] | None) -> dict[str, int]:
            found: collections.Counter[str] = collections.Counter()
            for part in self.parts:
                found.update(part.views_of(cur, dim, names, lock))
            return dict(found)

        return views_of

    def visitors_of(
        self, cur: psycopg.Cursor, tz: str, window: Window, wanted: set, lock: threading.Lock
    ) -> dict[tuple[str, str], collections.Counter]:
        """Visitors per day (in `tz`) of each wanted (dimension, value), the parts' added up."""
        found = {key: collections.Counter() for key in wanted}
        for part in self.parts:
            for key, days in part.visitors_of(cur, tz, window, wanted, lock).items():
                found[key].update(days)
        return found


@dataclasses.dataclass(frozen=True)
class EdgeTimes:
    """The times (microseconds since 1970, in order) of the rolled-up views of the bucket the
    last 24 hours begin in, at one rollup state: a request counts those on its side of the cut
    here, not in page_views. 8 bytes a view: at 200 views/s, 1.4 MB a bucket."""

    times: array.array

    def between(self, start: datetime.datetime, end: datetime.datetime) -> int:
        """How many are dated in [start, end)."""
        low, high = ((moment - EPOCH) // MICROSECOND for moment in (start, end))
        return bisect.bisect_left(self.times, high) - bisect.bisect_left(self.times, low)


def read_edge_times(
    cur: psycopg.Cursor, site: str | None, first_bucket: datetime.datetime, state: tuple
) -> EdgeTimes:
    """The rolled-up views' times of the bucket from `first_bucket`, for `site` (all when None),
    at the rollup `state` (its watermark and the transactions it left running)."""
    watermark, in_progress = state
    cur.execute(
        QUERIES["stats_rolled_up_edge_times"],
        {
            "first_bucket": first_bucket,
            "watermark": watermark,
            "in_progress": list(in_progress),
            "site": site,
        },
    )
    return EdgeTimes(array.array("q", (time for (time,) in cur.fetchall())))


class KeptByState(Generic[T]):
    """What was read at one rollup state, kept by family of keys (a site's window, say) and
    state: the least recently asked dropped first, and no more than STATES_PER_FAMILY states of
    one family. One window asked after each of sixteen rollups was kept sixteen times, each
    with every value of its days (a site with 100,000 paths: about 11 MB a window). Two keep
    the state before a rollup for the requests whose snapshots began before it, and both
    sides' while a replica catches up with the primary. Safe across threads (two requests may
    read the same key at once)."""

    def __init__(self, entries: int):
        self.entries = entries
        self._kept: collections.OrderedDict[tuple[tuple, tuple], T] = collections.OrderedDict()
        self._reading: dict[tuple[tuple, tuple], threading.Event] = {}
        self._lock = threading.Lock()

    def get(self, family: tuple, state: tuple, read: Callable[[], T]) -> T:
        """What is kept for `family` at `state`, else what `read()` gives, kept. While another
        thread reads the same, this one waits for it (up to READ_WAIT_SECONDS, then reads too):
        a window of a site whose paths carry ids takes seconds to read after each rollup, and the
        warm-up's read and each reader's were all made at once."""
        key = (family, state)
        with self._lock:
            kept = self._kept.get(key)
            if kept is not None:
                self._kept.move_to_end(key)
                return kept
            reading = self._reading.get(key)
            if reading is None:
                reading = self._reading[key] = threading.Event()
                mine = True
            else:
                mine = False
        if not mine:
            reading.wait(READ_WAIT_SECONDS)
            with self._lock:
                kept = self._kept.get(key)
            if kept is not None:
                return kept
            return self._keep(key, family, read())  # the other read failed, or is slow
        try:
            return self._keep(key, family, read())
        finally:
            with self._lock:
                del self._reading[key]
            reading.set()

    def _keep(self, key: tuple[tuple, tuple], family: tuple, value: T) -> T:
        with self._lock:
            self._kept[key] = value
            self._kept.move_to_end(key)
            of_family = [held for held in self._kept if held[0] == family]  # least recently asked first
            for older in of_family[:-STATES_PER_FAMILY]:
                del self._kept[older]
            while len(self._kept) > self.entries:
                self._kept.popitem(last=False)
        return value


def read_rolled_up(
    cur: psycopg.Cursor,
    site: str | None,
    tz: str,
    window: Window,
    lock: threading.Lock,
    split: bool = False,
    settled_before: datetime.date | None = None,
    settled: Callable[[Callable[[], Values]], Values] = lambda read: read(),
    apart: bool = True,
) -> RolledUp:
    """The rolled-up part of `window` for `site` (all when None), days in the zone `tz`; its
    values read a statement per page dimension when `split` (for a site whose reads are slow).
    Those of the UTC days before `settled_before` (None: none is settled) are `settled(read)`,
    which may give what was read before instead of reading them again (tally/web/stats.py),
    unless not `apart`: then every value is read at once, as when the two would not add up
    cheaply (`merged`)."""
    cur.execute(QUERIES["local_midnight"], {"day": window.days[0], "tz": tz})
    start = cur.fetchone()[0]
    # The window ends at the midnight after its last day, today's too: a view dated later
    # (a clock far off) counts on its own day, not in today's panels.
    cur.execute(QUERIES["local_midnight"], {"day": window.days[-1] + DAY, "tz": tz})
    end = cur.fetchone()[0]
    since = min(start, window.first_full_bucket)
    cur.execute(
        QUERIES["stats_rolled_up_days"],
        {
            "since": since,
            "end": end,
            "recent": window.first_full_bucket,
            "now_bucket": window.now_bucket,
            "site": site,
            "tz": tz,
        },
    )
    daily: dict[datetime.date, int] = {}
    after_boundary = 0
    for day, views, recent in cur.fetchall():
        if window.days[0] <= day <= window.days[-1]:
            daily[day] = views
        after_boundary += recent
    cur.execute(QUERIES["stats_rolled_up_visitors"], {"start": start, "end": end, "site": site, "tz": tz})
    visitors: collections.Counter[datetime.date] = collections.Counter()
    for day, count in cur.fetchall():
        count_days(visitors, window, day, count)
    whole = {"start": start, "end": end, "site": site, "from_day": None, "before_day": None}
    tops, added_up = None, None
    if apart and settled_before is not None and start.astimezone(datetime.UTC).date() < settled_before:
        settled_part = functools.partial(
            settled, lambda: read_values(cur, {**whole, "before_day": settled_before}, RANKED_VALUES, split)
        )
        if end.astimezone(datetime.UTC).date() < settled_before:  # every day of it settled
            parts = (settled_part(),)
            tops = parts[0].tops
        else:
            others = {**whole, "from_day": settled_before}
            cur.execute(
                QUERIES["stats_rolled_up_wide_dims"], {**others, "dims": PANEL_DIMS, "most": MERGED_VALUES}
            )
            # Few enough values there: every one read; else each dimension's most viewed, as
            # the settled days' are, and those of either ranking the other left out looked up.
            wide = bool(cur.fetchall())
            recent = read_values(cur, others, RANKED_VALUES if wide else None, split)
            parts = (settled_part(), recent if wide else recent.bounded(RANKED_VALUES))
            tops = merged(cur, parts[0], recent, lock)
            added_up = tops is not None
    if tops is None:
        parts = (read_values(cur, whole, RANKED_VALUES, split),)
        tops = parts[0].tops
    per_day = {
        day: counts
        for day, counts in visits.rolled_up(cur, start, end, site, tz).items()
        if window.days[0] <= day <= window.days[-1]
    }
    return RolledUp(start, daily, dict(visitors), after_boundary, tops, end, per_day, parts, added_up)


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
            params = {**bounds, "dims": group, "ranked": ranked, "engines": SEARCH_ENGINE_DOMAINS}
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
