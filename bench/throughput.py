"""Jobs per second for short jobs, one worker process: Tally's worker against procrastinate's stock one.

The queue is filled with JOBS short jobs (retry_stalled_jobs: two small queries) by SQL,
then one worker runs for RUN_SECONDS: `python worker.py` with Tally's settings, and
`procrastinate --app=bench.stock_app.app worker`, procrastinate's defaults on the same
tasks (see bench/stock_app.py). The rate is read from the jobs' 'succeeded' events, over
the middle of the run (start-up and shutdown left out).

$ python -m bench.throughput
"""

from __future__ import annotations

import time

import psycopg

from bench.harness import (
    Build,
    builds,
    busy_since,
    cpu_seconds,
    machine_ticks,
    process,
    say,
    throwaway_database,
)
from bench.report import Result, Row, run_alone, times
from tally.config import DEFAULT_WORKER_CONCURRENCY

TASK = "retry_stalled_jobs"
JOBS = 20_000  # more than either worker runs in RUN_SECONDS: the queue never runs dry
RUN_SECONDS = 12
# The rate counts the jobs that finished between these fractions of all that finished.
STEADY = (0.1, 0.9)
FILL_SQL = (
    "INSERT INTO procrastinate_jobs (queue_name, task_name, args)"
    " SELECT 'default', %s, '{}' FROM generate_series(1, %s)"
)
FINISHED_SQL = (
    "SELECT extract(epoch FROM at)::float8 FROM procrastinate_events"
    " WHERE type = 'succeeded' AND job_id > %s ORDER BY at"
)
STOCK_WORKER = ["-m", "procrastinate", "--app=bench.stock_app.app", "worker"]
GOAL = 1.5


def jobs_per_second(
    url: str, command: list[str], ready: str, env: dict[str, str] | None = None
) -> tuple[float, float, float]:
    """Fill the queue, run one worker for RUN_SECONDS; its steady jobs/s, CPU share, machine busy."""
    with psycopg.connect(url, autocommit=True) as conn:
        # A fresh queue for each worker, vacuumed: neither inherits the other's dead rows.
        conn.execute(
            "TRUNCATE procrastinate_jobs, procrastinate_events, procrastinate_periodic_defers CASCADE"
        )
        last_id = conn.execute("SELECT coalesce(max(id), 0) FROM procrastinate_jobs").fetchone()[0]
        conn.execute(FILL_SQL, (TASK, JOBS))
        conn.execute("VACUUM ANALYZE procrastinate_jobs, procrastinate_events")
        with process(command, {"DATABASE_URL": url, **(env or {})}, ready=ready) as worker:
            time.sleep(1)  # start-up
            cpu_before, ticks_before = cpu_seconds(worker.pid), machine_ticks()
            time.sleep(RUN_SECONDS - 2)
            cpu = (cpu_seconds(worker.pid) - cpu_before) / (RUN_SECONDS - 2)
            busy = busy_since(ticks_before)
            time.sleep(1)
        finished = [row[0] for row in conn.execute(FINISHED_SQL, (last_id,))]
    if len(finished) >= JOBS:
        raise RuntimeError("the queue ran dry: raise JOBS")
    low, high = (int(fraction * (len(finished) - 1)) for fraction in STEADY)
    return (high - low) / (finished[high] - finished[low]), cpu, busy


def measure(build: Build) -> Result:
    result = Result("Job throughput")
    with throwaway_database(build) as url:
        say(f"throughput: procrastinate's stock worker, {RUN_SECONDS} s")
        stock, stock_cpu, stock_busy = jobs_per_second(url, STOCK_WORKER, ready="Launching a worker")
        say(f"throughput: python worker.py (concurrency {DEFAULT_WORKER_CONCURRENCY}), {RUN_SECONDS} s")
        tally, tally_cpu, tally_busy = jobs_per_second(url, ["worker.py"], ready="PROCESS STARTED")
        say("throughput: python worker.py at WORKER_CONCURRENCY=1")
        single, _, _ = jobs_per_second(
            url, ["worker.py"], ready="PROCESS STARTED", env={"WORKER_CONCURRENCY": "1"}
        )
    ratio = tally / stock
    result.rows += [
        Row(
            "jobs/s, short jobs, one worker process",
            f"{tally:,.0f} jobs/s",
            f"stock worker {stock:,.0f} jobs/s",
            times(ratio, GOAL),
            f">= {GOAL}x",
            ratio >= GOAL,
        ),
        Row(
            "  the same at WORKER_CONCURRENCY=1 (not the default)",
            f"{single:,.0f} jobs/s",
            "-",
            times(single / stock),
        ),
    ]
    result.notes += [
        f"{JOBS:,} {TASK} jobs queued by SQL before each worker starts; each worker runs {RUN_SECONDS} s;"
        f" jobs/s = the jobs that finished between the {STEADY[0]:.0%} and {STEADY[1]:.0%} marks over that"
        " time, from their 'succeeded' events. Stock: `procrastinate --app=bench.stock_app.app worker`,"
        " no options (concurrency 1, procrastinate's default connector pool).",
        f"Worker CPU: Tally's {tally_cpu:.0%} of a core ({tally_cpu / tally * 1000:.2f} ms a job), stock"
        f" {stock_cpu:.0%} ({stock_cpu / stock * 1000:.2f} ms a job); machine busy {tally_busy:.0%} and"
        f" {stock_busy:.0%}.",
    ]
    if ratio < GOAL:
        result.notes.append(
            "What bounds it: a worker fetches one job per round trip, and each fetch and each finish is"
            " a commit that waits for the WAL flush; concurrency overlaps the jobs' own queries with the"
            " next fetch, not the fetches with each other. With the worker near a full core, the"
            " Python per job (fetch, log lines, finish) is the next bound. What would lift it: fewer"
            " log lines per job, or more worker processes (each adds its own fetch loop)."
        )
    return result


if __name__ == "__main__":
    run_alone(measure, builds())
