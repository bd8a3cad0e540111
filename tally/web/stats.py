"""Stats for a window of days, exact and fast: rollups plus the tail not yet rolled up.

Views and visitors per day, top paths, sources and referring domains, per site or all
sites together (migrations/0005), with days in any IANA zone: the rollups' 15-minute
buckets fit every zone's days. A visitor counts once on each day its views fall on.

The rollup job moves its state (the snapshot it folded at: a watermark and the
transactions then in progress) and the rollup tables together, so the rolled-up part
of any window is a function of that state: it is cached per state and recomputed only
after a rollup. Each request reads the state, the tail it leaves out and, on a cache
miss, the rollups, all in one REPEATABLE READ snapshot. A request that finds a long
tail asks for a rollup (`request_rollup`), so the tail stays short under traffic.

    >>> reader = StatsReader(pool, retention_days=30)   # doctest: +SKIP
    >>> reader.stats_for_window(7)["total_views"]       # doctest: +SKIP
    1234
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import psycopg_pool

from tally.db import QUERIES
from tally.web.referrers import by_name

BUCKET = datetime.timedelta(minutes=15)  # the rollups' grain (migrations/0005)
DAY = datetime.timedelta(days=1)
TOP_ROWS = 10
MAX_DAYS = 366
# Windows asked for recently; each entry is a few dicts.
CACHE_ENTRIES = 16
# A tail of more views than this asks for a rollup: at 200 views/s, one every 5 s while
# someone reads stats, and grouping the tail stays around a millisecond.
ROLLUP_WHEN_TAIL_EXCEEDS = 1000
# Where the 15-minute buckets are aligned (date_bin's origin in tally/queries.sql).
EPOCH = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
# Sites counted by GET /api/sites.
SITES_DAYS = 30


@contextlib.contextmanager
def snapshot(pool: psycopg_pool.ConnectionPool) -> Iterator[psycopg.Cursor]:
    """A cursor in one read-only REPEATABLE READ snapshot: the tail and the rollups must come
    from the same one. (Web connections autocommit; these settings apply only to the
    transactions psycopg begins.)"""
    with pool.connection() as conn:
        conn.isolation_level, conn.read_only = psycopg.IsolationLevel.REPEATABLE_READ, True
        with conn.transaction(), conn.cursor() as cur:
            yield cur


def bucket_of(moment: datetime.datetime) -> datetime.datetime:
    """The start of the 15-minute bucket `moment` falls in."""
    return moment - (moment - EPOCH) % BUCKET


@dataclasses.dataclass(frozen=True)
class Ranking:
    """Rolled-up views per name, and the names ranked once (most views, then by name), so a
    request finds its top rows without sorting every name again."""

    views: dict[str, int]
    ranked: list[str]

    @classmethod
    def of(cls, views: dict[str, int]) -> Ranking:
        return cls(views, sorted(views, key=lambda name: (-views[name], name)))

    def top(self, tail: dict[str, int], key: str) -> list[dict[str, Any]]:
        """The TOP_ROWS names with the most views, the tail's added. Only the first TOP_ROWS
        + len(tail) ranked names and the tail's can make it: each name the tail leaves alone
        keeps its rank among the others it leaves alone."""
        candidates = set(self.ranked[: TOP_ROWS + len(tail)]) | set(tail)
        counts = {name: self.views.get(name, 0) + tail.get(name, 0) for name in candidates}
        ranked = sorted(counts, key=lambda name: (-counts[name], name))[:TOP_ROWS]
        return [{key: name, "views": counts[name]} for name in ranked if counts[name] > 0]


@dataclasses.dataclass(frozen=True)
class RolledUp:
    """The rolled-up part of one window, valid for one rollup state."""

    start: datetime.datetime  # the window's first local midnight
    daily: dict[datetime.date, int]
    visitors: dict[datetime.date, int]
    after_boundary: int  # views in the full buckets of the last 24 hours
    paths: Ranking
    sources: Ranking
    referrers: Ranking  # by referrer name: search engines grouped (tally/web/referrers.py)


@dataclasses.dataclass(frozen=True)
class Window:
    """The days and buckets a request asks about, fixed by the database clock, in one zone."""

    now: datetime.datetime
    days: list[datetime.date]  # in the zone
    boundary: datetime.datetime  # now - 24 h
    first_full_bucket: datetime.datetime  # the bucket after the one the boundary falls in
    # True when the window ends on a day before today: it then stops at that day's end, and
    # the figures about now (views_last_24h, crawlers_filtered) are left out of the answer.
    past: bool = False

    @classmethod
    def ending(
        cls, now: datetime.datetime, today: datetime.date, days: int, last_day: datetime.date | None = None
    ) -> Window:
        if last_day is not None and last_day > today:
            raise ValueError("last_day must not be after today")
        last = today if last_day is None else last_day
        dates = [last - datetime.timedelta(days=offset) for offset in range(days - 1, -1, -1)]
        boundary = now - DAY
        return cls(now, dates, boundary, bucket_of(boundary) + BUCKET, past=last < today)

    def holds(self, day: datetime.date) -> bool:
        """Whether a view of `day` counts: from the first day on (to the last, for a past window)."""
        return day >= self.days[0] and (not self.past or day <= self.days[-1])

    def days_spanned(self, first_day: datetime.date, last_day: datetime.date) -> list[datetime.date]:
        """The window's days on which a visitor seen from `first_day` to `last_day` counts."""
        return [day for day in self.days if first_day <= day <= last_day]


class StatsReader:
    """Computes `GET /api/stats` and `GET /api/sites` answers from a psycopg pool; safe across threads."""

    def __init__(
        self,
        pool: psycopg_pool.ConnectionPool,
        retention_days: int,
        request_rollup: Callable[[], None] | None = None,
    ):
        self.pool = pool
        self.retention_days = retention_days
        self.request_rollup = request_rollup
        self._cache: collections.OrderedDict[tuple, RolledUp] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._rollup_requested_at: object = None  # the state a rollup was last asked for at

    def stats_for_window(
        self, days: int, site: str | None = None, tz: str = "UTC", last_day: datetime.date | None = None
    ) -> dict[str, Any]:
        """Views and visitors per day (in the IANA zone `tz`) over the last `days` days, today
        included, top paths, sources and referrers, the last 24 h: of one site, or of all when
        `site` is None. With `last_day` (a local day before today) the window is the `days` days
        ending with that day, whole, and the answer leaves out `views_last_24h` and
        `crawlers_filtered` (they are about now)."""
        if not 1 <= days <= MAX_DAYS:
            raise ValueError(f"days must be from 1 to {MAX_DAYS}")
        with self._snapshot() as cur:
            state, answer, tail_views = self._read(cur, days, site, tz, last_day)
        if tail_views > ROLLUP_WHEN_TAIL_EXCEEDS and self.request_rollup and self._first_to_ask(state):
            self.request_rollup()
        return answer

    def sites(self) -> list[dict[str, Any]]:
        """Every site with views in the last 30 days and its views, busiest first."""
        with self._snapshot() as cur:
            cur.execute(QUERIES["rollup_state"])
            watermark, in_progress, _rolled_up_at, _last_folded, now = cur.fetchone()
            since = bucket_of(now.astimezone(datetime.UTC) - SITES_DAYS * DAY)
            views: collections.Counter[str] = collections.Counter()
            cur.execute(QUERIES["sites_rolled_up"], {"since": since})
            views.update(dict(cur.fetchall()))
            cur.execute(
                QUERIES["sites_tail"], {"watermark": watermark, "in_progress": in_progress, "since": since}
            )
            views.update(dict(cur.fetchall()))
        ranked = sorted(views.items(), key=lambda item: (-item[1], item[0]))
        return [{"site": site, "views": count} for site, count in ranked if count > 0]

    def _snapshot(self) -> contextlib.AbstractContextManager[psycopg.Cursor]:
        return snapshot(self.pool)

    def _read(
        self, cur: psycopg.Cursor, days: int, site: str | None, tz: str, last_day: datetime.date | None = None
    ) -> tuple[tuple, dict[str, Any], int]:
        cur.execute(QUERIES["stats_state"], {"tz": tz})
        watermark, in_progress, now, today = cur.fetchone()
        # The state's values go into the next queries as parameters, not as a join: the
        # planner then sees how short the tail is (docs/ARCHITECTURE.md, "Plans").
        window = Window.ending(now, today, days, last_day)
        bounds = {"watermark": watermark, "in_progress": in_progress, "site": site, "tz": tz}
        cur.execute(QUERIES["stats_tail"], {**bounds, "recent": window.first_full_bucket})
        tail = cur.fetchall()
        tail_visitors = []
        if any(row[-1] for row in tail):  # the tail has visitor ids: how they meet the rollups'
            cur.execute(QUERIES["stats_tail_visitors"], bounds)
            tail_visitors = cur.fetchall()
        state = (watermark, tuple(in_progress))
        rolled_up = self._rolled_up(cur, state, site, tz, window)
        cur.execute(
            QUERIES["stats_raw_range"],
            {
                "start": window.boundary,
                "end": window.first_full_bucket,
                "site": site,
                "first_day": rolled_up.start.astimezone(datetime.UTC).date(),
            },
        )
        partial_bucket, crawlers = cur.fetchone()
        answer = self._combine(window, rolled_up, tail, tail_visitors, partial_bucket)
        answer.update(site=site, tz=tz, crawlers_filtered=crawlers)
        if window.past:
            del answer["views_last_24h"], answer["crawlers_filtered"]
        return state, answer, sum(row[-2] for row in tail)

    def _first_to_ask(self, state: tuple) -> bool:
        # One request per rollup state asks; the others know it has been asked.
        with self._lock:
            if self._rollup_requested_at == state:
                return False
            self._rollup_requested_at = state
            return True

    def _rolled_up(
        self, cur: psycopg.Cursor, state: tuple, site: str | None, tz: str, window: Window
    ) -> RolledUp:
        key = (state, site, tz, window.days[0], window.first_full_bucket, window.past and window.days[-1])
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        cur.execute(QUERIES["local_midnight"], {"day": window.days[0], "tz": tz})
        start = cur.fetchone()[0]
        since = min(start, window.first_full_bucket)
        cur.execute(
            QUERIES["stats_rolled_up_days"],
            {"since": since, "recent": window.first_full_bucket, "site": site, "tz": tz},
        )
        daily: dict[datetime.date, int] = {}
        after_boundary = 0
        for day, views, recent in cur.fetchall():
            if window.holds(day):
                daily[day] = views
            after_boundary += recent
        cur.execute(QUERIES["stats_rolled_up_visitors"], {"start": start, "site": site, "tz": tz})
        visitors: collections.Counter[datetime.date] = collections.Counter()
        for first_day, last_day, count in cur.fetchall():
            for day in window.days:
                if first_day <= day <= last_day:
                    visitors[day] += count
        end = None
        if window.past:  # the views from the next day's local midnight on are taken off
            cur.execute(QUERIES["local_midnight"], {"day": window.days[-1] + DAY, "tz": tz})
            end = cur.fetchone()[0]
        tops = {}
        for name in ("paths", "sources", "referrers"):
            cur.execute(QUERIES[f"stats_rolled_up_{name}"], {"start": start, "site": site})
            views = dict(cur.fetchall())
            if end is not None:  # both counts are of whole buckets, so the difference is exact
                cur.execute(QUERIES[f"stats_rolled_up_{name}"], {"start": end, "site": site})
                later = collections.Counter(dict(cur.fetchall()))
                views = {key: count for key, count in (collections.Counter(views) - later).items() if count}
            tops[name] = Ranking.of(by_name(views) if name == "referrers" else views)
        rolled_up = RolledUp(start, daily, dict(visitors), after_boundary, **tops)
        with self._lock:
            self._cache[key] = rolled_up
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return rolled_up

    def _combine(
        self, window: Window, rolled_up: RolledUp, tail: list, tail_visitors: list, partial_bucket: int
    ) -> dict[str, Any]:
        daily = collections.Counter(rolled_up.daily)
        visitors = collections.Counter(rolled_up.visitors)
        paths: collections.Counter[str] = collections.Counter()  # the tail's, beside the rollups'
        sources: collections.Counter[str] = collections.Counter()
        referrers: collections.Counter[str] = collections.Counter()
        last_24h = partial_bucket + rolled_up.after_boundary
        for day, recent, path, source, domain, views, _with_visitor in tail:
            if window.holds(day):
                daily[day] += views
                paths[path] += views
                if source is not None:
                    sources[source] += views
                if domain is not None:
                    referrers[domain] += views
            if recent:
                last_24h += views
        # A visitor of the tail may already be in the rollups: replace its old span by the
        # grown one, so each visitor counts once a day.
        for first, last, old_first, old_last, count in tail_visitors:  # days in the zone
            if old_first is None:
                visitors.update(dict.fromkeys(window.days_spanned(first, last), count))
                continue
            visitors.update(
                dict.fromkeys(window.days_spanned(min(first, old_first), max(last, old_last)), count)
            )
            visitors.subtract(dict.fromkeys(window.days_spanned(old_first, old_last), count))
        days = [
            {"day": day.isoformat(), "views": daily.get(day, 0), "visitors": visitors.get(day, 0)}
            for day in window.days
        ]
        return {
            "days": len(window.days),
            "total_views": sum(day["views"] for day in days),
            "visitors": sum(day["visitors"] for day in days),
            "views_last_24h": last_24h,
            "daily": days,
            "top_paths": rolled_up.paths.top(paths, "path"),
            "top_referrers": rolled_up.referrers.top(by_name(referrers), "referrer"),
            "top_sources": rolled_up.sources.top(sources, "source"),
            "retention_days": self.retention_days,
            "generated_at": window.now.astimezone(datetime.UTC).isoformat(),
        }
