"""tally/queue_connector.py under a real procrastinate worker on the test database: the
wake-ups procrastinate's own worker would lose."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import procrastinate
import psycopg
from procrastinate import PsycopgConnector
from procrastinate.worker import Worker

from tally import db, queue_connector
from tally.config import from_env
from tests.test_queue_pause import defer_to, status

POLL_SECONDS = 120  # far longer than any wait here: only a wake-up can start a job in time


def slow_polling_worker(app: procrastinate.App, concurrency: int) -> Worker:
    """procrastinate's worker on `app`, polling every POLL_SECONDS: woken by NOTIFY or nothing."""
    return Worker(
        app=app,
        concurrency=concurrency,
        fetch_job_polling_interval=POLL_SECONDS,
        abort_job_polling_interval=POLL_SECONDS,
        install_signal_handlers=False,
    )


@contextlib.asynccontextmanager
async def running(app: procrastinate.App, worker: Worker) -> AsyncIterator[None]:
    """`worker` running on the open `app`, stopped (within 10 s) at the end."""
    async with app.open_async():
        task = asyncio.create_task(worker.run())
        try:
            yield
        finally:
            worker.stop()
            await asyncio.wait_for(task, 10)


async def wait_for(predicate, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {message}"
        await asyncio.sleep(0.01)


def test_a_job_heard_while_a_fetch_was_in_flight_runs_at_once(database_url, conn, monkeypatch):
    """A job that commits after a fetch has taken its snapshot, and whose NOTIFY arrives
    before that fetch comes back empty, runs at once, not at the next poll (120 s here)."""
    settings = from_env({"DATABASE_URL": database_url, "DYNO": "worker.race"}, process_type="worker")
    app = procrastinate.App(connector=queue_connector.procrastinate_connector(settings))

    @app.task(name="tests.noop", queue="default")
    def noop() -> None:
        """Nothing: the test watches when it runs."""

    worker = slow_polling_worker(app, concurrency=1)
    fetch = PsycopgConnector.execute_query_one_async
    seen: dict = {"a job": False, "late job": None}

    async def fetch_and_hold(self, query, **arguments):
        """procrastinate's fetch; the first empty one after a job holds its answer until a
        job deferred meanwhile has been heard (the race, held open)."""
        row = await fetch(self, query, **arguments)
        if query != db.QUERIES["fetch_job"]:
            return row
        if row["id"] is not None:
            seen["a job"] = True
        elif seen["a job"] and seen["late job"] is None:
            with psycopg.connect(database_url, autocommit=True) as other:
                seen["late job"] = defer_to(other, "default", "tests.noop")  # commits, NOTIFYs
            await wait_for(worker._new_job_event.is_set, 10, "the worker to hear the late job")
        return row

    monkeypatch.setattr(PsycopgConnector, "execute_query_one_async", fetch_and_hold)

    def listening() -> bool:
        return bool(
            conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = 'worker.race'"
                " AND query LIKE 'LISTEN%%'"
            ).fetchall()
        )

    async def scenario() -> float:
        async with running(app, worker):
            await wait_for(listening, 10, "the worker to LISTEN")
            first = defer_to(conn, "default", "tests.noop")
            await wait_for(lambda: status(conn, first) == "succeeded", 10, "the first job")
            await wait_for(lambda: seen["late job"] is not None, 10, "an empty fetch after it")
            heard_at = time.monotonic()
            await wait_for(lambda: status(conn, seen["late job"]) == "succeeded", 5, "the late job")
            return time.monotonic() - heard_at

    ran_in = asyncio.run(scenario())
    print(f"a job heard during an empty fetch ran {ran_in * 1000:.0f} ms after it (polling every 120 s)")
    assert ran_in < 5


def test_a_job_deferred_before_listen_during_the_first_fetch_runs_at_once(database_url, conn, monkeypatch):
    """A worker's first fetch and its LISTEN start together: a job committed after that fetch's
    snapshot and before LISTEN sent its NOTIFY to nobody, and the wake-up given once listening
    was lost if that fetch was still in flight (seen in CI: a job deferred just after "Starting
    worker" not run in 60 s, polling every 120 s)."""
    settings = from_env({"DATABASE_URL": database_url, "DYNO": "worker.start"}, process_type="worker")
    app = procrastinate.App(connector=queue_connector.procrastinate_connector(settings))

    @app.task(name="tests.noop", queue="default")
    def noop() -> None:
        """Nothing: the test watches when it runs."""

    worker = slow_polling_worker(app, concurrency=1)
    fetch, listen = PsycopgConnector.execute_query_one_async, PsycopgConnector.listen_notify
    race: dict = {"job": None, "deferred": None}

    async def listen_once_the_job_is_in(self, on_notification, channels):
        await race["deferred"].wait()
        await listen(self, on_notification=on_notification, channels=channels)

    async def first_fetch_held_until_listening(self, query, **arguments):
        row = await fetch(self, query, **arguments)
        if query == db.QUERIES["fetch_job"] and race["job"] is None:
            with psycopg.connect(database_url, autocommit=True) as other:
                race["job"] = defer_to(other, "default", "tests.noop")  # its NOTIFY reaches nobody
            race["deferred"].set()
            await wait_for(worker._new_job_event.is_set, 10, "the wake-up given once listening")
        return row

    monkeypatch.setattr(PsycopgConnector, "listen_notify", listen_once_the_job_is_in)
    monkeypatch.setattr(PsycopgConnector, "execute_query_one_async", first_fetch_held_until_listening)

    async def scenario() -> float:
        race["deferred"] = asyncio.Event()
        async with running(app, worker):
            await wait_for(lambda: race["job"] is not None, 10, "the first fetch")
            await race["deferred"].wait()
            deferred_at = time.monotonic()
            await wait_for(lambda: status(conn, race["job"]) == "succeeded", 5, "the job")
            return time.monotonic() - deferred_at

    ran_in = asyncio.run(scenario())
    print(f"a job deferred before LISTEN ran {ran_in * 1000:.0f} ms after it (polling every 120 s)")
    assert ran_in < 5


def test_a_worker_taken_for_dead_writes_no_outcome_over_its_jobs_new_attempts(database_url, conn):
    """Its jobs were re-queued and may run elsewhere: procrastinate's finish (and retry) of the
    old attempt would mark the new one aborted, or send it back to wait while it runs."""
    from procrastinate import sql as procrastinate_sql

    from tests.test_jobs import fetch_job_for_worker, register_worker

    settings = from_env({"DATABASE_URL": database_url}, process_type="worker")
    connector = queue_connector.procrastinate_connector(settings)
    job_id = defer_to(conn, "default")
    assert fetch_job_for_worker(conn, register_worker(conn, "0 seconds")) == job_id
    finish = {"job_id": job_id, "status": "aborted", "delete_job": False}

    async def scenario() -> None:
        pool = db.worker_pool(settings)
        await pool.open(wait=True, timeout=5)
        await connector.open_async(pool)
        try:
            connector.fenced = True
            await connector.execute_query_async(procrastinate_sql.queries["finish_job"], **finish)
            assert status(conn, job_id) == "doing"
            connector.fenced = False  # the same write, unfenced, is the one that did harm
            await connector.execute_query_async(procrastinate_sql.queries["finish_job"], **finish)
            assert status(conn, job_id) == "aborted"
        finally:
            await connector.close_async()
            await pool.close()

    asyncio.run(scenario())


def test_a_job_behind_another_ones_lock_runs_as_soon_as_that_one_ends(database_url, conn):
    """Two jobs with one `lock` (a second "Run now", a rollup the web asked for while the
    minutely one ran): the second waited for the next poll after the first ended, as no NOTIFY
    says a lock is free (120 s here; 5 s by default)."""
    settings = from_env({"DATABASE_URL": database_url, "DYNO": "worker.lock"}, process_type="worker")
    app = procrastinate.App(connector=queue_connector.procrastinate_connector(settings))
    release = asyncio.Event()
    ended: list[float] = []

    @app.task(name="tests.hold", queue="default")
    async def hold() -> None:
        """Runs until the test lets it end."""
        await release.wait()
        ended.append(time.monotonic())

    worker = slow_polling_worker(app, concurrency=2)

    def defer_held() -> int:
        return defer_to(conn, "default", "tests.hold", lock="held")

    async def scenario() -> float:
        async with running(app, worker):
            first, second = defer_held(), defer_held()
            await wait_for(lambda: status(conn, first) == "doing", 10, "the first job")
            await asyncio.sleep(0.3)  # the second, fetched for the free slot, is behind the lock
            assert status(conn, second) == "todo"
            release.set()
            await wait_for(lambda: status(conn, second) == "succeeded", 10, "the second job")
            return ended[-1] - ended[0]

    gap = asyncio.run(scenario())
    print(f"the job behind the lock ended {gap * 1000:.0f} ms after the first (polling every 120 s)")
    assert gap < 2
