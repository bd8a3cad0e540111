"""GET /api/export: the window's views and visitors per day and path, as CSV for spreadsheets.

Exact like the stats (tally/web/stats.py): the rollups per 15-minute bucket and path, the
visitors per path (migrations/0020), and the tail not yet rolled up, all read in one
snapshot; days in the request's zone.

A site whose paths carry ids has a row per view: 600,000 of them for a month took the web to
281 MB when the rows were held. So the rollups' rows are read a day at a time (a cursor on the
server), each day's with the tail's added and sorted, and written as CSV to a file that stays
in memory up to SPOOL_BYTES and goes to disk past it; the connection goes back to the pool
before the first byte is sent, however slowly the client reads.

    >>> spool = write_csv([("2026-01-02", "/a,b", 3, 2)])
    >>> spool.read()
    'day,path,views,visitors\\r\\n2026-01-02,"/a,b",3,2\\r\\n'
"""

from __future__ import annotations

import collections
import csv
import datetime
import itertools
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO

import psycopg
import psycopg_pool

from tally.db import QUERIES
from tally.web import filtered, tail_moves
from tally.web.stats import MAX_DAYS, snapshot

COLUMNS = ("day", "path", "views", "visitors")
# An export is written to memory up to this many bytes (about 20,000 rows), to a file past it.
SPOOL_BYTES = 1024 * 1024
# Rows fetched from the server's cursor at a time.
FETCH_ROWS = 10_000
# What a client is sent at a time.
CHUNK_BYTES = 64 * 1024

Row = tuple[str, str, int, int]  # day, path, views, visitors


def daily_paths(
    pool: psycopg_pool.ConnectionPool,
    days: int,
    site: str | None,
    tz: str,
    filters: dict[str, str] | None = None,
) -> IO[str]:
    """The CSV of one row per day (in `tz`) and path with views over the last `days` days, oldest
    day first, busiest path first; of the views matching every filter (counted from raw views).
    A file read from its start, in memory or on disk (`write_csv`)."""
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"days must be from 1 to {MAX_DAYS}")
    with snapshot(pool) as cur:
        rows = _filtered_rows(cur, days, site, tz, filters) if filters else _rows(cur, days, site, tz)
        return write_csv(rows)


def write_csv(rows: Iterable[Row]) -> IO[str]:
    """`rows` as CSV (RFC 4180: CRLF line ends, quotes where needed), a header first, in a file
    kept in memory up to SPOOL_BYTES; positioned at its start."""
    # Returned open, for `chunks` to send and close.
    spool = tempfile.SpooledTemporaryFile(  # noqa: SIM115
        max_size=SPOOL_BYTES, mode="w+", encoding="utf-8", newline=""
    )
    try:
        writer = csv.writer(spool)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool


def chunks(spool: IO[str]) -> Iterator[bytes]:
    """The file's text, UTF-8, CHUNK_BYTES at a time; the file closed (deleted) at the end."""
    with spool:
        while text := spool.read(CHUNK_BYTES):
            yield text.encode()


def _rows(cur: psycopg.Cursor, days: int, site: str | None, tz: str) -> Iterator[Row]:
    cur.execute(QUERIES["stats_state"], {"tz": tz})
    watermark, in_progress, _now, today, tail_from, tail_to, *_ = cur.fetchone()
    first_day = today - datetime.timedelta(days=days - 1)
    cur.execute(QUERIES["local_midnight"], {"day": first_day, "tz": tz})
    bounds = {"start": cur.fetchone()[0], "site": site, "tz": tz}
    tail = {"watermark": watermark, "in_progress": in_progress, "tail_from": tail_from, "tail_to": tail_to}
    # The tail adds its views, and moves the rolled-up visitors (+/-) as the stats' tail does:
    # both as short as the tail, held whole.
    tail_views: dict[datetime.date, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    moves: dict[datetime.date, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    cur.execute(QUERIES["export_tail"], {**bounds, **tail})
    for day, path, views in cur.fetchall():
        tail_views[day][path] += views
    id_days, _ = tail_moves.tail_days(cur, {**bounds, **tail}, watermark, in_progress)
    cur.execute(QUERIES["stats_tail_visitors"], {**bounds, **tail, "days": id_days, "as_of": None})
    for dim, path, day, moved in cur.fetchall():
        if dim == "path":
            moves[day][path] += moved
    with cur.connection.cursor("export_rolled_up_views") as rolled:
        rolled.itersize = FETCH_ROWS
        rolled.execute(QUERIES["export_rolled_up_views"], bounds)
        by_day = itertools.groupby(rolled, key=lambda row: row[0])
        for day, rows in _with_days_of(by_day, tail_views):
            if first_day <= day <= today:  # a view dated after today (a clock far off) is not today's
                yield from _day_rows(day, rows, tail_views.get(day, {}), moves.get(day, {}))


def _with_days_of(
    by_day: Iterator[tuple[datetime.date, Iterator[tuple]]], tail_views: dict[datetime.date, object]
) -> Iterator[tuple[datetime.date, Iterable[tuple]]]:
    """The rolled-up days in order, each with its rows, and the tail's days among them (none rolled up)."""
    tail_days = sorted(tail_views)
    for day, rows in by_day:
        while tail_days and tail_days[0] < day:
            yield tail_days.pop(0), ()
        if tail_days and tail_days[0] == day:
            tail_days.pop(0)
        yield day, rows
    for day in tail_days:
        yield day, ()


def _day_rows(
    day: datetime.date, rolled_up: Iterable[tuple], tail_views: dict[str, int], moves: dict[str, int]
) -> list[Row]:
    """One day's rows: the rolled-up ones with the tail's views and moves added, busiest first."""
    views: collections.Counter[str] = collections.Counter(tail_views)
    visitors: collections.Counter[str] = collections.Counter(moves)
    for _day, path, path_views, path_visitors in rolled_up:
        views[path] += path_views
        visitors[path] += path_visitors
    shown = [path for path, count in views.items() if count > 0]
    ranked = sorted(shown, key=lambda path: (-views[path], path))
    text = day.isoformat()
    return [(text, path, views[path], visitors[path]) for path in ranked]


def _filtered_rows(
    cur: psycopg.Cursor, days: int, site: str | None, tz: str, filters: dict[str, str]
) -> Iterator[Row]:
    cur.execute(QUERIES["stats_state"], {"tz": tz})
    watermark, in_progress, _now, today, tail_from, tail_to, *_ = cur.fetchone()
    first_day = today - datetime.timedelta(days=days - 1)
    cur.execute(QUERIES["local_midnight"], {"day": first_day, "tz": tz})
    start = cur.fetchone()[0]
    cur.execute(QUERIES["local_midnight"], {"day": today + datetime.timedelta(days=1), "tz": tz})
    end = cur.fetchone()[0]  # a view dated after today (a clock far off) is not today's
    bounds = {"watermark": watermark, "in_progress": in_progress, "site": site, "tz": tz}
    bounds.update(tail_from=tail_from, tail_to=tail_to)  # the tail's days (referrer_domains)
    params = filtered.parameters(cur, filters, bounds, first_day - datetime.timedelta(days=3))
    # In the export's order already (filtered_export): a row at a time to the file.
    with cur.connection.cursor("filtered_export") as counted:
        counted.itersize = FETCH_ROWS
        counted.execute(QUERIES["filtered_export"], {**params, "start": start, "end": end})
        for day, path, views, visitors in counted:
            yield day.isoformat(), path, views, visitors
