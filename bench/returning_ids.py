"""A backfill whose visitor ids come back day after day (migrations/0031): rollup bytes, and
the first stats answer after a rollup, against the same views with ids that live one day.

SIZE views over 30 days on 2,000 skewed paths, 676 countries, 30 browsers, with a visitor id
of IDS drawn at random per view (so each id has views on every day, as an import of a site's
own user ids would), rolled up once; then the same views with each id on one UTC day only (as
ids from /api/collect are: their salt's day), in a second database of the same server. Each
is asked for 30 days in UTC, Asia/Kathmandu and America/New_York through `StatsReader`: the
first answer after a rollup reads the rollups (later ones are cached until the next rollup),
so each zone's first answer is timed, with a fresh reader, three times.

$ python -m bench returning_ids
$ BENCH_RETURNING_VIEWS=300000 python -m bench returning_ids   # a smaller load
"""

from __future__ import annotations

import os
import time

import psycopg
import psycopg_pool

from bench.harness import Build, make_day_partitions, median, ms, say, throwaway_server
from bench.report import Result, Row, times
from migrations import apply_pending
from tally.web.stats import StatsReader

SIZE = int(os.environ.get("BENCH_RETURNING_VIEWS", "2300000"))
IDS = 25_000
ZONES = ("UTC", "Asia/Kathmandu", "America/New_York")
FIRST_READS = 3
DATABASES = ("returning_ids", "one_day_ids")
GOAL_FIRST_READ_SECONDS = 1.0  # well inside the web's 5 s statement timeout
# `day_ids`: each id on one UTC day (the id of day d is d * IDS + the drawn one).
LOAD = """
INSERT INTO page_views (site, path, referrer, country, browser, os, device, visitor, viewed_at)
SELECT 'example.com', '/page/' || floor(2000 * power(random(), 3))::int,
       CASE WHEN random() < 0.25
            THEN 'https://ref' || floor(300 * power(random(), 3))::int || '.example.net/a' END,
       chr(65 + (v %% 26)) || chr(65 + (v / 26) %% 26), 'Browser' || (v %% 30), 'System' || (v %% 10),
       (ARRAY['phone', 'tablet', 'laptop', 'desktop'])[1 + v %% 4],
       CASE WHEN %(day_ids)s THEN ((at AT TIME ZONE 'UTC')::date - date '2000-01-01') * %(ids)s::bigint + v
            ELSE v END,
       at
  FROM (SELECT floor(%(ids)s * random())::int AS v,
               now() - interval '30 days' + (n + random()) * (interval '30 days' / %(rows)s) AS at
          FROM generate_series(0, %(rows)s - 1) AS n) drawn
"""
SIZES_SQL = """
SELECT (SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('page_views') WHERE isleaf)::bigint,
       pg_total_relation_size('page_view_day_values'),
       (SELECT count(*) FROM page_view_day_values),
       (SELECT coalesce(sum(cardinality(pairs) / 3), 0) FROM page_view_day_values)::bigint
"""


def loaded(url: str, day_ids: bool) -> dict:
    """The load rolled up once: bytes, pairs and the rollup's time, and each zone's first reads."""
    kind = "ids of one day" if day_ids else "ids on every day"
    with psycopg.connect(url, autocommit=True) as conn:
        say(f"returning_ids: {SIZE:,} views, {kind}")
        make_day_partitions(conn, 31)
        conn.execute(LOAD, {"rows": SIZE, "ids": IDS, "day_ids": day_ids})
        conn.execute("VACUUM ANALYZE page_views")
        started = time.perf_counter()
        conn.execute("SELECT tally_rollup_page_views()")
        rollup_seconds = time.perf_counter() - started
        conn.execute("VACUUM ANALYZE")
        raw, day_values, rows, pairs = conn.execute(SIZES_SQL).fetchone()
    reads: dict[str, list[float]] = {}
    with psycopg_pool.ConnectionPool(url, min_size=1, max_size=2, kwargs={"autocommit": True}) as pool:
        for zone in ZONES:
            reads[zone] = []
            for _ in range(FIRST_READS):
                reader = StatsReader(pool, retention_days=60)  # a fresh cache: the first answer
                started = time.perf_counter()
                reader.stats_for_window(30, site="example.com", tz=zone)
                reads[zone].append(time.perf_counter() - started)
    say(f"returning_ids: {kind}: rolled up in {rollup_seconds:.0f} s, {pairs:,} pairs")
    return {
        "raw": raw,
        "day_values": day_values,
        "rows": rows,
        "pairs": pairs,
        "rollup_seconds": rollup_seconds,
        "reads": {zone: median(samples) for zone, samples in reads.items()},
    }


def measure(build: Build) -> Result:
    result = Result("Returning ids")
    with throwaway_server(build) as server_url:
        with psycopg.connect(server_url, autocommit=True) as admin:
            for name in DATABASES:
                admin.execute(f"CREATE DATABASE {name}")  # fixed names, no input
        url = {name: psycopg.conninfo.make_conninfo(server_url, dbname=name) for name in DATABASES}
        for each in url.values():
            apply_pending(each)
        returning = loaded(url["returning_ids"], day_ids=False)
        one_day = loaded(url["one_day_ids"], day_ids=True)
    label = f"{SIZE / 1e6:g}M views, {IDS:,} ids"
    for zone in ZONES:
        first = returning["reads"][zone]
        result.rows.append(
            Row(
                f"first stats answer after a rollup, 30 days, {zone}, {label} on every day",
                ms(first),
                f"ids of one day {ms(one_day['reads'][zone])}",
                times(first / one_day["reads"][zone]),
                f"<= {GOAL_FIRST_READ_SECONDS:g} s",
                first <= GOAL_FIRST_READ_SECONDS,
            )
        )
    result.rows.append(
        Row(
            f"rollup bytes per view, {label} on every day",
            f"{returning['day_values'] / SIZE:,.0f} B ({returning['pairs']:,} pairs in"
            f" {returning['rows']:,} rows; raw {returning['raw'] / SIZE:,.0f} B)",
            f"ids of one day {one_day['day_values'] / SIZE:,.0f} B",
            times(returning["day_values"] / one_day["day_values"]),
        )
    )
    result.rows.append(
        Row(
            f"rollup of {label} on every day",
            f"{returning['rollup_seconds']:.0f} s",
            f"ids of one day {one_day['rollup_seconds']:.0f} s",
            times(returning["rollup_seconds"] / one_day["rollup_seconds"]),
        )
    )
    result.notes.append(
        f"How: {SIZE:,} views loaded by SQL (bench/returning_ids.py) into each of two databases, rolled"
        " up once, VACUUM ANALYZE; each zone's first answer through StatsReader (a new reader each time,"
        f" so the rolled-up part is read, not cached), the median of {FIRST_READS}. Bytes:"
        " page_view_day_values with its indexes and TOAST (the pairs live in its rows since migration 0031)."
    )
    return result
