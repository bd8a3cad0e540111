"""GET /api/export: the window's views and visitors per day and path, as CSV for spreadsheets.

Exact like the stats (tally/web/stats.py): the rollups per 15-minute bucket and path, the
visitors per path (migrations/0020), and the tail not yet rolled up, all read in one
snapshot; days in the request's zone.

    >>> "".join(csv_lines([{"day": "2026-01-02", "path": "/a,b", "views": 3, "visitors": 2}]))
    'day,path,views,visitors\\r\\n2026-01-02,"/a,b",3,2\\r\\n'
"""

from __future__ import annotations

import collections
import csv
import datetime
import io
from collections.abc import Iterable, Iterator
from typing import Any

import psycopg_pool

from tally.db import QUERIES
from tally.web import filtered, tail_moves
from tally.web.stats import MAX_DAYS, snapshot

COLUMNS = ("day", "path", "views", "visitors")


def daily_paths(
    pool: psycopg_pool.ConnectionPool,
    days: int,
    site: str | None,
    tz: str,
    filters: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One row per day (in `tz`) and path with views over the last `days` days, oldest day
    first, busiest path first; of the views matching every filter (counted from raw views)."""
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"days must be from 1 to {MAX_DAYS}")
    if filters:
        return _filtered_daily_paths(pool, days, site, tz, filters)
    views: collections.Counter[tuple[datetime.date, str]] = collections.Counter()
    visitors: collections.Counter[tuple[datetime.date, str]] = collections.Counter()
    with snapshot(pool) as cur:
        cur.execute(QUERIES["stats_state"], {"tz": tz})
        watermark, in_progress, _now, today, tail_from, tail_to = cur.fetchone()
        window = [today - datetime.timedelta(days=offset) for offset in range(days - 1, -1, -1)]
        cur.execute(QUERIES["local_midnight"], {"day": window[0], "tz": tz})
        start = cur.fetchone()[0]

        bounds = {"start": start, "site": site, "tz": tz}
        tail = {
            "watermark": watermark,
            "in_progress": in_progress,
            "tail_from": tail_from,
            "tail_to": tail_to,
        }
        cur.execute(QUERIES["export_rolled_up_views"], bounds)
        for day, path, day_views, day_visitors in cur.fetchall():
            views[(day, path)] += day_views
            visitors[(day, path)] += day_visitors
        # The tail adds its views, and moves the rolled-up visitors (+/-) as the stats' tail does.
        cur.execute(QUERIES["export_tail"], {**bounds, **tail})
        for day, path, day_views in cur.fetchall():
            views[(day, path)] += day_views
        days, _ = tail_moves.tail_days(cur, {**bounds, **tail}, watermark, in_progress)
        cur.execute(QUERIES["stats_tail_visitors"], {**bounds, **tail, "days": days, "as_of": None})
        for dim, path, day, moved in cur.fetchall():
            if dim == "path":
                visitors[(day, path)] += moved
    ranked = sorted(views.items(), key=lambda item: (item[0][0], -item[1], item[0][1]))
    return [
        {"day": day.isoformat(), "path": path, "views": count, "visitors": visitors.get((day, path), 0)}
        for (day, path), count in ranked
        if count > 0 and window[0] <= day <= window[-1]
    ]


def _filtered_daily_paths(
    pool: psycopg_pool.ConnectionPool, days: int, site: str | None, tz: str, filters: dict[str, str]
) -> list[dict[str, Any]]:
    with snapshot(pool) as cur:
        cur.execute(QUERIES["stats_state"], {"tz": tz})
        watermark, in_progress, _now, today, tail_from, tail_to = cur.fetchone()
        first_day = today - datetime.timedelta(days=days - 1)
        cur.execute(QUERIES["local_midnight"], {"day": first_day, "tz": tz})
        start = cur.fetchone()[0]
        cur.execute(QUERIES["local_midnight"], {"day": today + datetime.timedelta(days=1), "tz": tz})
        end = cur.fetchone()[0]  # a view dated after today (a clock far off) is not today's
        bounds = {"watermark": watermark, "in_progress": in_progress, "site": site, "tz": tz}
        bounds.update(tail_from=tail_from, tail_to=tail_to)  # the tail's days (referrer_domains)
        params = filtered.parameters(cur, filters, bounds, first_day - datetime.timedelta(days=3))
        cur.execute(QUERIES["filtered_export"], {**params, "start": start, "end": end})
        rows = cur.fetchall()
    rows.sort(key=lambda row: (row[0], -row[2], row[1]))
    return [
        {"day": day.isoformat(), "path": path, "views": views, "visitors": visitors}
        for day, path, views, visitors in rows
    ]


def csv_lines(rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    """The rows as CSV (RFC 4180: CRLF line ends, quotes where needed), a header first."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
