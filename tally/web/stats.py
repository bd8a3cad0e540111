"""Stats for a window of days, exact and fast: rollups plus the tail not yet rolled up.

Views and visitors per day, and the top values of every dimension of a view
(tally/dimensions.py: paths, referring domains, sources, countries, browsers...) with their
views and visitors, per site or all sites together, with days in any IANA zone: the
rollups' 15-minute buckets fit every zone's days. A visitor counts once on each day its
views fall on. With filters the answer counts the matching raw views instead
(tally/web/filtered.py); `?compare=previous` adds the period just before.

The rollup job moves its state (the snapshot it folded at: a watermark and the
transactions then in progress) and the rollup tables together, so the rolled-up part
of any window is a function of that state (tally/web/rolled_up.py reads it): it is cached
per state and read again only after a rollup. Each request reads the state, the tail it
leaves out and, on a cache miss, the rollups, all in one REPEATABLE READ snapshot; how the
tail's ids move the visitors and visits is kept too, and brought up to date by the ids with
views since (tally/web/tail_moves.py). A request that finds a long tail asks for a rollup
(`request_rollup`), so the tail stays short under traffic.

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
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import psycopg
import psycopg_pool

from tally.db import QUERIES
from tally.web import events, filtered, shared_snapshot, visits
from tally.web.carried import CarriedAnswers
from tally.web.current_visitors import CurrentVisitors
from tally.web.panels import TAIL, top_values
from tally.web.recent import recent_figures
from tally.web.rolled_up import (
    EdgeTimes,
    KeptByState,
    RolledUp,
    read_edge_times,
    read_rolled_up,
)
from tally.web.tail_moves import TailMoves
from tally.web.values import Values
from tally.web.windows import DAY, MAX_DAYS, Window, bucket_of, count_days, with_changes

# stats_tail's `recent`: a tail view's part of the last 24 hours.
TAIL_FULL_BUCKETS, TAIL_FIRST_BUCKET, TAIL_NOW_BUCKET = 1, 2, 3

# Windows (site, zone, days) asked for recently, each at its last two rollup states read: one
# holds every value of its days, about 110 bytes a value (a path, a referrer...).
CACHE_ENTRIES = 16
# The first buckets of the last 24 hours' rolled-up times kept, by site and state:
# windows of one site (7 days, 30, the dashboard's) share theirs, up to 1.4 MB each at 200 views/s.
EDGE_ENTRIES = 4
# A tail of more views than this asks for a rollup: at 200 views/s, one every 5 s while
# someone reads stats, and grouping the tail stays around a millisecond.
ROLLUP_WHEN_TAIL_EXCEEDS = 1000
# GET /api/sites counts each site's views over this many days (its answer's `days`).
SITES_DAYS = 30
# A site whose window took longer than this to read has its next read's values split in four
# statements, each within the statement timeout (tally/web/values.py, `_read_values`), until
# one takes less than JOIN_BELOW_SECONDS; a read that is quick costs a plan, not four.
SPLIT_AFTER_SECONDS = 1.0
JOIN_BELOW_SECONDS = 0.25
SLOW_READ_SITES = 64
# Unfiltered windows of now readers asked for, remembered to be read again after a rollup
# (tally/web/warm.py); the least recently asked forgotten first.
ASKED_ENTRIES = 8


class SettledDays(NamedTuple):
    """Which rollup rows no rollup has changed since when (migrations/0046): those of the UTC
    days before `before` (None: none is known to be settled), since the transaction `by`."""

    before: datetime.date | None
    by: str | None  # an xid8, as psycopg reads it


@contextlib.contextmanager
def snapshot(pool: psycopg_pool.ConnectionPool) -> Iterator[psycopg.Cursor]:
    """A cursor in one read-only REPEATABLE READ snapshot: the tail and the rollups must come
    from the same one. (Web connections autocommit; these settings apply only to the
    transactions psycopg begins.)"""
    with pool.connection() as conn:
        conn.isolation_level, conn.read_only = psycopg.IsolationLevel.REPEATABLE_READ, True
        with conn.transaction(), conn.cursor() as cur:
            yield cur


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
        self._cache: KeptByState[RolledUp] = KeptByState(CACHE_ENTRIES)
        self._settled: KeptByState[Values] = KeptByState(CACHE_ENTRIES)  # by (settled_before, by)
        self._edges: KeptByState[EdgeTimes] = KeptByState(EDGE_ENTRIES)
        self._carried = CarriedAnswers()  # filtered answers, each with the snapshot it holds
        self._tail_moves = TailMoves()  # the tails' moves of visitors and visits, likewise
        # The visitors of the last 5 minutes, likewise, apart for each server read from: a count
        # holds its site's lock while it reads, and a replica that froze mid-count held the read
        # that had moved to the primary until the replica's connection gave up (6.5 s).
        self._current: dict[psycopg_pool.ConnectionPool, CurrentVisitors] = {}
        self._lock = threading.Lock()
        self._rollup_requested_at: object = None  # the state a rollup was last asked for at
        self._asked: collections.OrderedDict[tuple, float] = collections.OrderedDict()  # and when
        # Sites (None: all) whose windows took long to read: their values read split.
        self._slow_reads: collections.OrderedDict[str | None, bool] = collections.OrderedDict()
        # Windows whose settled and other days' values did not add up cheaply (`merged`), and
        # the settled days they did not at: read whole until those change.
        self._read_whole: collections.OrderedDict[tuple, SettledDays] = collections.OrderedDict()

    def stats_for_window(
        self,
        days: int,
        site: str | None = None,
        tz: str = "UTC",
        filters: dict[str, str] | None = None,
        compare: bool = False,
        last_day: datetime.date | None = None,
        pool: psycopg_pool.ConnectionPool | None = None,
        remember: bool = True,
    ) -> dict[str, Any]:
        """Views and visitors per day (in the IANA zone `tz`) over `days` days ending on
        `last_day` (default today), the top values of every dimension, the last 24 h and the
        visitors of the last 5 minutes: of one site, or of all when `site` is None; of the views
        matching every filter; with the period before when `compare`. A window ending before
        today leaves out the figures about now (views_last_24h, current_visitors, crawlers).
        Read through `pool` (a replica's: tally/web/replica.py) when given, else the reader's.
        An unfiltered window of now is remembered (`remember`) to be read again after each
        rollup (tally/web/warm.py), until it has not been asked for a while."""
        if not 1 <= days <= MAX_DAYS:
            raise ValueError(f"days must be from 1 to {MAX_DAYS}")
        filters = filters or {}
        if remember and not filters and last_day is None:
            with self._lock:
                self._asked[(days, site, tz, compare)] = time.monotonic()
                self._asked.move_to_end((days, site, tz, compare))
                while len(self._asked) > ASKED_ENTRIES:
                    self._asked.popitem(last=False)
        pool = pool or self.pool
        # A large filtered count may borrow another connection: of the primary's, never one of
        # those left to the views' inserts.
        leave = shared_snapshot.LEAVE_ON_PRIMARY if pool is self.pool else shared_snapshot.LEAVE_ON_REPLICA
        lender = shared_snapshot.Lender(pool, leave)
        with snapshot(pool) as cur:
            cur.execute(QUERIES["stats_state"], {"tz": tz})
            watermark, in_progress, now, today, tail_from, tail_to, *settled = cur.fetchone()
            if last_day is not None and last_day > today:
                raise ValueError("last_day must not be after today")
            window = Window.ending(now, last_day or today, days, today)
            state = (watermark, tuple(in_progress))
            settled_days = SettledDays(*settled)
            bounds = {
                "watermark": watermark,
                "in_progress": in_progress,
                "site": site,
                "tz": tz,
                "tail_from": tail_from,
                "tail_to": tail_to,
                "now": now,
            }
            tail_views = 0
            since = window.days[0] - days * DAY - 3 * DAY  # referrer domains of both periods
            params = filtered.parameters(cur, filters, bounds, since)
            buckets = None  # a filtered answer's views per 15 minutes, for the last 24 hours
            if filters:
                answer, buckets = filtered.stats(
                    cur, window, params, self.retention_days, carried=self._carried, lender=lender
                )
            else:
                answer, tail_views = self._read(cur, state, settled_days, bounds, window, pool)
            if window.current:  # the figures about now (a past window leaves them out, below)
                with self._lock:  # made once per server, not per request (64 locks each)
                    current = self._current.get(pool) or self._current.setdefault(pool, CurrentVisitors())
                recent = recent_figures(
                    cur, params, with_day=bool(filters), current=current, window=window, buckets=buckets
                )
                if filters:
                    answer["views_last_24h"] = recent["views_last_24h"]
                answer["current_visitors"] = recent["current_visitors"]
            if compare:
                before = window.before()
                if filters:
                    previous, _ = filtered.stats(
                        cur,
                        before,
                        params,
                        self.retention_days,
                        panels=False,
                        carried=self._carried,
                        lender=lender,
                    )
                else:
                    previous, _ = self._read(cur, state, settled_days, bounds, before, pool, panels=False)
                answer["previous"] = with_changes(previous, answer, visits.EXACT)
        answer.pop(visits.EXACT)
        answer.update(site=site, tz=tz, filters=filters, retention_days=self.retention_days)
        if not window.current:  # a past window: the figures about now are not its own
            for key in ("views_last_24h", "current_visitors", "crawlers_filtered"):
                answer.pop(key, None)
        if tail_views > ROLLUP_WHEN_TAIL_EXCEEDS and self.request_rollup and self._first_to_ask(state):
            self.request_rollup()
        return answer

    def recently_asked(self, seconds: float) -> list[tuple[int, str | None, str, bool]]:
        """The unfiltered windows of now (days, site, tz, compare) asked for in the last
        `seconds`, the latest first."""
        since = time.monotonic() - seconds
        with self._lock:
            return [key for key, asked in reversed(self._asked.items()) if asked >= since]

    def sites(self, pool: psycopg_pool.ConnectionPool | None = None) -> list[dict[str, Any]]:
        """Every site with views in the last 30 days and its views, busiest first (read through
        `pool` when given, else the reader's)."""
        with snapshot(pool or self.pool) as cur:
            cur.execute(QUERIES["stats_state"], {"tz": "UTC"})
            watermark, in_progress, now, _today, tail_from, tail_to, *_ = cur.fetchone()
            since = bucket_of(now.astimezone(datetime.UTC) - SITES_DAYS * DAY)
            views: collections.Counter[str] = collections.Counter()
            cur.execute(QUERIES["sites_rolled_up"], {"since": since, "now": now})
            views.update(dict(cur.fetchall()))
            tail = {
                "watermark": watermark,
                "in_progress": in_progress,
                "tail_from": tail_from,
                "tail_to": tail_to,
            }
            cur.execute(QUERIES["sites_tail"], {**tail, "since": since, "now": now})
            views.update(dict(cur.fetchall()))
        ranked = sorted(views.items(), key=lambda item: (-item[1], item[0]))
        return [{"site": site, "views": count} for site, count in ranked if count > 0]

    def _read(
        self,
        cur: psycopg.Cursor,
        state: tuple,
        settled_days: SettledDays,
        bounds: dict[str, Any],
        window: Window,
        server: psycopg_pool.ConnectionPool,
        panels: bool = True,
    ) -> tuple[dict[str, Any], int]:
        # The state's values go into the next queries as parameters, not as a join: the
        # planner then sees how short the tail is (docs/ARCHITECTURE.md, "Plans").
        recent = {"recent": window.first_full_bucket, "now_bucket": window.now_bucket}
        cur.execute(QUERIES["stats_tail"], {**bounds, **recent})
        whole_tail = cur.fetchall()
        tail = [row for row in whole_tail if window.current or row[TAIL["day"]] <= window.days[-1]]
        cur.execute(QUERIES["stats_tail_events"], bounds)
        tail_event_rows = cur.fetchall()
        tail_events: collections.Counter[str] = collections.Counter()
        for day, name, count in tail_event_rows:
            if window.days[0] <= day <= window.days[-1]:
                tail_events[name] += count
        tail_visitors, tail_visits = [], []
        # Ids in the tail: how they meet the rollups'. A view after a past window's end moves a
        # visit that started inside it (a second page: no bounce), so the whole tail decides.
        if tail_event_rows or any(row[TAIL["with_visitor"]] for row in whole_tail):
            tail_visitors, tail_visits = self._tail_moves.read(cur, state, bounds)
        rolled_up = self._rolled_up(cur, state, settled_days, bounds["site"], bounds["tz"], window, server)
        at_ends = crawlers = 0
        if window.current:
            ends = window.ends(self.retention_days)
            first_day = rolled_up.start.astimezone(datetime.UTC).date()
            params = {**ends.params(), "site": bounds["site"], "first_day": first_day}
            params.update(watermark=bounds["watermark"], in_progress=bounds["in_progress"])
            cur.execute(QUERIES["stats_last_24h_edges"], params)
            raw_in_tail, *counts, crawlers = cur.fetchone()
            site = bounds["site"]
            first_bucket = ends.first_bucket
            edges = self._edges.get(
                (site,),
                (state, first_bucket),
                lambda: read_edge_times(cur, site, first_bucket, state),
                server,
            )
            raw = raw_in_tail + edges.between(ends.raw_from, ends.raw_to)
            in_tail = collections.Counter()
            for row in tail:
                in_tail[row[TAIL["recent"]]] += row[TAIL["views"]]
            at_ends = ends.views((raw, *counts), in_tail[TAIL_FIRST_BUCKET], in_tail[TAIL_NOW_BUCKET])
        answer = self._combine(window, rolled_up, tail, tail_visitors, at_ends)
        per_day = {day: dataclasses.replace(counts) for day, counts in rolled_up.visits.items()}
        pages: dict[str, collections.Counter[str]] = {
            dim: collections.Counter() for dim in visits.PAGE_PANELS
        }
        visits.add_moves(tail_visits, window.days, per_day, pages)
        answer.update(visits.figures(per_day))
        for row in answer["daily"]:
            row["visits"] = per_day.get(datetime.date.fromisoformat(row["day"]), visits.VisitCounts()).visits
        if panels:
            answer.update(
                top_values(cur, bounds, window, rolled_up, tail, tail_visitors, tail_events, self._lock)
            )
            answer["top_events"] = events.top_rows(answer.pop(events.DIM), answer["visitors"])
            for dim, panel in visits.PAGE_PANELS.items():
                lookup = rolled_up.lookup(cur, dim, self._lock)
                rows = rolled_up.tops[dim].top(
                    pages[dim], "path", lookup, rolled_up.whole_ranking(cur, dim, self._lock)
                )
                answer[panel] = [{"path": row["path"], "visits": row["views"]} for row in rows]
            answer["crawlers_filtered"] = crawlers
        return answer, sum(row[TAIL["views"]] for row in tail)

    def _first_to_ask(self, state: tuple) -> bool:
        # One request per rollup state asks; the others know it has been asked.
        with self._lock:
            if self._rollup_requested_at == state:
                return False
            self._rollup_requested_at = state
            return True

    def _rolled_up(
        self,
        cur: psycopg.Cursor,
        state: tuple,
        settled_days: SettledDays,
        site: str | None,
        tz: str,
        window: Window,
        server: psycopg_pool.ConnectionPool,
    ) -> RolledUp:
        """The rolled-up part of `window`, kept by rollup state; read from `server` (the pool of
        `cur`) when not, never waiting for a read of it from another server."""
        family = (site, tz, window.days[0], window.days[-1], window.current)
        at = (state, window.first_full_bucket)

        def read() -> RolledUp:
            with self._lock:
                split = site in self._slow_reads
                apart = self._read_whole.get(family) != settled_days
            started = time.monotonic()
            rolled_up = read_rolled_up(
                cur,
                site,
                tz,
                window,
                self._lock,
                split,
                settled_days.before,
                # The values of the window's settled days, read once while they stay settled.
                lambda read: self._settled.get(family[:4], settled_days, read, server),
                apart,
            )
            took = time.monotonic() - started
            with self._lock:
                if took > SPLIT_AFTER_SECONDS:
                    self._slow_reads[site] = True
                    self._slow_reads.move_to_end(site)
                    while len(self._slow_reads) > SLOW_READ_SITES:
                        self._slow_reads.popitem(last=False)
                elif took < JOIN_BELOW_SECONDS:
                    self._slow_reads.pop(site, None)
                if rolled_up.merged is False:
                    self._read_whole[family] = settled_days
                    self._read_whole.move_to_end(family)
                    while len(self._read_whole) > CACHE_ENTRIES:
                        self._read_whole.popitem(last=False)
            return rolled_up

        return self._cache.get(family, at, read, server)

    def _combine(
        self, window: Window, rolled_up: RolledUp, tail: list, tail_visitors: list, at_ends: int
    ) -> dict[str, Any]:
        daily = collections.Counter(rolled_up.daily)
        visitors = collections.Counter(rolled_up.visitors)
        last_24h = at_ends + rolled_up.after_boundary
        for row in tail:
            day, recent, views = row[TAIL["day"]], row[TAIL["recent"]], row[TAIL["views"]]
            if day >= window.days[0]:
                daily[day] += views
            if recent == TAIL_FULL_BUCKETS:
                last_24h += views
        # A visitor of the tail may already be in the rollups: the tail's rows are how it moves
        # the rolled-up counts (as it will count, less as rolled up), so each counts once a day.
        for dim, _value, day, count in tail_visitors:  # days in the zone
            if dim is None:
                count_days(visitors, window, day, count)
        days = [
            {"day": day.isoformat(), "views": daily.get(day, 0), "visitors": visitors.get(day, 0)}
            for day in window.days
        ]
        return {
            "days": len(window.days),
            "first_day": window.days[0].isoformat(),
            "last_day": window.days[-1].isoformat(),
            "total_views": sum(day["views"] for day in days),
            "visitors": sum(day["visitors"] for day in days),
            "views_last_24h": last_24h if window.current else 0,
            "daily": days,
            "generated_at": window.now.astimezone(datetime.UTC).isoformat(),
        }
