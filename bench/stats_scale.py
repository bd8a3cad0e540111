"""GET /api/stats?days=30 at 5M and at 50M views over 30 days, in daily partitions (issue 19).

Each size is a database of its own, as a site that has run for 30 days at that traffic has
it: a partition per day (made before the views come, as maintain_partitions makes them ahead),
views in time order over the last 30 days on PATHS paths (bench/stats.py's load), CHUNK at a
time, each chunk rolled up after it as the minutely rollup would have; FRESH_VIEWS stay above
the watermark, as between two rollups. At each size, `python web.py` alone answers REQUESTS
sequential GETs after a warm-up. The baseline of the larger size is the smaller one's p50,
measured in the same run.

Until session 28 one database grew from 5M to 50M with every chunk spread over all 30 days,
into the default partition (no day partitions existed for past days): each 15-minute
bucket's rows lay in ten far-apart stretches of one 6 GB table, and counting the bucket 24
hours ago (stats_raw_range) met a new visibility-map page at nearly every row, 2.2 ms at 50M
against 0.4 ms at 5M, which is most of the growth those runs reported.

$ python -m bench.stats_scale          # 9-11 minutes a build, 7 GB of disk at 50M
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
    make_day_partitions,
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
# Views number `first` to `first + rows - 1` of `total`, spread evenly over the last 30 days.
LOAD_SQL = (
    "INSERT INTO page_views (path, referrer, viewed_at)"
    " SELECT '/page/' || floor(%(paths)s * power(random(), 2))::int, 'https://example.com/',"
    "        %(since)s::timestamptz + (n + random()) * (interval '30 days' / %(total)s)"
    " FROM generate_series(%(first)s, %(first)s + %(rows)s - 1) AS n"
)

GOAL_P50_SECONDS = 0.010
GOAL_GROWTH = 1.2  # p50 at the largest size over the smallest


def load(conn: psycopg.Connection, size: int) -> float:
    """`size` views in day partitions, in time order, rolled up chunk by chunk; the rollups' seconds."""
    since = conn.execute("SELECT now() - interval '30 days'").fetchone()[0]
    make_day_partitions(conn, 31)
    rollup_seconds = 0.0
    for first in range(0, size, CHUNK):
        rows = min(CHUNK, size - first)
        say(f"stats_scale: {first:,} views, adding {rows:,}")
        conn.execute(LOAD_SQL, {"paths": PATHS, "since": since, "first": first, "rows": rows, "total": size})
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
    for size in SIZES:
        with throwaway_database(build) as url, psycopg.connect(url, autocommit=True) as conn:
            rollup_seconds = load(conn, size)
            bytes_on_disk = conn.execute(
                "SELECT sum(pg_total_relation_size(relid))::bigint FROM pg_partition_tree('page_views')"
            ).fetchone()[0]
            in_default = conn.execute("SELECT count(*) FROM page_views_default").fetchone()[0]
            assert in_default == 0, f"{in_default} views in the default partition"
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
        f"Each size a database of its own: views on {PATHS} paths (skewed) with a referrer, no visitor id,"
        f" in time order over the last 30 days into a partition per day, {CHUNK / 1e6:g}M at a time, each"
        f" chunk rolled up ({rollups}); {FRESH_VIEWS} views left in the tail. {REQUESTS} sequential GETs"
        f" of {stats_live.STATS} to `python web.py` after 20."
    )
    return result


if __name__ == "__main__":
    run_alone(measure, builds())
