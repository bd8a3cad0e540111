"""The jobs page with a million finished jobs, and pausing and resuming a queue.

Jobs page: 1,000,000 finished jobs (99% succeeded, 1% failed, over 8 tasks and 4 queues)
and their events (deferred, started, finished: 3,000,000 rows) loaded with SQL; a live
`python web.py` answers GET /jobs (newest first, one filter or none, and a deep page
found by keyset `?before=`) and GET /api/jobs (the queue summary the dashboard shows too)
one request at a time on one connection. The baseline is the same pages in the same run
once Tally's indexes (migrations/0011_jobs_page.sql, 0045's of failed events) are
dropped, and for the deep page the OFFSET query a keyset page replaces.

Pause and resume: one `python worker.py` (POLL_INTERVAL_SECONDS left at its default).
Pause: jobs are deferred to a queue every 5 ms while it is paused through the API; the
figure is the last job of that queue to start after the pause's commit (PostgreSQL's
clock on both sides). Resume: a job waits in the paused queue; the figure is the
resume request (PostgreSQL's clock read just before) to the job's 'started' event. The
baseline resumes by deleting the row in SQL (no NOTIFY): the worker finds the job at
its next poll.

$ python -m bench.jobs_page
"""

from __future__ import annotations

import http.client
import threading
import time

import psycopg

from bench.harness import (
    OWNER_TOKEN,
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

JOBS = 1_000_000
REQUESTS = 40
BASELINE_REQUESTS = 5  # a second or more each
GOAL_P50_SECONDS = 0.050
GOAL_PAUSE_SECONDS = 1.0
GOAL_RESUME_SECONDS = 1.0
RESUME_ROUNDS = 10
POLL_ROUNDS = 3
LOAD_SQL = """
INSERT INTO procrastinate_jobs (queue_name, task_name, status, args, attempts, worker_id)
SELECT 'queue_' || (n %% 4), 'task_' || (n %% 8),
       CASE WHEN n %% 100 = 0 THEN 'failed' ELSE 'succeeded' END::procrastinate_job_status,
       jsonb_build_object('n', n), 1, NULL
  FROM generate_series(1, %(jobs)s) n;
INSERT INTO procrastinate_events (job_id, type, at)
SELECT id, kind.type::procrastinate_job_event_type,
       now() - (%(jobs)s - id) * interval '1 s' + kind.offset_ms * interval '1 ms'
  FROM procrastinate_jobs,
       (VALUES ('deferred', 0), ('started', 5), ('succeeded', 50)) AS kind(type, offset_ms);
INSERT INTO tally_job_errors (job_id, attempt, error, traceback)
SELECT id, 1, 'RuntimeError: boom', 'Traceback (most recent call last):'
  FROM procrastinate_jobs WHERE status = 'failed';
VACUUM ANALYZE procrastinate_jobs;
VACUUM ANALYZE procrastinate_events;
"""
INDEXES = (
    "tally_jobs_status_id_idx",
    "tally_jobs_task_id_idx",
    "tally_jobs_queue_id_idx",
    "tally_events_failed_at_idx",  # migrations/0045: the queue summary's recent failures
)
DEFER_SQL = (
    "SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[ROW(%s, 'retry_stalled_jobs', 0, NULL, NULL,"
    " '{}'::jsonb, NULL)::procrastinate_job_to_defer_v1]))"
)
STARTED_SQL = "SELECT at FROM procrastinate_events WHERE job_id = %s AND type = 'started'"


def pages(deep_before: int) -> dict[str, str]:
    return {
        "newest jobs": "/jobs",
        "failed jobs": "/jobs?status=failed",
        "one task": "/jobs?task=task_3",
        "one queue, failed": "/jobs?queue=queue_2&status=failed",
        "page 10,000 (keyset)": f"/jobs?before={deep_before}",
        # The queue summary the dashboard shows too: counts, the oldest waiting job, the last
        # 50 failures (10,000 failed jobs here).
        "queue summary": "/api/jobs",
    }


def page_times(port: int, paths: dict[str, str], requests: int = REQUESTS) -> dict[str, float]:
    timings = {}
    for name, path in paths.items():
        time_http_get(port, path, 2)  # warm the connection's plans and the cache
        timings[name] = percentile(time_http_get(port, path, requests), 0.5)
    return timings


def offset_seconds(url: str, offset: int) -> float:
    """The OFFSET query that a keyset page replaces, timed in SQL (median of 5)."""
    with psycopg.connect(url) as conn:
        samples = []
        for _ in range(6):
            started = time.perf_counter()
            conn.execute(
                "SELECT id FROM procrastinate_jobs ORDER BY id DESC LIMIT 51 OFFSET %s", (offset,)
            ).fetchall()
            samples.append(time.perf_counter() - started)
    return percentile(samples[1:], 0.5)


def post(port: int, path: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", path, headers={"Authorization": f"Bearer {OWNER_TOKEN}"})
    response = conn.getresponse()
    response.read()
    conn.close()
    if response.status >= 300:
        raise RuntimeError(f"POST {path} answered {response.status}")


def wait_started(conn: psycopg.Connection, job_id: int, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute(STARTED_SQL, (job_id,)).fetchone()
        if row:
            return row[0]
        time.sleep(0.005)
    raise RuntimeError(f"job {job_id} did not start in {timeout} s")


def last_start_after_pause(conn: psycopg.Connection, url: str, port: int) -> float:
    """Defer to queue 'stream' every 5 ms, pause it; seconds from the pause's commit to the
    last start of one of its jobs (negative: none started after the pause)."""
    stop = threading.Event()

    def stream() -> None:
        with psycopg.connect(url, autocommit=True) as deferrer:
            while not stop.is_set():
                deferrer.execute(DEFER_SQL, ("stream",))
                time.sleep(0.005)

    thread = threading.Thread(target=stream)
    thread.start()
    time.sleep(1.0)
    post(port, "/api/queues/stream/pause")
    time.sleep(2.0)  # deferring goes on; the worker must start none of these
    stop.set()
    thread.join()
    (paused_at,) = conn.execute(
        "SELECT paused_at FROM tally_paused_queues WHERE queue_name = 'stream'"
    ).fetchone()
    (last,) = conn.execute(
        "SELECT max(event.at) FROM procrastinate_events event"
        " JOIN procrastinate_jobs job ON job.id = event.job_id"
        " WHERE job.queue_name = 'stream' AND event.type = 'started'"
    ).fetchone()
    waiting = conn.execute(
        "SELECT count(*) FROM procrastinate_jobs WHERE queue_name = 'stream' AND status = 'todo'"
    ).fetchone()[0]
    if not waiting:
        raise RuntimeError("no job waited in the paused queue")
    post(port, "/api/queues/stream/resume")
    deadline = time.monotonic() + 120
    while conn.execute(
        "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
    ).fetchone()[0]:
        if time.monotonic() > deadline:
            raise RuntimeError("the resumed stream did not drain in 120 s")
        time.sleep(0.1)
    return (last - paused_at).total_seconds()


def resume_latency(conn: psycopg.Connection, port: int | None) -> float:
    """Seconds from a resume (through the API, or with `port` None a DELETE) to the held job's start."""
    conn.execute("INSERT INTO tally_paused_queues (queue_name) VALUES ('held')")
    (job_id,) = conn.execute(DEFER_SQL, ("held",)).fetchone()
    time.sleep(0.2)
    (before,) = conn.execute("SELECT clock_timestamp()").fetchone()
    if port is None:
        conn.execute("DELETE FROM tally_paused_queues WHERE queue_name = 'held'")
    else:
        post(port, "/api/queues/held/resume")
    return (wait_started(conn, job_id, 30) - before).total_seconds()


def measure(build: Build) -> Result:
    result = Result("Jobs page and paused queues")
    with throwaway_database(build) as url, psycopg.connect(url, autocommit=True) as conn:
        say(f"jobs_page: loading {JOBS:,} finished jobs and their events")
        began = time.monotonic()
        for statement in LOAD_SQL.split(";\n"):
            if statement.strip():
                conn.execute(statement, {"jobs": JOBS})
        say(f"jobs_page: loaded in {time.monotonic() - began:.0f} s")
        (deep_before,) = conn.execute(
            "SELECT id FROM procrastinate_jobs ORDER BY id DESC LIMIT 1 OFFSET 500000"
        ).fetchone()
        paths = pages(deep_before)
        port = free_port()
        with process(["web.py"], {"DATABASE_URL": url, "PORT": str(port)}, ready="Serving on"):
            with_indexes = page_times(port, paths)
            for index in INDEXES:
                conn.execute(f"DROP INDEX {index}")
            without = page_times(port, paths, BASELINE_REQUESTS)
        keyset_sql = offset_seconds(url, 0), offset_seconds(url, 500_000)
        for name, tally in with_indexes.items():
            # The summary counts every job by task and status (its goal is the page's only).
            page = paths[name].startswith("/jobs")
            result.rows.append(
                Row(
                    f"GET {paths[name].split('?')[0]} p50, {name}, {JOBS // 1_000_000}M finished jobs",
                    ms(tally),
                    f"no indexes {ms(without[name])}",
                    f"{times(without[name] / tally)} faster",
                    f"<= {GOAL_P50_SECONDS * 1000:.0f} ms" if page else "-",
                    tally <= GOAL_P50_SECONDS if page else None,
                )
            )
        result.rows.append(
            Row(
                "deep page by OFFSET 500,000 (SQL, the baseline of keyset)",
                ms(keyset_sql[1]),
                f"OFFSET 0 {ms(keyset_sql[0])}",
            )
        )

        port = free_port()
        web_env = {"DATABASE_URL": url, "PORT": str(port)}
        with (
            process(["web.py"], web_env, ready="Serving on"),
            process(["worker.py"], {"DATABASE_URL": url}, ready="PROCESS STARTED"),
        ):
            time.sleep(1)
            say("jobs_page: pause while jobs stream in")
            after_pause = last_start_after_pause(conn, url, port)
            say(f"jobs_page: resume x{RESUME_ROUNDS} through the API, x{POLL_ROUNDS} by DELETE (poll)")
            notify = [resume_latency(conn, port) for _ in range(RESUME_ROUNDS)]
            polled = [resume_latency(conn, None) for _ in range(POLL_ROUNDS)]
    result.rows.append(
        Row(
            "pause: last start of the queue's jobs after the pause commits",
            f"{after_pause * 1000:+.0f} ms",
            "-",
            "-",
            f"<= {GOAL_PAUSE_SECONDS * 1000:.0f} ms",
            after_pause <= GOAL_PAUSE_SECONDS,
        )
    )
    tally, baseline = percentile(notify, 0.5), percentile(polled, 0.5)
    result.rows.append(
        Row(
            "resume -> the held job starts, p50",
            ms(tally),
            f"DELETE, next poll {ms(baseline)}",
            f"{times(baseline / tally)} sooner",
            f"<= {GOAL_RESUME_SECONDS * 1000:.0f} ms",
            max(notify) <= GOAL_RESUME_SECONDS,
        )
    )
    result.notes.append(
        f"GET /jobs: {REQUESTS} requests per page ({BASELINE_REQUESTS} without the indexes), one at a"
        " time on one keep-alive connection, after 2 to warm up; 50 jobs a page. The page also lists"
        " every task and queue name (a loose index scan: one probe per name). Resume: worst of"
        f" {RESUME_ROUNDS} rounds {ms(max(notify))}; a negative pause figure means no job of the queue"
        " started after the pause committed."
    )
    return result


if __name__ == "__main__":
    run_alone(measure, builds())
