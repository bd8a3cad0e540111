"""GET /api/stats?days=30 at 5M and at 50M views over 30 days, in daily partitions (issue 19).

The same database grows from the smaller size to the larger: views arrive in time order over
the last 30 days on PATHS paths (bench/stats.py's load), CHUNK at a time, each chunk rolled up
as the minutely rollup would have; FRESH_VIEWS stay above the watermark, as between two
rollups. At each size, `python web.py` alone answers REQUESTS sequential GETs after a warm-up.
The baseline of the larger size is the smaller one's p50, measured in the same run.

$ python -m bench.stats_scale          # 11-13 minutes a build, 7 GB of disk at 50M
"""

from __future__ import annotations

import os
import time

import psycopg

from bench import stats_live
from bench.harness import (
    Build,
    builds,
    free_port,
    ms,
    percentile,
    process,
    say,
    throwaway_database,
    time_http_get,
)
from bench.report import Result, Row, run_alone, times

SIZES = [int(n) for n in os.environ.get("BENCH_SCALE_SIZES", "5000000,50000000").split(",")]
CHUNK = 5_000_000
PATHS = 500
FRESH_VIEWS = 200
REQUESTS = 400
LOAD_SQL = (
    "INSERT INTO page_views (path, referrer, viewed_at)"
    " SELECT '/page/' || floor(%(paths)s * power(random(), 2))::int, 'https://example.com/',"
    "        now() - interval '30 days' + (n + random()) * (interval '30 days' / %(rows)s)"
    " FROM generate_series(0, %(rows)s - 1) AS n"
)

GOAL_P50_SECONDS = 0.010
GOAL_GROWTH = 1.2  # p50 at the largest size over the smallest


def grow_to(conn: psycopg.Connection, target: int) -> float:
    """Add views up to `target` (the fresh ones aside), rolled up chunk by chunk; the rollups' seconds."""
    conn.execute("DELETE FROM page_views WHERE path LIKE '/fresh/%'")
    conn.execute("SELECT tally_rollup_page_views()")
    rollup_seconds = 0.0
    while (have := conn.execute("SELECT count(*) FROM page_views").fetchone()[0]) < target:
        rows = min(CHUNK, target - have)
        say(f"stats_scale: {have:,} views, adding {rows:,}")
        conn.execute(LOAD_SQL, {"paths": PATHS, "rows": rows})
        started = time.perf_counter()
        conn.execute("SELECT tally_rollup_page_views()")
        rollup_seconds += time.perf_counter() - started
    conn.execute(
        "INSERT INTO page_views (path) SELECT '/fresh/' || n %% 7 FROM generate_series(1, %s) n",
        (FRESH_VIEWS,),
    )
    conn.execute("VACUUM ANALYZE")
    return rollup_seconds


def p50_p99(url: str) -> tuple[float, float]:
    port = free_port()
    with process(["web.py"], {"DATABASE_URL": url, "PORT": str(port)}, ready="Serving on"):
        time_http_get(port, stats_live.STATS, 20)  # warm up: pool, cache
        timings = time_http_get(port, stats_live.STATS, REQUESTS)
    return percentile(timings, 0.5), percentile(timings, 0.99)


def measure(build: Build) -> Result:
    result = Result("Stats at scale")
    measured: dict[int, tuple[float, float, float, int]] = {}
    with throwaway_database(build) as url, psycopg.connect(url, autocommit=True) as conn:
        for size in SIZES:
            rollup_seconds = grow_to(conn, size)
            bytes_on_disk = conn.execute(
                "SELECT sum(pg_total_relation_size(relid))::bigint FROM pg_partition_tree('page_views')"
            ).fetchone()[0]
            say(f"stats_scale: {size:,} views; timing")
            p50, p99 = p50_p99(url)
            measured[size] = (p50, p99, rollup_seconds, bytes_on_disk)
    smallest, largest = min(measured), max(measured)
    for size, (p50, p99, _, on_disk) in sorted(measured.items()):
        last = size == largest
        result.rows.append(
            Row(
                f"stats p50, {size / 1e6:g}M views over 30 days in daily partitions (p99)",
                f"{ms(p50)} ({ms(p99)})",
                f"{on_disk / 1e9:,.1f} GB of raw views",
                "-",
                f"<= {GOAL_P50_SECONDS * 1000:.0f} ms" if last else "-",
                p50 <= GOAL_P50_SECONDS if last else None,
            )
        )
    if smallest != largest:
        growth = measured[largest][0] / measured[smallest][0]
        result.rows.append(
            Row(
                f"stats p50 at {largest / 1e6:g}M / at {smallest / 1e6:g}M",
                times(growth, GOAL_GROWTH),
                goal=f"<= {GOAL_GROWTH}x",
                met=growth <= GOAL_GROWTH,
            )
        )
    rollups = "; ".join(
        f"to {size / 1e6:g}M: {seconds:.0f} s" for size, (_, _, seconds, _) in sorted(measured.items())
    )
    result.notes.append(
        f"Views on {PATHS} paths (skewed) with a referrer, no visitor id, in time order over the last 30"
        f" days, {CHUNK / 1e6:g}M at a time, each chunk rolled up ({rollups}); {FRESH_VIEWS} views left"
        f" in the tail. {REQUESTS} sequential GETs of {stats_live.STATS} to `python web.py` after 20."
    )
    return result


if __name__ == "__main__":
    run_alone(measure, builds())
