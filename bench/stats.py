"""GET /api/stats?days=30 against the naive GROUP BY over page_views, same data, same run.

$ python -m bench.stats            # 1M and 5M views over 30 days
$ python -m bench.stats 3000000    # one size
"""

from __future__ import annotations

import sys
import time

import psycopg

from bench.harness import free_port, median, ms, percentile, process, throwaway_database, time_http_get

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


def load_views(conn: psycopg.Connection, target: int) -> None:
    """Top page_views up to `target` rows, spread over 30 days, on PATHS paths (skewed)."""
    have = conn.execute("SELECT count(*) FROM page_views").fetchone()[0]
    conn.execute(
        "INSERT INTO page_views (path, referrer, viewed_at)"
        " SELECT '/page/' || floor(%s * power(random(), 2))::int, 'https://example.com/',"
        "        now() - random() * interval '30 days'"
        " FROM generate_series(1, %s)",
        (PATHS, target - have),
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


def main(sizes: list[int]) -> None:
    rows = []
    with throwaway_database() as url, psycopg.connect(url, autocommit=True) as conn:
        port = free_port()
        for size in sorted(sizes):
            started = time.perf_counter()
            load_views(conn, size)
            load_seconds = time.perf_counter() - started
            with process(["web.py"], {"DATABASE_URL": url, "PORT": str(port)}, ready="Serving on"):
                time_http_get(port, "/api/stats?days=30", 20)  # warm up: pool, cache
                tally = time_http_get(port, "/api/stats?days=30", REQUESTS)
            naive = naive_seconds(conn)
            rows.append((size, tally, naive, load_seconds))
    print(f"{'views':>10} | {'stats p50':>10} | {'stats p99':>10} | {'naive p50':>11} | {'speed-up':>8}")
    for size, tally, naive, _ in rows:
        p50 = percentile(tally, 0.5)
        print(
            f"{size:>10,} | {ms(p50):>10} | {ms(percentile(tally, 0.99)):>10} | "
            f"{ms(median(naive)):>11} | {median(naive) / p50:>7.0f}x"
        )
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        ratio = percentile(last[1], 0.5) / percentile(first[1], 0.5)
        print(f"p50 at {last[0]:,} / p50 at {first[0]:,}: {ratio:.2f}x")


if __name__ == "__main__":
    main([int(arg) for arg in sys.argv[1:]] or [1_000_000, 5_000_000])
