"""Cancel racing the worker: the answer says what the cancel did, not what a read before it saw.

An audit deferred jobs and cancelled each at once through the API: of 150, one was answered
200 "cancelled" and then ran and succeeded, another "cancelled" and ended aborted. The cancel
read the job as waiting, a worker started it, and the cancel (with abort) then asked the
running job to abort, while the answer still said "cancelled".
"""

from __future__ import annotations

import psycopg
import pytest

from tally.web import queue_state
from tests.conftest import defer_by_sql
from tests.test_jobs_page import OWNER, client, status_of  # noqa: F401 (client is a fixture)


def started_job(conn: psycopg.Connection) -> int:
    """A job a worker has just started (a worker of its own, as a real one fetches)."""
    defer_by_sql(conn, "retry_stalled_jobs")
    worker_id = conn.execute("SELECT worker_id FROM procrastinate_register_worker_v1()").fetchone()[0]
    (job_id,) = conn.execute("SELECT id FROM procrastinate_fetch_job_v2(NULL, %s)", (worker_id,)).fetchone()
    return job_id


@pytest.fixture
def read_as_waiting_first(monkeypatch):
    """The cancel's first read of the job says `todo`: the worker starts it just after."""
    real = queue_state.job_detail
    calls = []

    def stale_then_real(conn: psycopg.Connection, job_id: int):
        job = real(conn, job_id)
        calls.append(job_id)
        if len(calls) == 1 and job is not None:
            job = {**job, "status": "todo"}
        return job

    monkeypatch.setattr(queue_state, "job_detail", stale_then_real)
    return calls


def test_a_job_started_between_the_read_and_the_cancel_is_asked_to_abort_not_called_cancelled(
    client,  # noqa: F811
    conn,
    read_as_waiting_first,
):
    job_id = started_job(conn)
    answer = client.post(f"/api/jobs/{job_id}/cancel", headers=OWNER, status=202).json
    assert read_as_waiting_first, "the cancel reads the job first"
    assert answer == {"job_id": job_id, "status": "doing", "abort_requested": True}
    assert status_of(conn, job_id) == "doing"
    (asked,) = conn.execute(
        "SELECT abort_requested FROM procrastinate_jobs WHERE id = %s", (job_id,)
    ).fetchone()
    assert asked


def test_a_waiting_job_is_cancelled_without_an_abort_request(client, conn):  # noqa: F811
    defer_by_sql(conn, "retry_stalled_jobs")
    (job_id,) = conn.execute("SELECT max(id) FROM procrastinate_jobs").fetchone()
    answer = client.post(f"/api/jobs/{job_id}/cancel", headers=OWNER, status=200).json
    assert answer == {"job_id": job_id, "status": "cancelled"}
    assert status_of(conn, job_id) == "cancelled"
    client.post(f"/api/jobs/{job_id}/cancel", headers=OWNER, status=409)


def test_a_job_that_ended_between_the_read_and_the_cancel_is_a_409(client, conn, read_as_waiting_first):  # noqa: F811
    job_id = started_job(conn)
    conn.execute("SELECT procrastinate_finish_job_v1(%s, 'succeeded', false)", (job_id,))
    error = client.post(f"/api/jobs/{job_id}/cancel", headers=OWNER, status=409).json["error"]
    assert "succeeded" in error
    assert status_of(conn, job_id) == "succeeded"


def test_cancels_at_once_do_not_wait_on_each_other_for_the_pools_connections(client, conn, pool):  # noqa: F811
    """The web defers and cancels through jobs.app on its own pool: a cancel took a second
    connection while it held one, so as many cancels at once as the pool has connections
    waited on each other until the pool gave up (an audit's ten at once: two answered 503).
    Here the other connections are taken, as by three cancels in flight."""
    defer_by_sql(conn, "retry_stalled_jobs")
    (job_id,) = conn.execute("SELECT max(id) FROM procrastinate_jobs").fetchone()
    pool.wait()
    held = [pool.getconn() for _ in range(pool.max_size - 1)]
    try:
        answer = client.post(f"/api/jobs/{job_id}/cancel", headers=OWNER, status=200).json
    finally:
        for connection in held:
            pool.putconn(connection)
    assert answer["status"] == "cancelled"
    assert status_of(conn, job_id) == "cancelled"
