"""Pickup latency, defer -> job start, at light load: LISTEN/NOTIFY against polling.

One `python worker.py` with Tally's settings; the bench defers one short job at a time
(retry_stalled_jobs, through procrastinate's own defer function) at random intervals,
then reads each job's deferred and started events: both stamped by PostgreSQL's clock,
so the latency needs no clock shared between processes. The baseline is the same
worker with LISTEN_NOTIFY=false, which finds jobs by polling every POLL_INTERVAL_SECONDS.

$ python -m bench.pickup
"""

from __future__ import annotations

import random
import time

import psycopg

from bench.harness import Build, builds, ms, percentile, process, say, throwaway_database
from bench.report import Result, Row, run_alone, times
from tally.config import from_env

JOBS = 200
# Light load: one job every 100 ms on average, at random so that polling is not in phase.
MEAN_GAP_SECONDS = 0.1
TASK = "retry_stalled_jobs"
DEFER_SQL = (
    "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW('default', %s, 0, NULL, NULL, '{}'::jsonb, NULL)"
    "::procrastinate_job_to_defer_v1])"
)
LATENCIES_SQL = """
SELECT extract(epoch FROM started.at - deferred.at)::float8
  FROM procrastinate_events deferred
  JOIN procrastinate_events started ON started.job_id = deferred.job_id AND started.type = 'started'
 WHERE deferred.type = 'deferred' AND deferred.job_id > %s
"""
GOAL_P50_SECONDS = 0.005
GOAL_P99_SECONDS = 0.025


def pickup_latencies(url: str, env: dict[str, str]) -> list[float]:
    """Seconds from defer to start for JOBS jobs deferred one by one to a running worker."""
    with psycopg.connect(url, autocommit=True) as conn:
        last_id = conn.execute("SELECT coalesce(max(id), 0) FROM procrastinate_jobs").fetchone()[0]
        with process(["worker.py"], {"DATABASE_URL": url, **env}, ready="PROCESS STARTED"):
            time.sleep(1)  # the worker connects, registers and listens
            rng = random.Random(7)
            for _ in range(JOBS):
                conn.execute(DEFER_SQL, (TASK,))
                time.sleep(rng.uniform(0, 2 * MEAN_GAP_SECONDS))
            poll_interval = from_env(env, process_type="worker").poll_interval_seconds
            deadline = time.monotonic() + poll_interval + 10
            while time.monotonic() < deadline:
                waiting = conn.execute(
                    "SELECT count(*) FROM procrastinate_jobs WHERE id > %s AND status IN ('todo', 'doing')",
                    (last_id,),
                ).fetchone()[0]
                if not waiting:
                    break
                time.sleep(0.2)
        latencies = [row[0] for row in conn.execute(LATENCIES_SQL, (last_id,))]
    if len(latencies) != JOBS:
        raise RuntimeError(f"only {len(latencies)} of {JOBS} jobs started")
    return latencies


def measure(build: Build) -> Result:
    result = Result("Pickup latency")
    with throwaway_database(build) as url:
        say(f"pickup: {JOBS} jobs, LISTEN/NOTIFY (Tally's default)")
        notify = pickup_latencies(url, {})
        say(f"pickup: {JOBS} jobs, LISTEN_NOTIFY=false (polling)")
        polling = pickup_latencies(url, {"LISTEN_NOTIFY": "false"})
    for name, fraction, goal in (("p50", 0.5, GOAL_P50_SECONDS), ("p99", 0.99, GOAL_P99_SECONDS)):
        tally, baseline = percentile(notify, fraction), percentile(polling, fraction)
        result.rows.append(
            Row(
                f"pickup latency {name}, defer -> job start, light load",
                ms(tally),
                f"polling {ms(baseline)}",
                f"{times(baseline / tally)} sooner",
                f"<= {goal * 1000:.0f} ms",
                tally <= goal,
            )
        )
    result.notes.append(
        f"{JOBS} {TASK} jobs deferred one at a time, {MEAN_GAP_SECONDS * 1000:.0f} ms apart on average,"
        " to one idle `python worker.py`; latency = the job's 'started' event minus its 'deferred' event"
        f" (PostgreSQL's clock). Polling: the same worker with LISTEN_NOTIFY=false and the default"
        f" POLL_INTERVAL_SECONDS ({from_env({}, process_type='worker').poll_interval_seconds:g} s)."
    )
    return result


if __name__ == "__main__":
    run_alone(measure, builds())
