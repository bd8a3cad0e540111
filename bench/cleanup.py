"""Cleanup of 2M expired page views out of 5M: Tally's batched job against one DELETE statement.

The job (cleanup_old_page_views) runs in a real `python worker.py` while `python web.py`
takes a steady trickle of page views; the figures are its rows/s, its longest batch,
and the ingest p99 meanwhile, against the p99 of the same trickle with no cleanup.
The one DELETE runs first, inside a transaction that is rolled back, so the job then
finds the same rows. The worker runs at LOG_LEVEL=DEBUG (the job logs each batch then):
the gaps between those lines are the batch durations.

$ python -m bench.cleanup
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import re
import threading
import time
from collections.abc import Iterator

import psycopg

from bench.harness import (
    Build,
    builds,
    free_port,
    median,
    ms,
    paced_load,
    percentile,
    process,
    say,
    throwaway_database,
)
from bench.report import Result, Row, run_alone, times
from tally.config import from_env
from tally.db import QUERIES

LIVE = 3_000_000
EXPIRED = 2_000_000
# Steady ingest while the cleanup runs: light enough to measure latency, not capacity.
INGEST_RATE = 100  # requests/s
INGEST_CONNECTIONS = 4
IDLE_SECONDS = 15
CLEANUP_TIMEOUT_SECONDS = 300
VIEW = json.dumps({"path": "/pricing", "referrer": "https://example.com/"}).encode()

DEFAULTS = from_env({}, process_type="worker")
# Both loads arrive in time order, as views do: expired ones 31 to 60 days old, live ones
# within the last 29 days, clear of the 30-day cutoff on either side.
LOAD_SQL = (
    "INSERT INTO page_views (path, referrer, viewed_at)"
    " SELECT '/page/' || floor(500 * power(random(), 2))::int, 'https://example.com/',"
    "        now() - %(oldest)s + (n + random()) * ((%(oldest)s - %(newest)s) / %(rows)s)"
    " FROM generate_series(0, %(rows)s - 1) AS n"
)
EXPIRED_SQL = "SELECT count(*) FROM page_views WHERE viewed_at < now() - make_interval(days => %s)"
# The job's own condition (tally/queries.sql, delete_expired_page_views_batch) in one
# statement: expired, and in the rollups (below the last rollup's watermark and not among
# the transactions then in progress), the state's values bound as parameters as the job does.
ONE_DELETE_SQL = (
    "DELETE FROM page_views WHERE viewed_at < %(cutoff)s"
    " AND recorded_xid < %(watermark)s AND NOT recorded_xid = ANY (%(in_progress)s::xid8[])"
)
# The same condition with the state read by subqueries (how this benchmark wrote it before
# the job bound the values): the planner then cannot see the bounds. Shown in the notes.
SUBQUERY_DELETE_SQL = (
    "DELETE FROM page_views WHERE viewed_at < %(cutoff)s"
    " AND recorded_xid < (SELECT watermark FROM page_view_rollup_state)"
    " AND NOT recorded_xid = ANY ((SELECT in_progress FROM page_view_rollup_state)::xid8[])"
)
DEFER_SQL = (
    "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW('default', 'cleanup_old_page_views', 0,"
    " 'cleanup_old_page_views', NULL, '{}'::jsonb, NULL)::procrastinate_job_to_defer_v1])"
)
JOB_SQL = """
SELECT job.status::text, extract(epoch FROM finished.at - started.at)::float8
  FROM procrastinate_jobs job
  LEFT JOIN procrastinate_events started ON started.job_id = job.id AND started.type = 'started'
  LEFT JOIN procrastinate_events finished ON finished.job_id = job.id AND finished.type = 'succeeded'
 WHERE job.id = %s
"""
BATCH_TRIES = 3
TABLE = "page_views"
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")

GOAL_RATE = 0.5  # of the one DELETE's rows/s
GOAL_BATCH_SECONDS = 0.250
GOAL_P99 = 2.0  # of the idle p99


def load(conn: psycopg.Connection) -> None:
    days = datetime.timedelta(days=1)
    conn.execute(LOAD_SQL, {"oldest": 60 * days, "newest": 31 * days, "rows": EXPIRED})
    conn.execute(LOAD_SQL, {"oldest": 29 * days, "newest": 0 * days, "rows": LIVE})
    # Only rolled-up views may be deleted: fold them in, as the minutely rollup would have.
    conn.execute("SELECT tally_rollup_page_views()")
    conn.execute("VACUUM ANALYZE page_views")


def job_params(conn: psycopg.Connection) -> dict:
    """What the job binds: the cutoff, the batch size, and the last rollup's snapshot."""
    watermark, in_progress, *_ = conn.execute(QUERIES["rollup_state"]).fetchone()
    cutoff_sql = "SELECT now() - make_interval(days => %s)"
    cutoff = conn.execute(cutoff_sql, (DEFAULTS.retention_days,)).fetchone()[0]
    return {
        "cutoff": cutoff,
        "batch_size": DEFAULTS.cleanup_batch_size,
        "watermark": watermark,
        "in_progress": in_progress,
    }


def one_delete_seconds(conn: psycopg.Connection, sql: str = ONE_DELETE_SQL) -> tuple[float, int]:
    """Time the single-statement DELETE of every expired view, then roll it back."""
    params = job_params(conn)
    with conn.transaction(force_rollback=True):
        started = time.perf_counter()
        deleted = conn.execute(sql, params).rowcount
        seconds = time.perf_counter() - started
    # Set the hint bits the rolled-back delete left to check, as before it.
    conn.execute("VACUUM ANALYZE page_views")
    return seconds, deleted


@dataclasses.dataclass(frozen=True)
class Batch:
    """One batch by the job's query alone, rolled back: its time, and where it goes."""

    seconds: float  # median of BATCH_TRIES
    # Shares of EXPLAIN ANALYZE's execution time (its per-node timing slows it, not the shares):
    select_share: float  # finding the batch's ids (the Limit node)
    delete_share: float  # deleting the rows by the id array (the rest of the DELETE node)
    scans_table: bool  # planned as a scan of the whole table


def plan_nodes(node: dict) -> Iterator[dict]:
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


def one_batch(conn: psycopg.Connection, sql: str) -> Batch:
    """Time one batch by `sql` (rolled back, BATCH_TRIES times) and split it with EXPLAIN ANALYZE."""
    params = job_params(conn)
    timings = []
    for _ in range(BATCH_TRIES):
        with conn.transaction(force_rollback=True):
            started = time.perf_counter()
            conn.execute(sql, params)
            timings.append(time.perf_counter() - started)
    with conn.transaction(force_rollback=True):
        explained = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", params).fetchone()[0][0]
    total_ms = explained["Execution Time"]
    nodes = list(plan_nodes(explained["Plan"]))
    select_ms = next(node["Actual Total Time"] for node in nodes if node["Node Type"] == "Limit")
    delete_ms = next(node["Actual Total Time"] for node in nodes if node["Node Type"] == "ModifyTable")
    scans = any(
        node["Node Type"] == "Seq Scan" and node.get("Relation Name") == "page_views" for node in nodes
    )
    return Batch(median(timings), select_ms / total_ms, (delete_ms - select_ms) / total_ms, scans)


def batch_seconds(log: str, job_id: int) -> list[float]:
    """Seconds per batch: the gaps between the job's start line and its 'batch removed' lines."""
    stamps = []
    for line in log.splitlines():
        if f"Starting job cleanup_old_page_views[{job_id}]" in line or "batch removed" in line:
            found = LOG_TIME.match(line)
            if found:
                stamps.append(datetime.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f"))
    return [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(stamps)]


def ingest_p99(port: int, seconds: float, stop: threading.Event | None = None) -> tuple[float, int]:
    samples = paced_load(port, "/api/pageviews", VIEW, INGEST_CONNECTIONS, seconds, INGEST_RATE, stop)
    timings = [took for took, status in samples if status == 201]
    if len(timings) != len(samples):
        raise RuntimeError(f"{len(samples) - len(timings)} page views refused during the cleanup benchmark")
    return percentile(timings, 0.99), len(timings)


def measure(build: Build) -> Result:
    result = Result("Cleanup")
    with throwaway_database(build) as url, psycopg.connect(url, autocommit=True) as conn:
        say(f"cleanup: loading {LIVE + EXPIRED:,} views, {EXPIRED:,} expired")
        load(conn)
        expired = conn.execute(EXPIRED_SQL, (DEFAULTS.retention_days,)).fetchone()[0]
        say("cleanup: one DELETE statement (rolled back)")
        delete_seconds, deleted = one_delete_seconds(conn)
        if deleted != expired:
            raise RuntimeError(f"the one DELETE removed {deleted:,} of {expired:,} expired views")
        say("cleanup: the same DELETE reading the rollup state by subqueries (rolled back)")
        subquery_seconds, _ = one_delete_seconds(conn, SUBQUERY_DELETE_SQL)
        say("cleanup: one batch alone, by the job's query (rolled back)")
        job_batch = one_batch(conn, QUERIES["delete_expired_page_views_batch"])
        port = free_port()
        web_env = {"DATABASE_URL": url, "PORT": str(port)}
        with (
            process(["web.py"], web_env, ready="Serving on"),
            process(
                ["worker.py"], {"DATABASE_URL": url, "LOG_LEVEL": "DEBUG"}, ready="PROCESS STARTED"
            ) as worker,
        ):
            say(f"cleanup: ingest p99 with no cleanup, {INGEST_RATE} req/s for {IDLE_SECONDS} s")
            idle_p99, _ = ingest_p99(port, IDLE_SECONDS)
            say("cleanup: cleanup_old_page_views in the worker, ingest meanwhile")
            job_id = conn.execute(DEFER_SQL).fetchone()[0][0]
            done = threading.Event()
            during: list[tuple[float, int]] = []
            load_thread = threading.Thread(
                target=lambda: during.append(ingest_p99(port, CLEANUP_TIMEOUT_SECONDS, done))
            )
            load_thread.start()
            deadline = time.monotonic() + CLEANUP_TIMEOUT_SECONDS
            status, job_seconds = "todo", None
            while time.monotonic() < deadline and status in ("todo", "doing"):
                time.sleep(0.2)
                status, job_seconds = conn.execute(JOB_SQL, (job_id,)).fetchone()
            done.set()
            load_thread.join()
            batches = batch_seconds(worker.output(), job_id)
        left = conn.execute(EXPIRED_SQL, (DEFAULTS.retention_days,)).fetchone()[0]
    if status != "succeeded" or left:
        raise RuntimeError(f"cleanup job {job_id} ended {status} with {left:,} expired views left")
    busy_p99, busy_requests = during[0]
    tally_rate, delete_rate = expired / job_seconds, deleted / delete_seconds
    rate_ratio, p99_ratio = tally_rate / delete_rate, busy_p99 / idle_p99
    # The first interval also holds the job's opening rollup: shown apart, not as a batch.
    first, batches = batches[0], batches[1:]
    longest = max(batches)
    result.rows += [
        Row(
            f"cleanup of {expired / 1e6:g}M expired views of {(LIVE + EXPIRED) / 1e6:g}M: rows/s",
            f"{tally_rate:,.0f} rows/s ({job_seconds:.1f} s, {len(batches) + 1} batches)",
            f"one DELETE {delete_rate:,.0f} rows/s ({delete_seconds:.1f} s)",
            times(rate_ratio, GOAL_RATE),
            f">= {GOAL_RATE}x one DELETE",
            rate_ratio >= GOAL_RATE,
        ),
        Row(
            f"cleanup longest batch ({DEFAULTS.cleanup_batch_size:,} rows)",
            f"{ms(longest)} (p50 {ms(percentile(batches, 0.5))}, first with rollup {ms(first)})",
            f"one DELETE: one {delete_seconds:.1f} s transaction",
            "-",
            f"<= {GOAL_BATCH_SECONDS * 1000:.0f} ms",
            longest <= GOAL_BATCH_SECONDS,
        ),
        Row(
            f"ingest p99 during cleanup ({INGEST_RATE} views/s steady)",
            ms(busy_p99),
            f"no cleanup {ms(idle_p99)}",
            times(p99_ratio, GOAL_P99),
            f"<= {GOAL_P99:g}x no cleanup",
            p99_ratio <= GOAL_P99,
        ),
    ]
    result.notes.append(
        f"{LIVE:,} live and {EXPIRED:,} expired views loaded in time order and rolled up. The one DELETE"
        " is the job's own condition in one statement, timed inside a transaction that is rolled back."
        f" The job runs in `python worker.py` (CLEANUP_BATCH_SIZE {DEFAULTS.cleanup_batch_size:,}); its"
        " rows/s is the expired count over the time between its 'started' and 'succeeded' events; its"
        " batches are timed from its DEBUG lines (the worker runs at LOG_LEVEL=DEBUG). Ingest:"
        f" {INGEST_RATE} single-view POSTs/s over {INGEST_CONNECTIONS} connections to `python web.py`,"
        f" {IDLE_SECONDS} s with no cleanup, then for as long as the job runs ({busy_requests:,} requests)."
    )
    result.notes.append(
        f"The one DELETE binds the rollup state's values as the job does ({delete_seconds:.1f} s); reading"
        f" them by subqueries instead, so that the planner sees no bounds, the same DELETE took"
        f" {subquery_seconds:.1f} s."
    )
    if rate_ratio < GOAL_RATE or longest > GOAL_BATCH_SECONDS:
        scans = ", planned as a scan of all of page_views" if job_batch.scans_table else ""
        result.notes.append(
            f"What bounds the cleanup: each batch of {DEFAULTS.cleanup_batch_size:,} rows costs"
            f" {ms(percentile(batches, 0.5))} (p50) in the job, plus a rest of a tenth of that, where the"
            f" one DELETE spends {ms(delete_seconds / deleted * DEFAULTS.cleanup_batch_size)} on as many."
            f" One batch alone, rolled back: {ms(job_batch.seconds)} by the job's query{scans}; EXPLAIN"
            f" ANALYZE puts {job_batch.select_share:.0%} of it in finding the ids and"
            f" {job_batch.delete_share:.0%} in deleting them by the id array; in the job each batch also"
            " commits, beside the ingest. What would lift it:"
            " larger batches (fewer commits) while the longest stays under the goal, and a shorter rest"
            " between batches (CLEANUP_REST_FRACTION) at some cost to ingest p99."
        )
    return result


if __name__ == "__main__":
    run_alone(measure, builds())
