"""Stats of the views that match filters, counted from the raw views.

The rollups are kept per dimension, so they answer "views per country" but not "views per
path among the views from Germany"; a filtered answer counts the matching rows of
`page_views` instead, in the same REPEATABLE READ snapshot as the rest of the request. It is
exact by construction (every committed view is a row until cleanup deletes it) and reaches
back as far as the raw views do: RETENTION_DAYS (README, "Filters").

A referrer filter names what the referrer panel lists: a domain, or a search engine's name
(tally/search_engines.py), which stands for every domain of that engine the rollups or the
tail know.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import heapq
import logging
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import psycopg

from tally.db import QUERIES
from tally.dimensions import DIMENSIONS
from tally.paths import path_forms
from tally.search_engines import SEARCH_ENGINE_NAMES, referrer_name
from tally.web import events, shared_snapshot, visits
from tally.web.carried import CarriedAnswers, Counts
from tally.web.filters import GOAL_FILTERS, sql_parameters
from tally.web.windows import TOP_ROWS

if TYPE_CHECKING:
    from tally.web.stats import Window

logger = logging.getLogger("tally.web.filtered")

EVENT_PROP_ROWS = 100  # the most sent (prop, value) pairs of the event filtered on
# The memory of each sort and hash of a filtered answer, for its transaction only: where a filter
# matches many views, PostgreSQL's default 4 MB spills them to disk (docs/BENCHMARKS.md, "Filters").
# A chunk (CHUNK_VIEWS) groups ~650,000 (value, day, id) rows for its panels: in 32 MB that was a
# sort spilled to disk, 2.9 s of a chunk; with 64 MB a hash in memory, 1.9 s (3M views, PG 18).
WORK_MEM = "64MB"
# filtered_answer's narrowing to a few ids as a snapshot saw them (tally/web/carried.py), or to
# a chunk of the ids: none.
EVERY_VIEW = {
    "of_sites": None,
    "of_visitors": None,
    "as_of": None,
    "anonymous_from": None,
    "anonymous_running": None,
    "chunks": None,
    "chunk": None,
}
# A slice the rollups put at more views than this is counted in chunks of ids, each within the
# web's statement timeout: about 2.5 s of PostgreSQL's time for the panels, visitors and visits of
# 150,000 views (docs/BENCHMARKS.md, "Filters"). The chunks add up to the whole answer.
CHUNK_VIEWS = 150_000
# A chunk that still passes the timeout (a machine slower than the guess, two chunks at once on
# one core's two hardware threads) is counted again in halves, down to chunks of 1/MAX_CHUNKS:
MAX_CHUNKS = 64
# An answer of more views than this (about half a second of counting) is shared with a second
# connection, when the pool has one to spare (tally/web/shared_snapshot.py).
SHARED_FROM_VIEWS = 30_000


def parameters(
    cur: psycopg.Cursor, filters: dict[str, str], bounds: dict[str, Any], since: datetime.date | None = None
) -> dict[str, Any]:
    """The query parameters of a filtered read: the site and zone, one per dimension, and
    `goals_only`: goals (`event`, `goal_path`) and no filter on a view's own values, an answer
    of the goals' visitors with their events (an event holds none of a view's values)."""
    params = {**bounds, **sql_parameters(filters)}
    params["goals_only"] = bool(filters) and all(name in GOAL_FILTERS for name in filters)
    params.update(EVERY_VIEW)
    path = filters.get("path")
    if path is not None:
        params["path"] = path_forms(path)
    name = filters.get("referrer")
    if name is not None:
        domains = [name]
        if name in SEARCH_ENGINE_NAMES:
            cur.execute(QUERIES["referrer_domains"], {**bounds, "since": since or datetime.date.min})
            domains = [domain for (domain,) in cur.fetchall() if domain and referrer_name(domain) == name]
        params["referrer"] = domains
    return params


def bounds_of(cur: psycopg.Cursor, window: Window, tz: str) -> tuple[datetime.datetime, datetime.datetime]:
    """The instants the window starts and ends: its first day's local midnight, and the one after
    its last day (today's too: a view dated later, a clock far off, counts on its own day)."""
    cur.execute(QUERIES["local_midnight"], {"day": window.days[0], "tz": tz})
    start = cur.fetchone()[0]
    cur.execute(QUERIES["local_midnight"], {"day": window.days[-1] + datetime.timedelta(days=1), "tz": tz})
    return start, cur.fetchone()[0]


@contextlib.contextmanager
def planned_for_few_ids(cur: psycopg.Cursor) -> Iterator[None]:
    """Statements of the block are planned for what a read of a few ids' views is, whatever the
    planner estimates: hash joins, in one process (docs/ARCHITECTURE.md, "Plans and JIT"). Such a
    read is estimated at a row or two (the ids are those of the views it reads), and for one row
    the planner nests loops: over the rows of a CTE, comparing every pair (9.2M rows, 3.8 s, for
    10,000 views of 5,000 ids), or over a parallel sort (Gather Merge), which a rescan starts again
    with its workers (1.8 s for 59 views, 11 ms in one process). Each id's own probe is a nested
    loop still: a LATERAL subquery has no other plan (tally_views_matching). JIT off, so that the
    cost a disabled node adds on PostgreSQL 15 and 16 (ten billion) never compiles."""
    cur.execute(QUERIES["set_local_planner"], {"workers": "0", "nestloop": "off", "jit": "off"})
    workers, nestloop, jit, *_ = cur.fetchone()
    try:
        yield
    finally:
        # After a statement's error the transaction is lost, and the SET LOCAL with it.
        if cur.connection.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
            cur.execute(QUERIES["set_local_planner"], {"workers": workers, "nestloop": nestloop, "jit": jit})


def stats(
    cur: psycopg.Cursor,
    window: Window,
    params: dict[str, Any],
    retention_days: int,
    panels: bool = True,
    carried: CarriedAnswers | None = None,
    lender: shared_snapshot.Lender | None = None,
) -> tuple[dict[str, Any], dict[int, int] | None]:
    """The stats answer's days, totals and (with `panels`) top values of the matching views,
    carried forward from the same answer kept in `carried` when it holds one; and, for a window
    that ends today, the matching views per 15-minute bucket of the last 24 hours (None when
    the window's days begin later: `recent` counts them). A large answer counted afresh borrows
    a second connection of the `lender`'s pool when it has one to spare."""
    start, end = bounds_of(cur, window, params["tz"])
    span = {**params, "start": start, "end": end, "panels": panels, "buckets": window.current}
    span.update(utc_days(start, end))
    cur.execute(QUERIES["set_local_work_mem"], {"work_mem": WORK_MEM})

    def count_once(cursor: psycopg.Cursor, narrowed: dict[str, Any], chunk: int, chunks: int) -> Counts:
        cursor.execute(
            QUERIES["filtered_answer"], {**narrowed, "chunk": chunk, "chunks": chunks if chunks > 1 else None}
        )
        return counts_of(cursor.fetchall(), window)

    def count_chunk(
        cursor: psycopg.Cursor, chunk: tuple[int, int], narrowed: dict[str, Any]
    ) -> tuple[Counts | None, list[tuple[int, int]]]:
        """The ids `k` modulo `n` (`chunk`); past the statement timeout (the bound is a guess),
        none, and the two halves to count instead: the ids `k` and `k + n` modulo twice as many.
        In a savepoint, so that only this chunk is undone: the snapshot, and the chunks counted,
        stay."""
        k, n = chunk
        try:
            with cursor.connection.transaction():
                return count_once(cursor, narrowed, k, n), []
        except psycopg.errors.QueryCanceled:
            # A timeout's cancel can land on the savepoint's rollback too (PostgreSQL then says
            # "due to user request"): the transaction, and its snapshot, are lost; the request
            # answers the timeout's 503 (it tried the halves, and its next savepoint was a 500).
            lost = cursor.connection.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
            if n >= MAX_CHUNKS or lost:
                raise
            # Worth an operator's eye when frequent: the chunk's time was spent for nothing.
            logger.info(
                "a chunk of a filtered answer passed the statement timeout: counted again in two halves"
            )
            return None, [(k, n * 2), (k + n, n * 2)]

    def count(narrowed: dict[str, Any]) -> Counts:
        if not all(narrowed[name] is None for name in EVERY_VIEW):  # a few ids: one statement
            with planned_for_few_ids(cur):
                return count_once(cur, narrowed, 0, 1)
        views = views_bound(cur, narrowed)
        chunks = max(1, math.ceil(views / CHUNK_VIEWS))
        # Another connection in the same snapshot shares the chunks of an answer past
        # SHARED_FROM_VIEWS: an even number of them, two at least.
        with shared_snapshot.second_cursor(lender if views >= SHARED_FROM_VIEWS else None, cur) as other:
            if other is not None:
                other.execute(QUERIES["set_local_work_mem"], {"work_mem": WORK_MEM})
                chunks = max(2, chunks + chunks % 2)
            parts = shared_snapshot.count_chunks(
                cur,
                other,
                [(k, chunks) for k in range(chunks)],
                functools.partial(count_chunk, narrowed=narrowed),
            )
        return parts[0] if len(parts) == 1 else Counts().plus(*((part, 1) for part in parts))

    # The UTC days the answer reads: a visit never crosses a UTC midnight, but may a local one.
    read_from, read_to = (utc_midnight(start), utc_midnight(end) + datetime.timedelta(days=1))
    counts = count(span) if carried is None else carried.counts(cur, span, read_from, read_to, count)
    buckets = counts.buckets if window.current and read_from <= window.first_full_bucket else None
    return answer_of(counts, window, params, panels), buckets


def views_bound(cur: psycopg.Cursor, span: dict[str, Any]) -> int:
    """The most views the answer `span` can count, as the rollups know them (the tail, minutes of
    views, left out): the fewest of any filtered dimension's value (its domains summed, for a
    search engine), or for a goal its ids' days times the site's views per id and day."""
    wanted = [
        (dimension.name, value)
        for dimension in DIMENSIONS
        for value in (
            span[dimension.name] if isinstance(span[dimension.name], list) else [span[dimension.name]]
        )
        if value is not None
    ]
    goals = [
        (dim, span[name])
        for name, dim in (("event", events.DIM), ("goal_path", "path"))
        if span[name] is not None
    ]
    cur.execute(
        QUERIES["filtered_views_bound"],
        {
            "site": span["site"],
            "from_day": utc_midnight(span["start"]).date(),
            "to_day": utc_midnight(span["end"]).date() + datetime.timedelta(days=1),
            "dims": [dim for dim, _ in wanted + goals],
            "values": [value for _, value in wanted + goals],
        },
    )
    known = {(dim, value): (views, id_days) for dim, value, views, id_days in cur.fetchall()}
    site_views, site_id_days = known.get(("", ""), (0, 0))
    per_dimension: dict[str, int] = {}
    for dim, value in wanted:
        per_dimension[dim] = per_dimension.get(dim, 0) + known.get((dim, value), (0, 0))[0]
    bounds = [site_views, *per_dimension.values()]
    bounds += [known.get(goal, (0, 0))[1] * site_views // max(site_id_days, 1) for goal in goals]
    return min(bounds)


def utc_midnight(instant: datetime.datetime) -> datetime.datetime:
    """The UTC midnight that begins the UTC day of `instant`."""
    return datetime.datetime.combine(instant.astimezone(datetime.UTC).date(), datetime.time(), datetime.UTC)


def utc_days(start: datetime.datetime, end: datetime.datetime) -> dict[str, datetime.datetime]:
    """filtered_answer's `utc_from` and `utc_until`: the UTC days `start` and `end` fall in, as
    values the planner prunes the day partitions to."""
    return {"utc_from": utc_midnight(start), "utc_until": utc_midnight(end) + datetime.timedelta(days=1)}


def bucket_number(bucket: datetime.datetime) -> int:
    """A 15-minute bucket's number since 1970, as filtered_answer's 'bucket' rows have it."""
    return int(bucket.timestamp()) // 900


def counts_of(rows: list[tuple], window: Window) -> Counts:
    """The Counts of filtered_answer's rows (one per day, value, visits, event and prop)."""
    counts = Counts(pages={dim: {} for dim in visits.PAGE_PANELS})
    for part, day, name, detail, *numbers in rows:
        if part == "day":
            counts.days[day] = (numbers[0], numbers[1])
        elif part == "value":
            counts.values.setdefault(name, {})[detail] = (numbers[0], numbers[1])
        elif part == "visits":
            if window.days[0] <= day <= window.days[-1]:
                had = counts.visits.get(day, (0, 0, 0, 0))
                counts.visits[day] = tuple(a + b for a, b in zip(had, numbers, strict=True))
                for dim, page in (("entry", name), ("exit", detail)):
                    counts.pages[dim][page] = counts.pages[dim].get(page, 0) + numbers[0]
        elif part == "event":
            counts.events[name] = (numbers[0], numbers[1])
        elif part == "bucket":
            counts.buckets[numbers[0]] = numbers[1]
        else:
            counts.props[(name, detail)] = (numbers[0], numbers[1])
    return counts


def answer_of(counts: Counts, window: Window, params: dict[str, Any], panels: bool) -> dict[str, Any]:
    """The answer's figures of `counts` (which it leaves as they are: they may be kept)."""
    visits_by_day = {day: visits.VisitCounts(*numbers) for day, numbers in counts.visits.items()}
    daily = [
        {
            "day": day.isoformat(),
            "views": counts.days.get(day, (0, 0))[0],
            "visitors": counts.days.get(day, (0, 0))[1],
            "visits": visits_by_day.get(day, visits.VisitCounts()).visits,
        }
        for day in window.days
    ]
    answer: dict[str, Any] = {
        "days": len(window.days),
        "first_day": window.days[0].isoformat(),
        "last_day": window.days[-1].isoformat(),
        "total_views": sum(day["views"] for day in daily),
        "visitors": sum(day["visitors"] for day in daily),
        "daily": daily,
        "generated_at": window.now.astimezone(datetime.UTC).isoformat(),
        **visits.figures(visits_by_day),
    }
    if panels:
        values = {**counts.values, "referrer": _by_name(counts.values.get("referrer", {}))}
        for dimension in DIMENSIONS:
            answer[dimension.panel] = top(values.get(dimension.name, {}), dimension.name)
        for dim, panel in visits.PAGE_PANELS.items():
            answer[panel] = visits.page_rows(counts.pages.get(dim, {}), TOP_ROWS)
        ranked = sorted(counts.events.items(), key=lambda item: (-item[1][0], item[0]))[:TOP_ROWS]
        rows = [{events.DIM: name, "views": count, "visitors": who} for name, (count, who) in ranked]
        answer["top_events"] = events.top_rows(rows, answer["visitors"])
        if params.get("event") is not None:
            props = [
                {"prop": prop, "value": value, "events": count, "visitors": who}
                for (prop, value), (count, who) in counts.props.items()
            ]
            props.sort(key=lambda row: (-row["events"], row["prop"], row["value"]))
            answer["event_props"] = props[:EVENT_PROP_ROWS]
        answer["crawlers_filtered"] = None  # crawlers are counted per site and day, not per view
    return answer


def top(values: dict[str, tuple[int, int]], key: str) -> list[dict[str, Any]]:
    """The TOP_ROWS values with the most views (then by name), with their views and visitors."""
    # The first rows alone, not every value sorted: a slice of a site whose paths carry ids has
    # hundreds of thousands of them.
    ranked = heapq.nsmallest(TOP_ROWS, ((-views, name) for name, (views, _) in values.items() if name != ""))
    return [{key: name, "views": values[name][0], "visitors": values[name][1]} for _, name in ranked]


def _by_name(domains: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    named: dict[str, tuple[int, int]] = {}
    for domain, (views, visitors) in domains.items():
        name = referrer_name(domain)
        had_views, had_visitors = named.get(name, (0, 0))
        named[name] = (had_views + views, had_visitors + visitors)
    return named
