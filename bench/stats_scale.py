"""GET /api/stats?days=30 at 5M and at 50M views over 30 days, in daily partitions (issue 19).

Each size is a database of its own, as a site that has run for 30 days at that traffic has
it: a partition per day (made before the views come, as maintain_partitions makes them ahead),
views in time order over the last 30 days on PATHS paths (bench/stats.py's load), CHUNK at a
time, each chunk rolled up after it as the minutely rollup would have; FRESH_VIEWS stay above
the watermark, as between two rollups. Every size is loaded first; then a `python web.py` on
each answers REQUESTS sequential GETs after a warm-up, in turns of TURN GETs a size, so that
whatever else the machine does meanwhile falls on all sizes alike. The baseline of the larger
size is the smaller one's p50, measured in the same run.

Until session 47 each size was timed alone, minutes after the other: on Debian's 15 the 50M
p50 read 1.33x and 1.26x the 5M one in two runs, and 1.00x with the same two databases timed
in turns (a statement at a time in process, 1.05x: none of them grows with the views).

Until session 28 one database grew from 5M to 50M with every chunk spread over all 30 days,
into the default partition (no day partitions existed for past days): each 15-minute
bucket's rows lay in ten far-apart stretches of one 6 GB table, and counting the bucket 24
hours ago (stats_raw_range) met a new visibility-map page at nearly every row, 2.2 ms at 50M
against 0.4 ms at 5M, which is most of the growth those runs reported.

$ python -m bench.stats_scale          # 9-11 minutes a build, 7 GB of disk at 50M
"""

from __future__ import annotations

import contextlib
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
TURN = 10  # GETs a size answers before the next size's turn
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


def p50_p99_in_turns(urls: dict[int, str]) -> dict[int, tuple[float, float]]:
    """The p50 and p99 of REQUESTS GETs to a `python web.py` on each size's database, in turns."""
    ports = {size: free_port() for size in urls}
    with contextlib.ExitStack() as webs:
        for size, url in urls.items():
            webs.enter_context(
                process(["web.py"], {"DATABASE_URL": url, "PORT": str(ports[size])}, ready="Serving on")
            )
        timings: dict[int, list[float]] = {size: [] for size in urls}
        for port in ports.values():
            time_http_get(port, stats_live.STATS, 20)  # warm up: pool, cache
        while any(len(taken) < REQUESTS for taken in timings.values()):
            for size, port in ports.items():
                timings[size] += time_http_get(port, stats_live.STATS, TURN)
    return {size: (percentile(taken, 0.5), percentile(taken, 0.99)) for size, taken in timings.items()}


def measure(build: Build) -> Result:
    result = Result("Stats at scale")
    measured: dict[int, tuple[float, float, float, int]] = {}
    loaded: dict[int, tuple[float, int]] = {}
    urls: dict[int, str] = {}
    with contextlib.ExitStack() as databases:
        for size in SIZES:
            urls[size] = url = databases.enter_context(throwaway_database(build))
            with psycopg.connect(url, autocommit=True) as conn:
                rollup_seconds = load(conn, size)
                bytes_on_disk = conn.execute(
                    "SELECT sum(pg_total_relation_size(relid))::bigint FROM pg_partition_tree('page_views')"
                ).fetchone()[0]
                in_default = conn.execute("SELECT count(*) FROM page_views_default").fetchone()[0]
                assert in_default == 0, f"{in_default} views in the default partition"
            loaded[size] = (rollup_seconds, bytes_on_disk)
        say(f"stats_scale: {', '.join(f'{size:,}' for size in SIZES)} views; timing in turns")
        for size, (p50, p99) in p50_p99_in_turns(urls).items():
            measured[size] = (p50, p99, *loaded[size])
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
        f" of {stats_live.STATS} to a `python web.py` on each, after 20, in turns of {TURN} a size."
    )
    return result


if __name__ == "__main__":
    run_alone(measure, builds())
