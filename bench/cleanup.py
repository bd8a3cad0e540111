"""Cleanup of 2M expired page views out of 5M: Tally's job, which drops whole days, against one
DELETE statement.

The job (cleanup_old_page_views) runs in a real `python worker.py` while `python web.py`
takes a steady trickle of page views; the figures are its rows/s and the ingest p99 and
longest request meanwhile, against the same trickle with no cleanup. The one DELETE runs
first, inside a transaction that is rolled back, so the job then finds the same rows.

$ python -m bench.cleanup
"""

from __future__ import annotations

import datetime
import json
import threading
import time

import psycopg

from bench.harness import (
    Build,
    builds,
    free_port,
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
DEFER_SQL = (
    "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW('default', 'cleanup_old_page_views', 0,"
    " 'cleanup_old_page_views', NULL, '{}'::jsonb, NULL)::procrastinate_job_to_defer_v1])"
)
JOB_SQL = """
SELECT job.status::text, extract(epoch FROM finished.at - started.at)::float8, started.at
  FROM procrastinate_jobs job
  LEFT JOIN procrastinate_events started ON started.job_id = job.id AND started.type = 'started'
  LEFT JOIN procrastinate_events finished ON finished.job_id = job.id AND finished.type = 'succeeded'
 WHERE job.id = %s
"""
# The expired days still part of page_views, read from the catalog (it takes no lock on
# page_views, so watching does not hold up the job's detach), and the server's time.
ATTACHED_SQL = """
SELECT clock_timestamp(), count(*)::int
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
 WHERE i.inhparent = 'page_views'::regclass AND c.relname ~ '^page_views_p[0-9]{8}$' AND c.relname < %s
"""
WATCH_INTERVAL = 0.005

GOAL_RATE = 10  # of the one DELETE's rows/s (issue 19)
GOAL_P99 = 2.0  # of the idle p99


def load(conn: psycopg.Connection) -> None:
    days = datetime.timedelta(days=1)
    # The days a site running for 60 days has, made when they lay ahead (jobs/partitions.py).
    conn.execute("SELECT tally_ensure_day_partition(current_date - n) FROM generate_series(0, 61) n")
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


def delete_and_vacuum_seconds(url: str) -> float:
    """The one DELETE committed, then the VACUUM that makes its rows' space reusable: what
    the job's drops (files removed) compare with. On a copy of the database (the job needs
    the rows), made from it as a template."""
    with psycopg.connect(url, autocommit=True) as conn:
        name = conn.info.dbname
        conn.execute("CHECKPOINT")
        conn.execute(f'CREATE DATABASE bench_cleanup_copy TEMPLATE "{name}"')
    copy_url = psycopg.conninfo.make_conninfo(url, dbname="bench_cleanup_copy")
    try:
        with psycopg.connect(copy_url, autocommit=True) as copy:
            params = job_params(copy)
            started = time.perf_counter()
            copy.execute(ONE_DELETE_SQL, params)
            copy.execute("VACUUM page_views")
            return time.perf_counter() - started
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP DATABASE bench_cleanup_copy")


def watch_expired_days(url: str, last_expired: str, stop: threading.Event, seen: list) -> None:
    """Append the server's time at which no day before `last_expired` was part of page_views."""
    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.is_set():
            at, attached = conn.execute(ATTACHED_SQL, (last_expired,)).fetchone()
            if attached == 0:
                seen.append(at)
                return
            time.sleep(WATCH_INTERVAL)


def ingest_latency(
    port: int, seconds: float, stop: threading.Event | None = None
) -> tuple[float, float, int]:
    """p99 and longest request of a paced load of single views, and how many were sent."""
    samples = paced_load(port, "/api/pageviews", VIEW, INGEST_CONNECTIONS, seconds, INGEST_RATE, stop)
    timings = [took for took, status in samples if status == 201]
    if len(timings) != len(samples):
        raise RuntimeError(f"{len(samples) - len(timings)} page views refused during the cleanup benchmark")
    return percentile(timings, 0.99), max(timings), len(timings)


def measure(build: Build) -> Result:
    result = Result("Cleanup")
    with throwaway_database(build) as url:
        say(f"cleanup: loading {LIVE + EXPIRED:,} views, {EXPIRED:,} expired")
        with psycopg.connect(url, autocommit=True) as conn:
            load(conn)
        say("cleanup: one DELETE committed and VACUUM, on a copy of the database")
        vacuum_seconds = delete_and_vacuum_seconds(url)
        conn = psycopg.connect(url, autocommit=True)
        expired = conn.execute(EXPIRED_SQL, (DEFAULTS.retention_days,)).fetchone()[0]
        say("cleanup: one DELETE statement (rolled back)")
        delete_seconds, deleted = one_delete_seconds(conn)
        if deleted != expired:
            raise RuntimeError(f"the one DELETE removed {deleted:,} of {expired:,} expired views")
        first_kept_day = job_params(conn)["cutoff"].astimezone(datetime.UTC).date()
        port = free_port()
        web_env = {"DATABASE_URL": url, "PORT": str(port)}
        with (
            conn,
            process(["web.py"], web_env, ready="Serving on"),
            process(["worker.py"], {"DATABASE_URL": url}, ready="PROCESS STARTED"),
        ):
            say(f"cleanup: ingest with no cleanup, {INGEST_RATE} req/s for {IDLE_SECONDS} s")
            idle_p99, idle_max, _ = ingest_latency(port, IDLE_SECONDS)
            say("cleanup: cleanup_old_page_views in the worker, ingest meanwhile")
            done = threading.Event()
            gone_at: list[datetime.datetime] = []
            watcher = threading.Thread(
                target=watch_expired_days, args=(url, f"page_views_p{first_kept_day:%Y%m%d}", done, gone_at)
            )
            watcher.start()
            job_id = conn.execute(DEFER_SQL).fetchone()[0][0]
            during: list[tuple[float, float, int]] = []
            load_thread = threading.Thread(
                target=lambda: during.append(ingest_latency(port, CLEANUP_TIMEOUT_SECONDS, done))
            )
            load_thread.start()
            time.sleep(1)  # the ingest is under way before the job starts
            deadline = time.monotonic() + CLEANUP_TIMEOUT_SECONDS
            status, job_seconds, started_at = "todo", None, None
            while time.monotonic() < deadline and status in ("todo", "doing"):
                time.sleep(0.2)
                status, job_seconds, started_at = conn.execute(JOB_SQL, (job_id,)).fetchone()
            time.sleep(1)
            done.set()
            load_thread.join()
            watcher.join()
            left = conn.execute(EXPIRED_SQL, (DEFAULTS.retention_days,)).fetchone()[0]
            days_left = conn.execute("SELECT count(*) FROM tally_page_view_partitions").fetchone()[0]
    if status != "succeeded" or left or not gone_at:
        raise RuntimeError(f"cleanup job {job_id} ended {status} with {left:,} expired views left")
    gone_seconds = (gone_at[0] - started_at).total_seconds()
    busy_p99, busy_max, busy_requests = during[0]
    gone_rate, delete_rate = expired / gone_seconds, deleted / delete_seconds
    rate_ratio, p99_ratio = gone_rate / delete_rate, busy_p99 / idle_p99
    result.rows += [
        Row(
            f"cleanup of {expired / 1e6:g}M expired views of {(LIVE + EXPIRED) / 1e6:g}M: rows/s until gone",
            f"{gone_rate:,.0f} rows/s ({gone_seconds:.2f} s, whole days detached)",
            f"one DELETE {delete_rate:,.0f} rows/s ({delete_seconds:.2f} s)",
            times(rate_ratio, GOAL_RATE),
            f">= {GOAL_RATE:g}x one DELETE",
            rate_ratio >= GOAL_RATE,
        ),
        Row(
            "the same, until their space is back (files removed / VACUUM)",
            f"{job_seconds:.2f} s (the whole job, days dropped)",
            f"one DELETE committed and VACUUM {vacuum_seconds:.2f} s",
            times(vacuum_seconds / job_seconds),
        ),
        Row(
            f"ingest p99 during cleanup ({INGEST_RATE} views/s steady)",
            f"{ms(busy_p99)} (max {ms(busy_max)})",
            f"no cleanup {ms(idle_p99)} (max {ms(idle_max)})",
            times(p99_ratio, GOAL_P99),
            f"<= {GOAL_P99:g}x no cleanup",
            p99_ratio <= GOAL_P99,
        ),
    ]
    result.notes.append(
        f"{LIVE:,} live and {EXPIRED:,} expired views loaded in time order into the daily partitions a"
        " site running for 60 days has (migrations/0019), and rolled up. The one DELETE is the job's"
        " condition in one statement, timed inside a transaction that is rolled back (its rows are gone"
        " when it commits, their space reusable after a VACUUM, timed apart on a copy of the database)."
        " The job runs in `python worker.py`; its views are gone when no expired day is a partition of"
        " page_views any more (watched in the catalog every 5 ms, from its 'started' event, its opening"
        " rollup included), their space back at its 'succeeded' event; it drops each day wholly past"
        f" RETENTION_DAYS ({days_left} partitions left, the default one and the days ahead included)."
        f" Ingest: {INGEST_RATE} single-view POSTs/s over {INGEST_CONNECTIONS} connections to"
        f" `python web.py`, {IDLE_SECONDS} s with no cleanup, then for as long as the job runs"
        f" ({busy_requests:,} requests)."
    )
    return result


if __name__ == "__main__":
    run_alone(measure, builds())
