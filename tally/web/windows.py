"""The days a stats answer covers, and the arithmetic of counting over them.

A window is a run of whole days in one IANA zone, fixed by the database clock: the last
`days` days ending today (or, for `?compare=previous` and reports, on an earlier day).
Visitors are counted by visitor days: an id's views of one UTC day count on the days (in
the zone) of its first and last of them, once each (docs/ARCHITECTURE.md, "Sites and visitors").
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
from collections.abc import Callable
from typing import Any

BUCKET = datetime.timedelta(minutes=15)  # the rollups' grain (migrations/0005)
DAY = datetime.timedelta(days=1)
TOP_ROWS = 10
MAX_DAYS = 366
DEFAULT_DAYS = 30  # a window without ?days=
# The visit figures of an answer (tally/web/visits.py), compared with the period before like views.
VISIT_FIGURES = ("visits", "bounce_rate", "visit_duration_seconds", "views_per_visit")
# Where the 15-minute buckets are aligned (date_bin's origin in tally/queries.sql).
EPOCH = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)


def bucket_of(moment: datetime.datetime) -> datetime.datetime:
    """The start of the 15-minute bucket `moment` falls in."""
    return moment - (moment - EPOCH) % BUCKET


# Rolled-up views of some names of a dimension not read with its top rows (of all, for None).
Lookup = Callable[[list[str] | None], dict[str, int]]


def rank(counts: dict[str, int]) -> Callable[[str], tuple[int, str]]:
    """The sort key of a panel's rows: most views first, then by name (in code point order)."""
    return lambda name: (-counts[name], name)


@dataclasses.dataclass(frozen=True)
class Ranking:
    """A dimension's rolled-up views per name, and the names ranked once (most views, then by
    name), so a request finds its top rows without sorting every name again.

    A dimension may have more names than were read (a site whose paths carry ids has about as
    many as views): then `last` is the (views, name) of the last one read in rank order, and
    every name not read ranks after it, so has at most its views. A name the tail brings that
    was not read is looked up (`lookup`) only if that many views plus the tail's could reach
    the top rows."""

    views: dict[str, int]
    ranked: list[str]
    last: tuple[int, str] | None = None  # None: every name with views was read

    @classmethod
    def of(cls, views: dict[str, int], last: tuple[int, str] | None = None) -> Ranking:
        return cls(views, sorted(views, key=rank(views)), last)

    def top(
        self, tail: dict[str, int], key: str, lookup: Lookup, whole: Callable[[], Ranking] | None = None
    ) -> list[dict[str, Any]]:
        """The TOP_ROWS names with the most views, the tail's added. Only the first TOP_ROWS
        + len(tail) ranked names and the tail's can make it: each name the tail leaves alone
        keeps its rank among the others it leaves alone. `lookup(names)` gives the rolled-up
        views of names not read (of every name, for None), asked only when `last` is set.
        `whole()`, for a ranking added up from parts, gives the names ranked in one read, for
        when the rows fall below this one's `last`: its bound is one ranking's, not two added
        up, so they fall below it less often (tally/web/values.py, `merged`)."""
        # '' (an import's "none") is no value to show or click, as NULL is not: one more ranked
        # name stands in for it.
        candidates = (set(self.ranked[: TOP_ROWS + len(tail) + 1]) | set(tail)) - {""}
        counts = {name: self.views[name] + tail.get(name, 0) for name in candidates if name in self.views}
        unread = [name for name in candidates if name not in self.views]
        if self.last is None:
            counts.update((name, tail[name]) for name in unread)
        else:
            with_unread = self._with_unread(counts, unread, tail, lookup, whole is None)
            if with_unread is None:  # the rows fall below the bound: ranked in one read instead
                assert whole is not None
                return whole().top(tail, key, lookup)
            counts = with_unread
        ranked = sorted(counts, key=rank(counts))[:TOP_ROWS]
        return [{key: name, "views": counts[name]} for name in ranked if counts[name] > 0]

    def _with_unread(
        self,
        counts: dict[str, int],
        unread: list[str],
        tail: dict[str, int],
        lookup: Lookup,
        read_every: bool = True,
    ) -> dict[str, int] | None:
        """`counts` with the tail's unread names that might reach the top rows looked up; every
        name's count when the names read cannot fill them (a tail moving exits away, say), or
        None then unless `read_every`."""
        floor, last_name = self.last
        threshold = _tenth(counts)
        # An unread name has at most `floor` rolled-up views: this is the best rank it can reach.
        best = {name: floor + tail[name] for name in unread}
        reach = [name for name in unread if best[name] > 0]
        maybe = [name for name in reach if threshold is None or (-best[name], name) < threshold]
        if maybe:
            counts = {**counts, **{name: views + tail[name] for name, views in lookup(maybe).items()}}
        tenth = _tenth(counts)
        if floor > 0 and (tenth is None or tenth > (-floor, last_name)):
            # Names neither read nor in the tail (at most `floor` views each) might still show.
            if not read_every:
                return None
            every = lookup(None)
            counts = {name: every.get(name, 0) + tail.get(name, 0) for name in set(every) | set(tail)}
            counts.pop("", None)
        return counts


def _tenth(counts: dict[str, int]) -> tuple[int, str] | None:
    """The sort key of the last of the TOP_ROWS rows `counts` makes (None: fewer rows than that)."""
    shown = sorted((name for name, views in counts.items() if views > 0), key=rank(counts))
    return rank(counts)(shown[TOP_ROWS - 1]) if len(shown) >= TOP_ROWS else None


@dataclasses.dataclass(frozen=True)
class Window:
    """The days and buckets a request asks about, fixed by the database clock, in one zone."""

    now: datetime.datetime
    days: list[datetime.date]  # in the zone
    boundary: datetime.datetime  # now - 24 h
    first_full_bucket: datetime.datetime  # the bucket after the one the boundary falls in
    current: bool  # ends today (else a past period: no last 24 hours, no tail past its days)

    @classmethod
    def ending(
        cls, now: datetime.datetime, last_day: datetime.date, days: int, today: datetime.date
    ) -> Window:
        dates = [last_day - datetime.timedelta(days=offset) for offset in range(days - 1, -1, -1)]
        boundary = now - DAY
        return cls(now, dates, boundary, bucket_of(boundary) + BUCKET, last_day >= today)

    @property
    def now_bucket(self) -> datetime.datetime:
        """The bucket `now` is in: the last 24 hours' full buckets end where it starts."""
        return bucket_of(self.now)

    def ends(self, retention_days: int) -> Ends:
        """How to count the views of the last 24 hours in the two buckets they cut."""
        first_bucket = self.first_full_bucket - BUCKET
        held, left_out = self.first_full_bucket - self.boundary, self.boundary - first_bucket
        # The part left out may be the shorter one to count, and the bucket's whole less it
        # the answer: not when retention may have deleted some of it (1 day: the cleanup's
        # cutoff is now - 24 h, the boundary), the rollups keeping what the raw table lost.
        less = left_out < held and retention_days > 1
        raw = (first_bucket, self.boundary) if less else (self.boundary, self.first_full_bucket)
        return Ends(first_bucket, self.now_bucket, self.now, *raw, less)

    def before(self) -> Window:
        """The period of the same length just before this one."""
        last = self.days[0] - DAY
        return Window.ending(self.now, last, len(self.days), self.days[-1])


@dataclasses.dataclass(frozen=True)
class Ends:
    """The two buckets the last 24 hours cut, and the raw views to count there: the views of
    the 24 hours in the first are those from `raw_from` to `raw_to`, or with `less` the bucket's
    whole less those (whichever part is shorter); in the bucket of now, its whole less those
    dated after now (a clock far off). The wholes are the rolled-up views and the tail's, so a
    request reads at most half a bucket of raw views, not two buckets (at 200 views/s, up to
    180,000 of them, about 20 ms; docs/ARCHITECTURE.md, "The last 24 hours")."""

    first_bucket: datetime.datetime
    now_bucket: datetime.datetime
    now: datetime.datetime
    raw_from: datetime.datetime
    raw_to: datetime.datetime
    less: bool

    def params(self) -> dict[str, Any]:
        """The bounds stats_last_24h_edges (tally/queries.sql) takes."""
        return dataclasses.asdict(self)

    def views(self, counts: tuple[int, int, int, int], first_in_tail: int, now_in_tail: int) -> int:
        """The views at both ends, from stats_last_24h_edges's (raw, ahead, first_rolled_up,
        now_rolled_up) and the tail's views of the two buckets."""
        raw, ahead, first_rolled_up, now_rolled_up = counts
        first = first_rolled_up + first_in_tail - raw if self.less else raw
        return first + now_rolled_up + now_in_tail - ahead


def count_days(visitors: collections.Counter, window: Window, day: datetime.date, count: int) -> None:
    """Add `count` visitors (a negative count takes them back) to `day` if it is one of the window's."""
    if window.days[0] <= day <= window.days[-1]:
        visitors[day] += count


def with_changes(previous: dict[str, Any], current: dict[str, Any], exact: str) -> dict[str, Any]:
    """The previous period's totals and days, and each total's change to the current one in
    percent: of the figures per visit (the keys under `exact`), from their unrounded values."""
    per_visit = tuple(current[exact])
    compared = ("total_views", "visitors", "visits", *per_visit)
    body = {key: previous[key] for key in ("days", "first_day", "last_day", "daily", *compared)}
    before = {**previous, **previous[exact]}
    now = {**current, **current[exact]}
    body["change_percent"] = {
        key: None if not before[key] else round(100 * (now[key] - before[key]) / before[key], 1)
        for key in compared
    }
    if not current.get("visits"):  # no visit has no bounce rate, duration or views per visit to change
        body["change_percent"].update(dict.fromkeys(per_visit))
    return body
