"""GET /api/stats?days=30 against the naive GROUP BY over page_views, same data, same run.

$ python -m bench.stats            # 1M and 5M views over 30 days
$ python -m bench.stats 3000000    # one size
"""

from __future__ import annotations

import sys
import time

import psycopg

from bench.harness import free_port, median, ms, percentile, process, say, throwaway_database, time_http_get
from bench.report import Result, Row, print_result, times

SIZES = [1_000_000, 5_000_000]
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

GOAL_P50_SECONDS = 0.010  # at the largest size
GOAL_SPEEDUP = 100
GOAL_GROWTH = 1.5  # p50 at the largest size over p50 at the smallest


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


def measure(sizes: list[int] | None = None) -> Result:
    sizes = sorted(sizes or SIZES)
    result = Result("GET /api/stats")
    p50s = {}
    with throwaway_database() as url, psycopg.connect(url, autocommit=True) as conn:
        port = free_port()
        for size in sizes:
            say(f"stats: loading {size:,} views")
            started = time.perf_counter()
            load_views(conn, size)
            load_seconds = time.perf_counter() - started
            say(f"stats: {size:,} views loaded and rolled up in {load_seconds:.0f} s; timing")
            with process(["web.py"], {"DATABASE_URL": url, "PORT": str(port)}, ready="Serving on"):
                time_http_get(port, "/api/stats?days=30", 20)  # warm up: pool, cache
                tally = time_http_get(port, "/api/stats?days=30", REQUESTS)
            naive = naive_seconds(conn)
            p50, p99 = percentile(tally, 0.5), percentile(tally, 0.99)
            speedup = median(naive) / p50
            p50s[size] = p50
            last = size == sizes[-1]
            goal = (
                f"<= {GOAL_P50_SECONDS * 1000:.0f} ms; >= {GOAL_SPEEDUP}x faster"
                if last
                else (f">= {GOAL_SPEEDUP}x faster")
            )
            met = speedup >= GOAL_SPEEDUP and (not last or p50 <= GOAL_P50_SECONDS)
            label = f"{size / 1e6:g}M views over 30 days"
            result.rows += [
                Row(
                    f"stats p50, {label}",
                    ms(p50),
                    f"naive {ms(median(naive))}",
                    f"{times(speedup)} faster",
                    goal,
                    met,
                ),
                Row(f"stats p99, {label}", ms(p99), f"naive {ms(max(naive))} (slowest)"),
            ]
    if len(sizes) > 1:
        growth = p50s[sizes[-1]] / p50s[sizes[0]]
        result.rows.append(
            Row(
                f"stats p50 at {sizes[-1] / 1e6:g}M / at {sizes[0] / 1e6:g}M",
                times(growth),
                "-",
                "-",
                f"<= {GOAL_GROWTH}x",
                growth <= GOAL_GROWTH,
            )
        )
    result.notes.append(
        f"{REQUESTS} sequential GETs on one keep-alive connection after 20 to warm up, against"
        f" {NAIVE_RUNS} runs of the naive queries ({len(NAIVE_QUERIES)} GROUP BYs over page_views) on the"
        f" same data; {FRESH_VIEWS} views are left above the rollup watermark, as between two rollups."
    )
    return result


if __name__ == "__main__":
    print_result(measure([int(arg) for arg in sys.argv[1:]] or None))
