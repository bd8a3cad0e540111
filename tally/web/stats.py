"""Stats for a window of days, exact and fast: rollups plus the tail not yet rolled up.

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
import dataclasses
import datetime
import threading
from collections.abc import Callable
from typing import Any

import psycopg
import psycopg_pool

from tally.db import QUERIES

HOUR = datetime.timedelta(hours=1)
DAY = datetime.timedelta(days=1)
TOP_PATHS = 10
MAX_DAYS = 366
# Windows asked for recently; each entry is a few dicts.
CACHE_ENTRIES = 16
# A tail of more views than this asks for a rollup: at 200 views/s, one every 5 s while
# someone reads stats, and grouping the tail stays around a millisecond.
ROLLUP_WHEN_TAIL_EXCEEDS = 1000


@dataclasses.dataclass(frozen=True)
class RolledUp:
    """The rolled-up part of one window, valid for one watermark."""

    daily: dict[datetime.date, int]
    after_boundary: int  # views in the full hours of the last 24 hours
    paths: dict[str, int]


@dataclasses.dataclass(frozen=True)
class Window:
    """The days and hours a request asks about, fixed by the database clock."""

    now: datetime.datetime
    days: list[datetime.date]
    start: datetime.datetime  # midnight UTC of the first day
    boundary: datetime.datetime  # now - 24 h
    first_full_hour: datetime.datetime  # the hour after the one the boundary falls in

    @classmethod
    def ending(cls, now: datetime.datetime, days: int) -> Window:
        now = now.astimezone(datetime.UTC)
        today = now.date()
        dates = [today - datetime.timedelta(days=offset) for offset in range(days - 1, -1, -1)]
        start = datetime.datetime.combine(dates[0], datetime.time(), datetime.UTC)
        boundary = now - DAY
        first_full_hour = boundary.replace(minute=0, second=0, microsecond=0) + HOUR
        return cls(now, dates, start, boundary, first_full_hour)


class StatsReader:
    """Computes `GET /api/stats` answers from a psycopg pool; safe across threads."""

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

    def stats_for_window(self, days: int) -> dict[str, Any]:
        """Views per day for the last `days` UTC days (today included), top paths, last 24 h."""
        if not 1 <= days <= MAX_DAYS:
            raise ValueError(f"days must be from 1 to {MAX_DAYS}")
        with self.pool.connection() as conn:
            # The tail and the rollups must come from the same snapshot. (Web connections
            # autocommit; these settings apply only to transactions psycopg begins.)
            conn.isolation_level, conn.read_only = psycopg.IsolationLevel.REPEATABLE_READ, True
            with conn.transaction(), conn.cursor() as cur:
                state, answer, tail_views = self._read(cur, days)
        if tail_views > ROLLUP_WHEN_TAIL_EXCEEDS and self.request_rollup and self._first_to_ask(state):
            self.request_rollup()
        return answer

    def _read(self, cur: psycopg.Cursor, days: int) -> tuple[tuple, dict[str, Any], int]:
        cur.execute(QUERIES["rollup_state"])
        watermark, in_progress, _rolled_up_at, _last_folded, now = cur.fetchone()
        # The state's values go into the next query as parameters, not as a join: the
        # planner then sees how short the tail is (docs/ARCHITECTURE.md, "Plans").
        cur.execute(QUERIES["stats_tail"], {"watermark": watermark, "in_progress": in_progress})
        tail = cur.fetchall()
        state = (watermark, tuple(in_progress))
        window = Window.ending(now, days)
        rolled_up = self._rolled_up(cur, state, window)
        cur.execute(QUERIES["stats_raw_range"], {"start": window.boundary, "end": window.first_full_hour})
        partial_hour = cur.fetchone()[0]
        return state, self._combine(window, rolled_up, tail, partial_hour), sum(row[2] for row in tail)

    def _first_to_ask(self, state: tuple) -> bool:
        # One request per rollup state asks; the others know it has been asked.
        with self._lock:
            if self._rollup_requested_at == state:
                return False
            self._rollup_requested_at = state
            return True

    def _rolled_up(self, cur: psycopg.Cursor, state: tuple, window: Window) -> RolledUp:
        key = (state, window.days[0], window.first_full_hour)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        since = min(window.start, window.first_full_hour)
        cur.execute(QUERIES["stats_rolled_up_hours"], {"since": since})
        daily: dict[datetime.date, int] = collections.Counter()
        after_boundary = 0
        for hour, views in cur.fetchall():
            hour = hour.astimezone(datetime.UTC)
            if hour >= window.start:
                daily[hour.date()] += views
            if hour >= window.first_full_hour:
                after_boundary += views
        cur.execute(QUERIES["stats_rolled_up_paths"], {"first_day": window.days[0]})
        paths = {path: views for path, views in cur.fetchall()}
        rolled_up = RolledUp(dict(daily), after_boundary, paths)
        with self._lock:
            self._cache[key] = rolled_up
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return rolled_up

    def _combine(self, window: Window, rolled_up: RolledUp, tail: list, partial_hour: int) -> dict[str, Any]:
        daily = collections.Counter(rolled_up.daily)
        paths = collections.Counter(rolled_up.paths)
        last_24h = partial_hour + rolled_up.after_boundary
        for hour, path, views in tail:
            hour = hour.astimezone(datetime.UTC)
            if hour >= window.start:
                daily[hour.date()] += views
                paths[path] += views
            if hour >= window.first_full_hour:
                last_24h += views
        top = sorted(paths.items(), key=lambda item: (-item[1], item[0]))[:TOP_PATHS]
        days = [{"day": day.isoformat(), "views": daily.get(day, 0)} for day in window.days]
        return {
            "days": len(window.days),
            "total_views": sum(day["views"] for day in days),
            "views_last_24h": last_24h,
            "daily": days,
            "top_paths": [{"path": path, "views": views} for path, views in top if views > 0],
            "retention_days": self.retention_days,
            "generated_at": window.now.astimezone(datetime.UTC).isoformat(),
        }
