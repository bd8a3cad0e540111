"""The rolled-up part of a window: its days' views and visitors, every dimension's values, the
visits, as the rollup tables held them at one rollup state (tally/web/stats.py keeps it per
state, `KeptByState`: no rollup, no change). The tail not yet rolled up is added to it per
request. So are the times of the rolled-up views where the last 24 hours begin (`EdgeTimes`),
which the rollups' 15-minute cells cannot cut.

The values are most of the cost of a read: a month of rows of `page_view_day_values`. A rollup
writes the rows of today and yesterday, but for late views and backfills, and says which days it
left alone (migrations/0046: the settled days). So the values of a window's settled days are
read once and kept while they stay settled, and those of its other days after each rollup
(tally/web/values.py: `Values`, a part each; every value, or the most viewed when there are
many), the two added up (`merged`).
"""

from __future__ import annotations

import array
import bisect
import collections
import dataclasses
import datetime
import functools
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import psycopg

from tally.db import QUERIES
from tally.web import values, visits
from tally.web.values import Values
from tally.web.windows import DAY, Lookup, Ranking, Window, count_days

T = TypeVar("T")
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
MICROSECOND = datetime.timedelta(microseconds=1)
STATES_PER_FAMILY = 2  # KeptByState's: the newest rollup state read and the one before it
# How long a request waits for another thread's read of the same window at the same state
# (each of its statements is bounded by the web's statement timeout, 5 s).
READ_WAIT_SECONDS = 6.0


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
                kept = values.read_ranking(cur, {**self.parts[0].bounds, "before_day": None}, dim)
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
        self._reading: dict[tuple[tuple, tuple, object], threading.Event] = {}
        self._lock = threading.Lock()

    def get(self, family: tuple, state: tuple, read: Callable[[], T], server: object = None) -> T:
        """What is kept for `family` at `state`, else what `read()` gives, kept. While another
        thread reads the same from the same `server`, this one waits for it (up to
        READ_WAIT_SECONDS, then reads too): a window of a site whose paths carry ids takes
        seconds to read after each rollup, and the warm-up's read and each reader's were all
        made at once. Never for a read from another server: a replica frozen mid-read held the
        reads that had moved to the primary for the whole wait (6.5 s, where reads must move
        within 2 s)."""
        key = (family, state)
        with self._lock:
            kept = self._kept.get(key)
            if kept is not None:
                self._kept.move_to_end(key)
                return kept
            reading = self._reading.get((*key, server))
            if reading is None:
                reading = self._reading[(*key, server)] = threading.Event()
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
                del self._reading[(*key, server)]
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
    ranked = values.RANKED_VALUES
    tops, added_up = None, None
    if apart and settled_before is not None and start.astimezone(datetime.UTC).date() < settled_before:
        settled_part = functools.partial(
            settled, lambda: values.read_values(cur, {**whole, "before_day": settled_before}, ranked, split)
        )
        if end.astimezone(datetime.UTC).date() < settled_before:  # every day of it settled
            parts = (settled_part(),)
            tops = parts[0].tops
        else:
            others = {**whole, "from_day": settled_before}
            cur.execute(
                QUERIES["stats_rolled_up_wide_dims"],
                {**others, "dims": values.PANEL_DIMS, "most": values.MERGED_VALUES},
            )
            # Few enough values there: every one read; else each dimension's most viewed, as
            # the settled days' are, and those of either ranking the other left out looked up.
            wide = bool(cur.fetchall())
            recent = values.read_values(cur, others, ranked if wide else None, split)
            parts = (settled_part(), recent if wide else recent.bounded(ranked))
            tops = values.merged(cur, parts[0], recent, lock)
            added_up = tops is not None
    if tops is None:
        parts = (values.read_values(cur, whole, ranked, split),)
        tops = parts[0].tops
    per_day = {
        day: counts
        for day, counts in visits.rolled_up(cur, start, end, site, tz).items()
        if window.days[0] <= day <= window.days[-1]
    }
    return RolledUp(start, daily, dict(visitors), after_boundary, tops, end, per_day, parts, added_up)
