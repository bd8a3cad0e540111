"""jobs/liveness.py on the test database: when a free session lock means a dead worker, and what
a worker taken for dead meets when it comes back. (The processes: tests/test_nothing_hangs.py.)"""

from __future__ import annotations

import asyncio
import json

import psycopg
import pytest

from jobs.liveness import LOST_SESSION_GRACE_SECONDS, TakenForDead, WorkerSession
from tally.config import from_env
from tally.db import QUERIES
from tests.conftest import wait_until
from tests.test_jobs import fetch_job_for_worker, register_worker
from tests.test_queue_pause import defer_to


def lost_jobs(conn: psycopg.Connection) -> list[int]:
    conn.execute(QUERIES["note_lost_sessions"])
    rows = conn.execute(QUERIES["jobs_of_lost_sessions"], {"grace": LOST_SESSION_GRACE_SECONDS})
    return [row[0] for row in rows]


def holder(conn: psycopg.Connection, worker_id: int) -> int | None:
    row = conn.execute("SELECT pid FROM tally_worker_locks WHERE worker_id = %s", (worker_id,)).fetchone()
    return row[0] if row else None


def end_session(conn: psycopg.Connection, worker_id: int) -> None:
    """End the session holding the worker's lock, as a restart or a lost network does."""
    conn.execute("SELECT pg_terminate_backend(%s)", (holder(conn, worker_id),))
    wait_until(lambda: holder(conn, worker_id) is None, 10, 0.01, "the session's end")


def test_a_free_lock_means_a_dead_worker_only_once_free_for_the_grace(conn, database_url):
    settings = from_env({"DATABASE_URL": database_url}, process_type="worker")
    worker_id = register_worker(conn, "0 seconds")
    job_id = defer_to(conn, "default")
    assert fetch_job_for_worker(conn, worker_id) == job_id

    async def scenario() -> None:
        session = await WorkerSession.hold(settings, worker_id)
        assert lost_jobs(conn) == []
        end_session(conn, worker_id)
        assert lost_jobs(conn) == []  # free, but for less than the grace: noted, not lost
        (noted,) = conn.execute("SELECT lost_since FROM tally_worker_sessions").fetchone()
        assert noted is not None
        await session.keep()  # the worker, alive, takes its lock again on a new session
        assert conn.execute("SELECT lost_since FROM tally_worker_sessions").fetchone()[0] is None
        assert lost_jobs(conn) == []
        end_session(conn, worker_id)
        lost_jobs(conn)
        conn.execute("UPDATE tally_worker_sessions SET lost_since = now() - interval '1 minute'")
        assert lost_jobs(conn) == [job_id]  # free past the grace: dead
        await session.release()

    asyncio.run(scenario())


def test_a_worker_taken_for_dead_cannot_take_its_lock_again(conn, database_url):
    """Its jobs were re-queued and its row forgotten: taking the lock again says so, and the
    worker stops its jobs (worker.py) instead of running them beside their new attempt."""
    settings = from_env({"DATABASE_URL": database_url}, process_type="worker")
    worker_id = register_worker(conn, "0 seconds")

    async def scenario() -> None:
        session = await WorkerSession.hold(settings, worker_id)
        end_session(conn, worker_id)
        conn.execute(QUERIES["note_lost_sessions"])
        conn.execute("UPDATE tally_worker_sessions SET lost_since = now() - interval '1 minute'")
        conn.execute(QUERIES["delete_lost_session_workers"], {"grace": LOST_SESSION_GRACE_SECONDS})
        with pytest.raises(TakenForDead, match=f"worker {worker_id} was taken for dead"):
            await session.keep()
        await session.release()

    asyncio.run(scenario())


def test_a_lost_workers_job_that_was_asked_to_abort_ends_aborted(conn, database_url):
    settings = from_env({"DATABASE_URL": database_url}, process_type="worker")
    worker_id = register_worker(conn, "0 seconds")
    job_id = defer_to(conn, "default")
    assert fetch_job_for_worker(conn, worker_id) == job_id
    conn.execute("SELECT procrastinate_cancel_job_v1(%s, true, false)", (job_id,))  # abort asked

    async def scenario() -> None:
        session = await WorkerSession.hold(settings, worker_id)
        end_session(conn, worker_id)
        conn.execute(QUERIES["note_lost_sessions"])
        conn.execute("UPDATE tally_worker_sessions SET lost_since = now() - interval '1 minute'")
        assert lost_jobs(conn) == [job_id]
        ended = conn.execute(QUERIES["retry_stalled_job"], {"job_id": job_id, "worker_id": worker_id})
        assert ended.fetchone()[:2] == (0, 1)  # not re-queued: aborted
        await session.release()

    asyncio.run(scenario())
    assert conn.execute(
        "SELECT status::text FROM procrastinate_jobs WHERE id = %s", (job_id,)
    ).fetchone() == ("aborted",)


def test_a_requeued_job_wakes_the_listening_workers(conn, database_url):
    """procrastinate's retry is an UPDATE and sends no NOTIFY: a job re-queued from a dead
    worker waited for some worker's next poll (5 s by default)."""
    worker_id = register_worker(conn, "10 minutes")
    job_id = defer_to(conn, "default")
    assert fetch_job_for_worker(conn, worker_id) == job_id
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN procrastinate_any_queue_v1")
        ended = conn.execute(QUERIES["retry_stalled_job"], {"job_id": job_id, "worker_id": worker_id})
        assert ended.fetchone()[:2] == (1, 0)
        heard = [json.loads(note.payload) for note in listener.notifies(timeout=2, stop_after=1)]
    assert heard == [{"type": "job_inserted", "job_id": job_id}]


def test_a_worker_holding_its_lock_is_alive_however_late_its_heartbeat(conn, database_url):
    """A worker frozen past STALLED_AFTER_SECONDS (SIGSTOP, a paused VM) keeps its session and
    lock: the heartbeat rule re-queued its job and pruned its row, and once resumed it ran the
    job beside the new attempt, with nothing to tell it (its session never ended)."""
    import jobs

    settings = from_env({"DATABASE_URL": database_url}, process_type="worker")
    worker_id = register_worker(conn, "10 minutes")
    job_id = defer_to(conn, "default")
    assert fetch_job_for_worker(conn, worker_id) == job_id

    async def scenario() -> None:
        session = await WorkerSession.hold(settings, worker_id)
        async with jobs.app.open_async():
            manager = jobs.app.job_manager
            assert [job.id for job in await manager.get_stalled_jobs(seconds_since_heartbeat=60)] == []
            assert await manager.prune_stalled_workers(60) == []
            await session.release()  # a free lock: the session sweep's to judge, after its grace
            wait_until(lambda: holder(conn, worker_id) is None, 10, 0.01, "the session's end")
            assert [job.id for job in await manager.get_stalled_jobs(seconds_since_heartbeat=60)] == []
            assert await manager.prune_stalled_workers(60) == []
            # A worker without a session lock (the procrastinate CLI) is judged by its heartbeat.
            conn.execute("DELETE FROM tally_worker_sessions WHERE worker_id = %s", (worker_id,))
            assert [job.id for job in await manager.get_stalled_jobs(seconds_since_heartbeat=60)] == [job_id]
            assert await manager.prune_stalled_workers(60) == [worker_id]

    asyncio.run(scenario())


def test_a_running_job_whose_worker_is_gone_is_lost(conn):
    """A database restart: the worker's write of its job's outcome failed on a dead connection, it
    stopped and procrastinate unregistered it (the job's worker_id set to NULL). The job waited,
    `doing`, for the heartbeat rule at the clock's next minute."""
    worker_id = register_worker(conn, "0 seconds")
    job_id = defer_to(conn, "default")
    assert fetch_job_for_worker(conn, worker_id) == job_id
    conn.execute("SELECT procrastinate_unregister_worker_v1(%s)", (worker_id,))
    assert lost_jobs(conn) == [job_id]
    ended = conn.execute(QUERIES["retry_stalled_job"], {"job_id": job_id, "worker_id": None})
    assert ended.fetchone()[:2] == (1, 0)


def test_a_silent_worker_holding_its_lock_has_its_session_ended(conn, database_url):
    """Spared by the heartbeat rule, a frozen worker is not left holding its job for ever:
    retry_stalled_jobs ends its session, and the sweep judges it by its free lock."""
    settings = from_env({"DATABASE_URL": database_url}, process_type="worker")
    silent = register_worker(conn, "10 minutes")
    live = register_worker(conn, "0 seconds")

    async def scenario() -> None:
        sessions = [await WorkerSession.hold(settings, worker_id) for worker_id in (silent, live)]
        ended = conn.execute(QUERIES["end_sessions_of_silent_workers"], {"seconds": 60}).fetchone()
        assert ended == (1,)
        wait_until(lambda: holder(conn, silent) is None, 10, 0.01, "the silent worker's session's end")
        assert holder(conn, live) is not None
        for session in sessions:
            await session.release()

    asyncio.run(scenario())


def test_health_counts_a_worker_whose_lock_is_free_as_dead_at_once(conn, database_url):
    """/api/health and /metrics counted a killed worker alive until its heartbeat passed
    STALLED_AFTER_SECONDS (60 s), and after a database restart the old row beside the new one;
    the session sweep knows it dead as soon as its lock is free. A worker without a session
    lock (behind PgBouncer) is judged by its heartbeat alone, as before."""
    from tally.web.queue_state import process_state

    settings = from_env({"DATABASE_URL": database_url}, process_type="worker")
    locked = register_worker(conn, "1 second")
    register_worker(conn, "2 seconds")  # no session lock

    async def scenario() -> None:
        session = await WorkerSession.hold(settings, locked)
        state = process_state(conn, 60)
        assert state["workers_alive"] == 2 and state["worker_heartbeat_age_seconds"] < 2
        end_session(conn, locked)
        state = process_state(conn, 60)
        assert state["workers_alive"] == 1 and state["worker_heartbeat_age_seconds"] >= 2
        await session.release()

    asyncio.run(scenario())
