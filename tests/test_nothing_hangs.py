"""Nothing hangs: a killed worker's job runs again within seconds, a locked table costs a
job a bounded wait and a retry, and no job attempt outlives JOB_TIMEOUT_SECONDS.
Real entry files as subprocesses, real database (the network side: test_partitions.py).
"""

from __future__ import annotations

import signal
import time

import psycopg
import pytest

from tests.conftest import defer_by_sql, statuses, wait_until

pytestmark = pytest.mark.slow


def expired_views(conn: psycopg.Connection, count: int) -> None:
    conn.execute(
        "INSERT INTO page_views (path, viewed_at)"
        " SELECT '/old/' || (n %% 50), now() - interval '90 days' FROM generate_series(1, %s) n",
        (count,),
    )
    conn.execute("SELECT tally_rollup_page_views()")


def started_events(conn: psycopg.Connection, task: str) -> int:
    return conn.execute(
        "SELECT count(*) FROM procrastinate_events event JOIN procrastinate_jobs job ON job.id = event.job_id"
        " WHERE job.task_name = %s AND event.type = 'started'",
        (task,),
    ).fetchone()[0]


def test_a_sigkilled_workers_job_runs_again_on_another_within_15_s(start_process, conn):
    """Default heartbeat settings (60 s of silence): only the session lock explains 15 s."""
    expired_views(conn, 300_000)
    victim = start_process(["worker.py"], {"CLEANUP_BATCH_SIZE": "200", "DYNO": "worker.1"})
    victim.wait_for_line("Starting worker")
    defer_by_sql(conn, "cleanup_old_page_views", lock="cleanup_old_page_views")
    victim.wait_for_line("Starting job cleanup_old_page_views")
    rescuer = start_process(["worker.py"], {"DYNO": "worker.2"})
    rescuer.wait_for_line("holds its session lock")
    time.sleep(0.5)
    victim.signal(signal.SIGKILL)
    killed = time.monotonic()
    victim.wait(10)

    rescued_at = rescuer.wait_for_line("Starting job cleanup_old_page_views", timeout=30)
    print(f"SIGKILL: the job ran again on another worker {rescued_at - killed:.1f} s later")
    assert rescued_at - killed < 15
    wait_until(lambda: statuses(conn, "cleanup_old_page_views") == ["succeeded"], 120, 0.2, "the cleanup")
    assert started_events(conn, "cleanup_old_page_views") == 2  # the killed attempt and one more
    assert "session ended" in rescuer.output()
    assert conn.execute("SELECT count(*) FROM page_views").fetchone()[0] == 0


def test_a_draining_workers_job_is_not_run_again(start_process, conn):
    """A worker that drains has stopped heart-beating but holds its session: it is alive."""
    expired_views(conn, 300_000)
    drainer = start_process(
        ["worker.py"], {"CLEANUP_BATCH_SIZE": "200", "WORKER_GRACEFUL_SECONDS": "8", "DYNO": "worker.1"}
    )
    drainer.wait_for_line("Starting worker")
    defer_by_sql(conn, "cleanup_old_page_views", lock="cleanup_old_page_views")
    drainer.wait_for_line("Starting job cleanup_old_page_views")
    other = start_process(["worker.py"], {"DYNO": "worker.2"})
    other.wait_for_line("holds its session lock")
    drainer.signal(signal.SIGTERM)
    time.sleep(7)  # two sweeps of the other worker while the drainer drains
    assert drainer.wait(30) == 0
    assert "session ended" not in other.output()
    assert started_events(conn, "cleanup_old_page_views") <= 2  # the drained attempt, maybe its retry
    assert "re-queued" not in other.output()
