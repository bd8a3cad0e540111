"""Rollups smaller than what they roll up, and folded faster (issue 19, part 6; migrations/0020).

(a) SIZE views of bench/filters.py's realistic load (5,000 skewed paths, 300 referring
    domains, ~100 countries, all nine dimensions, about 3 views per visitor id) over 30 days,
    in a new database, rolled up once by `tally_rollup_page_views()`, then VACUUM ANALYZE:
    the kept rollups' bytes per view against the raw views' (daily partitions with their
    indexes), the transient ones (visit days, kept 3 days after their last fold), and the
    rollup's views/s.
(b) COMPARE_SIZE views of the same load rolled up once by the rollups before 0020 (a database
    migrated to 0019: per-bucket and per-day rows per value, visitor-day rows and triples)
    and by today's, same run: time and kept bytes of each.

$ python -m bench rollups
$ BENCH_ROLLUP_VIEWS=300000 python -m bench rollups   # a smaller (a)
"""

from __future__ import annotations

import os
import time

import psycopg

from bench.filters import LOAD as REALISTIC_LOAD
from bench.harness import Build, make_day_partitions, say, throwaway_server
from bench.partitions import migrate_to
from bench.report import Result, Row, times
from migrations import apply_pending

SIZE = int(os.environ.get("BENCH_ROLLUP_VIEWS", "3000000"))  # the 3M views over 30 days
COMPARE_SIZE = 300_000  # the rollups before 0020 fold 0.3M of these views in ~40 s
DATABASES = ("today", "before_0020", "today_small")
# Kept as long as the rollups (400 days), and kept 3 days after their last fold.
ROLLUP_TABLES = (
    "page_view_buckets",
    "page_view_day_values",  # with the pairs of ids of days in a row (migrations/0031)
    "page_view_visit_buckets",
)
TRANSIENT_TABLES = ("page_view_visit_days",)
BEFORE_ROLLUP_TABLES = (
    "page_view_buckets",
    "page_view_bucket_dims",
    "page_view_daily_dims",
    "page_view_visitor_day_counts",
    "page_view_visit_buckets",
)
BEFORE_TRANSIENT_TABLES = ("page_view_visitor_days", "page_view_visit_days")
RAW_BYTES_SQL = (
    "SELECT sum(pg_total_relation_size(relid))::bigint FROM pg_partition_tree('page_views') WHERE isleaf"
)
TABLE_BYTES_SQL = "SELECT t::text, pg_total_relation_size(t) FROM unnest(%s::regclass[]) t ORDER BY 2 DESC"

GOAL_ROLLUP_RATE = 100_000  # views/s folded with 5,000 paths
GOAL_ROLLUP_BYTES = 0.5  # of the raw views' bytes
DAILY_VIEWS = 100_000  # the site the year's estimate is for


def footprint(url: str, views: int, kept: tuple[str, ...], transient: tuple[str, ...]) -> dict:
    """`views` realistic views rolled up once: bytes per view (raw, kept, transient), the rate."""
    with psycopg.connect(url, autocommit=True) as conn:
        say(f"rollups: {views:,} realistic views, rolled up once")
        make_day_partitions(conn, 31)
        conn.execute(REALISTIC_LOAD, {"rows": views})
        conn.execute("VACUUM ANALYZE page_views")
        started = time.perf_counter()
        conn.execute("SELECT tally_rollup_page_views()")
        seconds = time.perf_counter() - started
        conn.execute("VACUUM ANALYZE")
        raw = conn.execute(RAW_BYTES_SQL).fetchone()[0]
        kept_tables = conn.execute(TABLE_BYTES_SQL, (list(kept),)).fetchall()
        transient_tables = conn.execute(TABLE_BYTES_SQL, (list(transient),)).fetchall()
    return {
        "raw_per_view": raw / views,
        "kept_per_view": sum(size for _, size in kept_tables) / views,
        "transient_per_view": sum(size for _, size in transient_tables) / views,
        "rate": views / seconds,
        "seconds": seconds,
        "tables": kept_tables + transient_tables,
    }


def measure(build: Build) -> Result:
    result = Result("Rollups")
    with throwaway_server(build) as server_url:
        with psycopg.connect(server_url, autocommit=True) as admin:
            for name in DATABASES:
                admin.execute(f"CREATE DATABASE {name}")  # fixed names, no input
        url = {name: psycopg.conninfo.make_conninfo(server_url, dbname=name) for name in DATABASES}
        apply_pending(url["today"])
        now = footprint(url["today"], SIZE, ROLLUP_TABLES, TRANSIENT_TABLES)
        migrate_to(url["before_0020"], "0019")
        before = footprint(url["before_0020"], COMPARE_SIZE, BEFORE_ROLLUP_TABLES, BEFORE_TRANSIENT_TABLES)
        apply_pending(url["today_small"])
        small = footprint(url["today_small"], COMPARE_SIZE, ROLLUP_TABLES, TRANSIENT_TABLES)
    bytes_ratio = now["kept_per_view"] / now["raw_per_view"]
    year_gb = now["kept_per_view"] * DAILY_VIEWS * 365 / 1e9
    result.rows += [
        Row(
            f"rollup bytes per view kept, {SIZE / 1e6:g}M realistic views (5,000 paths)",
            f"{now['kept_per_view']:,.0f} B (+{now['transient_per_view']:,.0f} B kept 3 days)",
            f"raw {now['raw_per_view']:,.0f} B",
            times(bytes_ratio),
            f"<= {GOAL_ROLLUP_BYTES:g}x raw",
            bytes_ratio <= GOAL_ROLLUP_BYTES,
        ),
        Row(
            f"rollup rate, {SIZE / 1e6:g}M realistic views with 5,000 paths",
            f"{now['rate']:,.0f} views/s ({now['seconds']:.0f} s)",
            "-",
            "-",
            f">= {GOAL_ROLLUP_RATE:,} views/s",
            now["rate"] >= GOAL_ROLLUP_RATE,
        ),
        Row(
            f"a year of rollups at {DAILY_VIEWS:,} views/day, from the bytes per view above",
            f"~{year_gb:,.1f} GB",
        ),
        Row(
            f"rollup of {COMPARE_SIZE / 1e6:g}M realistic views: time, kept bytes per view",
            f"{small['seconds']:.1f} s, {small['kept_per_view']:,.0f} B",
            f"before 0020 {before['seconds']:.1f} s, {before['kept_per_view']:,.0f} B"
            f" (+{before['transient_per_view']:,.0f} B kept 3 days)",
            f"{times(before['seconds'] / small['seconds'])} faster,"
            f" {times(before['kept_per_view'] / small['kept_per_view'])} smaller",
        ),
    ]
    tables = ", ".join(f"{name} {size / 1e6:,.1f} MB" for name, size in now["tables"])
    before_tables = ", ".join(f"{name} {size / 1e6:,.1f} MB" for name, size in before["tables"])
    result.notes.append(
        f"How: {SIZE:,} views loaded by bench/filters.py's SQL into a new database, rolled up once,"
        " VACUUM ANALYZE, sizes by pg_total_relation_size (tables, indexes, TOAST); raw views are the"
        " leaf partitions of page_views. The year's estimate scales the kept bytes per view linearly,"
        " an upper bound: a value seen again the same day and 15 minutes adds nothing. Visit days go"
        f" 3 days after their last fold. Tables at {SIZE / 1e6:g}M: {tables}. Before 0020 at"
        f" {COMPARE_SIZE / 1e6:g}M: {before_tables}."
    )
    return result
