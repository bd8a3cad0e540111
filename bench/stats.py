"""GET /api/stats?days=30 with the web's default settings: at rest, under traffic, behind a held transaction.

(a) At rest, 1M then 3M views over 30 days, all but FRESH_VIEWS rolled up (as between
    two rollups), `python web.py` alone: against the naive GROUP BYs over page_views on
    the same data (with the build's own JIT setting).
(b) On the same 3M, while 200 beacons/s with visitor ids arrive, with a worker and a clock
    (bench/stats_live.py).
(c) On the same data, after 300,000 more views arrive while a write transaction is held
    open in another database of the same server, with a worker and a clock; in the same
    scenario, cleanup deletes every expired view, and a view whose transaction commits
    a minute and a half later is counted exactly once (bench/stats_live.py).

$ python -m bench.stats
"""

from __future__ import annotations

import dataclasses
import time

import psycopg

from bench import stats_live
from bench.harness import (
    Build,
    builds,
    free_port,
    median,
    ms,
    percentile,
    process,
    say,
    throwaway_database,
    time_http_get,
)
from bench.report import Result, Row, run_alone, times

SIZES = [1_000_000, 3_000_000]
# The naive answer: every figure of /api/stats straight from page_views.
NAIVE_QUERIES = [
    "SELECT (viewed_at AT TIME ZONE 'UTC')::date AS day, count(*) FROM page_views"
    " WHERE viewed_at >= (now() AT TIME ZONE 'UTC')::date - 29 GROUP BY 1 ORDER BY 1",
    "SELECT path, count(*) FROM page_views WHERE viewed_at >= (now() AT TIME ZONE 'UTC')::date - 29"
    " GROUP BY path ORDER BY 2 DESC, 1 LIMIT 10",
    "SELECT count(*) FROM page_views WHERE viewed_at >= now() - interval '24 hours'",
]
REQUESTS = 400
NAIVE_RUNS = 5
PATHS = 500
FRESH_VIEWS = 200  # the tail not yet rolled up, as between two rollups

GOAL_P50_SECONDS = 0.010  # at the largest size, under traffic, behind a held transaction
GOAL_SPEEDUP = 100
GOAL_GROWTH = 1.5  # p50 at the largest size over p50 at the smallest


@dataclasses.dataclass(frozen=True)
class AtRest:
    p50: float
    p99: float
    naive: list[float]  # seconds per run of the naive queries


def load_views(conn: psycopg.Connection, target: int) -> None:
    """Top page_views up to `target` rows over the last 30 days, on PATHS paths (skewed).

    Views arrive in time order, as they do in production: the viewed_at index grows at
    its right edge, which also loads several times faster than random times.
    """
    have = conn.execute("SELECT count(*) FROM page_views").fetchone()[0]
    conn.execute(
        "INSERT INTO page_views (path, referrer, viewed_at)"
        " SELECT '/page/' || floor(%(paths)s * power(random(), 2))::int, 'https://example.com/',"
        "        now() - interval '30 days' + (n + random()) * (interval '30 days' / %(rows)s)"
        " FROM generate_series(0, %(rows)s - 1) AS n",
        {"paths": PATHS, "rows": target - have},
    )
    conn.execute("SELECT tally_rollup_page_views()")
    conn.execute(
        "INSERT INTO page_views (path) SELECT '/fresh/' || n %% 7 FROM generate_series(1, %s) n",
        (FRESH_VIEWS,),
    )
    conn.execute("VACUUM ANALYZE page_views")


def naive_seconds(conn: psycopg.Connection) -> list[float]:
    timings = []
    for _ in range(NAIVE_RUNS):
        started = time.perf_counter()
        for query in NAIVE_QUERIES:
            conn.execute(query).fetchall()
        timings.append(time.perf_counter() - started)
    return timings


def at_rest(url: str, conn: psycopg.Connection, size: int) -> AtRest:
    say(f"stats: loading {size:,} views")
    started = time.perf_counter()
    load_views(conn, size)
    say(f"stats: {size:,} views loaded and rolled up in {time.perf_counter() - started:.0f} s; timing")
    port = free_port()
    with process(["web.py"], {"DATABASE_URL": url, "PORT": str(port)}, ready="Serving on"):
        time_http_get(port, stats_live.STATS, 20)  # warm up: pool, cache
        tally = time_http_get(port, stats_live.STATS, REQUESTS)
    return AtRest(percentile(tally, 0.5), percentile(tally, 0.99), naive_seconds(conn))


def at_rest_rows(measured: dict[int, AtRest]) -> list[Row]:
    rows = []
    largest = max(measured)
    for size, figures in sorted(measured.items()):
        speedup = median(figures.naive) / figures.p50
        last = size == largest
        label = f"{size / 1e6:g}M views over 30 days, at rest"
        rows += [
            Row(
                f"stats p50, {label}",
                ms(figures.p50),
                f"naive {ms(median(figures.naive))}",
                f"{times(speedup)} faster",
                f"<= {GOAL_P50_SECONDS * 1000:.0f} ms; >= {GOAL_SPEEDUP}x faster"
                if last
                else f">= {GOAL_SPEEDUP}x faster",
                speedup >= GOAL_SPEEDUP and (not last or figures.p50 <= GOAL_P50_SECONDS),
            ),
            Row(f"stats p99, {label}", ms(figures.p99), f"naive {ms(max(figures.naive))} (slowest)"),
        ]
    smallest = min(measured)
    if smallest != largest:
        growth = measured[largest].p50 / measured[smallest].p50
        rows.append(
            Row(
                f"stats p50 at {largest / 1e6:g}M / at {smallest / 1e6:g}M",
                times(growth, GOAL_GROWTH),
                goal=f"<= {GOAL_GROWTH}x",
                met=growth <= GOAL_GROWTH,
            )
        )
    return rows


def traffic_rows(traffic: stats_live.UnderTraffic, rest: AtRest, size: int) -> list[Row]:
    timed, old = traffic.timed, traffic.old
    rollups, asked = traffic.rollups
    return [
        Row(
            f"stats p50, {size / 1e6:g}M views, {stats_live.TRAFFIC_RATE} beacons/s with ids arriving (p99)",
            f"{ms(timed.p50)} ({ms(timed.p99)})",
            f"at rest {ms(rest.p50)} ({ms(rest.p99)})",
            f"{times(timed.p50 / rest.p50)} at rest",
            f"<= {GOAL_P50_SECONDS * 1000:.0f} ms",
            timed.p50 <= GOAL_P50_SECONDS,
        ),
        Row(
            f"  stats tail while {stats_live.TRAFFIC_RATE} beacons/s arrive (views not rolled up)",
            f"max {max(timed.waiting):,}, median {median(timed.waiting):,.0f}; {rollups} rollups,"
            f" {asked} asked for by stats",
            f"minutely rollup alone: a minute's {old.views:,} views, tail query {ms(old.seconds)}",
        ),
    ]


def held_rows(held: stats_live.BehindHeld) -> list[Row]:
    after_p50, after_p99 = percentile(held.after, 0.5), percentile(held.after, 0.99)
    old = held.old
    once = stats_live.late_view_counted_once(held)
    totals = held.totals
    return [
        Row(
            f"stats p50 after {stats_live.HELD_VIEWS / 1e3:g}k more views, a write transaction open"
            " in another database (p99)",
            f"{ms(after_p50)} ({ms(after_p99)})",
            f"old rollup: tail of {old.views:,} views, its query alone {ms(old.seconds)}",
            f"{times(old.seconds / after_p50)} faster",
            f"<= {GOAL_P50_SECONDS * 1000:.0f} ms",
            after_p50 <= GOAL_P50_SECONDS,
        ),
        Row(
            f"  the same while they arrive ({stats_live.HELD_RATE * stats_live.HELD_BATCH:,} views/s; p99)",
            f"{ms(held.during.p50)} ({ms(held.during.p99)})",
            f"tail max {max(held.during.waiting):,} views, {held.waiting_after:,} after",
        ),
        Row(
            "cleanup behind the held transaction: expired views deleted",
            f"{held.expired - held.expired_left:,} of {held.expired:,} ({held.cleanup_seconds:.1f} s)",
            f"old condition (below the oldest transaction): {held.old_deletable:,} deletable",
            "-",
            "all",
            held.expired_left == 0,
        ),
        Row(
            "a view committed a minute late, behind the held transaction: counted",
            f"{'once' if once else 'not once'} (committed after {held.late_open_seconds:.0f} s, folded"
            f" {held.late_folded_seconds:.0f} s later)",
            f"raw count of the window {list(totals.values())[-1][1]:,}",
            "-",
            "exactly once",
            once,
        ),
    ]


def measure(build: Build) -> Result:
    result = Result("GET /api/stats")
    with throwaway_database(build) as url, psycopg.connect(url, autocommit=True) as conn:
        rest = {size: at_rest(url, conn, size) for size in sorted(SIZES)}
        traffic = stats_live.under_traffic(url)
        held = stats_live.behind_held_transaction(url)
    largest = max(SIZES)
    result.rows += at_rest_rows(rest)
    result.rows += traffic_rows(traffic, rest[largest], largest)
    result.rows += held_rows(held)
    result.notes += notes(traffic, held)
    return result


def notes(traffic: stats_live.UnderTraffic, held: stats_live.BehindHeld) -> list[str]:
    totals = "; ".join(f"{moment} {stats:,} (raw {raw:,})" for moment, (stats, raw) in held.totals.items())
    return [
        f"At rest: {REQUESTS} sequential GETs on one keep-alive connection to `python web.py` (defaults)"
        f" after 20 to warm up, against {NAIVE_RUNS} runs of the naive queries ({len(NAIVE_QUERIES)}"
        " GROUP BYs over page_views, with the build's own JIT setting) on the same data;"
        f" {FRESH_VIEWS} views are left above the rollup watermark, as between two rollups.",
        f"Under traffic and behind the held transaction: `python web.py`, `python worker.py` and `python"
        " clock.py` with their defaults (ROLLUP_SCHEDULE '* * * * *', a rollup a minute; a stats request that"
        " finds more than 1,000 views in the tail asks the worker for one more). Views come from"
        " bench/pacer.py in its own process, each request on schedule; stats are timed by sequential GETs,"
        f" one every {stats_live.GET_GAP_SECONDS * 1000:.0f} ms, the tail read from /api/health every"
        f" {stats_live.HEALTH_EVERY}th. The tail queries beside them are tally/queries.sql's stats_tail with"
        " the web's session settings, over the tail the old rollup (watermark = the oldest running"
        " transaction) would have left; a request costs that query plus about what one at rest costs.",
        f"Under traffic: {traffic.paced.requests:,} beacons to /api/collect in {stats_live.TRAFFIC_SECONDS} s"
        " over 8 connections, as tally.js sends them from a browser (every view has a visitor id, half of"
        " them an id back for another page: the kept moves of the tail's ids carried forward, as"
        f" docs/ARCHITECTURE.md says; p50 {ms(traffic.paced.p50)}, p99 {ms(traffic.paced.p99)}),"
        f" {len(traffic.timed.stats):,} stats GETs meanwhile.",
        f"Behind the held transaction: `BEGIN; SELECT pg_current_xact_id();` held open in database"
        f" '{stats_live.OTHER_DATABASE}' of the same server for the whole scenario; then, in Tally's"
        " database, a transaction inserts one view and stays open; then"
        f" {stats_live.EXPIRED_VIEWS:,} views 31 to 45 days old are loaded by SQL; then"
        f" {held.paced.stored:,} views arrive as {held.paced.requests:,} POSTs of {stats_live.HELD_BATCH}"
        f" (p50 {ms(held.paced.p50)}, p99 {ms(held.paced.p99)}), {held.rollups[0]} rollups meanwhile"
        f" ({held.rollups[1]} asked for by stats), then {stats_live.AFTER_REQUESTS} sequential GETs."
        " cleanup_old_page_views is deferred by `procrastinate --app=jobs.app defer cleanup_old_page_views"
        " '{}'` and runs in the worker. The late view's transaction commits after"
        f" {held.late_open_seconds:.0f} s; a rollup folded it {held.late_folded_seconds:.0f} s later."
        f" GET /api/stats?days=30 total_views against a count of the raw views of its window: {totals}.",
    ]


if __name__ == "__main__":
    run_alone(measure, builds())
