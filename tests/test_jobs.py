"""The worker's jobs, run by a real procrastinate worker against the session's database."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import time

import procrastinate
import psycopg
import pytest
from procrastinate import JobContext
from procrastinate.exceptions import JobAborted
from procrastinate.job_context import AbortReason
from procrastinate.tasks import ConfigureTaskOptions

import jobs
from jobs import page_views, queue_upkeep
from tally import queue_connector
from tests.conftest import PATH_VIEWS


def run_queued_jobs() -> None:
    """Run every job waiting in the queue with a real worker, then return."""

    async def work() -> None:
        async with jobs.app.open_async():
            await jobs.app.run_worker_async(
                wait=False, concurrency=1, install_signal_handlers=False, listen_notify=False
            )

    asyncio.run(work())


def defer(task, **configure) -> int:
    """Defer `task` through the app's own (sync) connector, as the web process does. `configure`
    holds procrastinate's options (the task's own arguments go in `task_kwargs`): procrastinate
    drops a name it does not know, so a test's `since=` was never the rebuild's argument."""
    unknown = set(configure) - set(
        ConfigureTaskOptions.__optional_keys__ | ConfigureTaskOptions.__required_keys__
    )
    if unknown:
        raise TypeError(f"not an option of procrastinate's configure: {sorted(unknown)}; use task_kwargs")
    with jobs.app.open():
        return task.configure(**configure).defer()


def job_statuses(conn: psycopg.Connection) -> list[tuple[str, str]]:
    return list(conn.execute("SELECT task_name, status::text FROM procrastinate_jobs ORDER BY id"))


def insert_views(conn: psycopg.Connection, count: int, age: str) -> None:
    conn.execute(
        "INSERT INTO page_views (path, viewed_at)"
        " SELECT '/p' || (n %% 7), now() - %s::interval FROM generate_series(1, %s) AS n",
        (age, count),
    )


@pytest.fixture
def small_batches(monkeypatch):
    monkeypatch.setattr(page_views, "settings", dataclasses.replace(jobs.settings, cleanup_batch_size=100))


def test_cleanup_removes_exactly_the_expired_rows_over_several_batches(conn, small_batches, caplog):
    insert_views(conn, 1050, "31 days")
    insert_views(conn, 40, "30 days 1 hour")
    insert_views(conn, 300, "29 days 23 hours")
    insert_views(conn, 500, "1 minute")
    conn.execute(  # custom events go the same way: 125 expired, 5 kept
        "INSERT INTO events (name, occurred_at) SELECT 'E', now() - interval '1 day' * (CASE WHEN n <= 125"
        " THEN 41 ELSE 1 END) FROM generate_series(1, 130) AS n"
    )
    kept_ids = {
        row[0]
        for row in conn.execute("SELECT id FROM page_views WHERE viewed_at > now() - '30 days'::interval")
    }

    defer(page_views.cleanup_old_page_views)
    with caplog.at_level(logging.DEBUG, logger="jobs.page_views"):
        run_queued_jobs()

    assert job_statuses(conn) == [("cleanup_old_page_views", "succeeded")]
    assert {row[0] for row in conn.execute("SELECT id FROM page_views")} == kept_ids
    batches = [r.getMessage() for r in caplog.records if r.getMessage().startswith("batch removed")]
    assert len([batch for batch in batches if batch.endswith("page views")]) == 11  # 1,090, 100 at a time
    assert "cleanup removed 1090 page views and 125 events" in caplog.text
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 5


def test_cleanup_is_idempotent(conn):
    insert_views(conn, 10, "40 days")
    defer(page_views.cleanup_old_page_views)
    defer(page_views.cleanup_old_page_views)
    run_queued_jobs()
    assert job_statuses(conn) == [("cleanup_old_page_views", "succeeded")] * 2
    assert conn.execute("SELECT count(*) FROM page_views").fetchone()[0] == 0


def test_cleanup_stops_between_batches_when_asked_and_a_rerun_finishes(conn, small_batches):
    insert_views(conn, 1000, "60 days")
    checks = 0

    def abort_after_three_batches():
        nonlocal checks
        checks += 1
        return AbortReason.SHUTDOWN if checks > 3 else None

    with jobs.app.open():
        job = page_views.cleanup_old_page_views.configure().job
        context = JobContext(
            app=jobs.app, job=job, abort_reason=abort_after_three_batches, start_timestamp=time.time()
        )
        with pytest.raises(JobAborted):
            page_views.cleanup_old_page_views(context)
    assert conn.execute("SELECT count(*) FROM page_views").fetchone()[0] == 700

    defer(page_views.cleanup_old_page_views)
    run_queued_jobs()
    assert conn.execute("SELECT count(*) FROM page_views").fetchone()[0] == 0


def test_cleanup_is_retried_after_a_shutdown_abort():
    strategy = page_views.cleanup_old_page_views.retry_strategy
    assert strategy is not None and strategy.max_attempts >= 3


def fetch_job_for_worker(conn: psycopg.Connection, worker_id: int) -> int:
    return conn.execute("SELECT id FROM procrastinate_fetch_job_v2(NULL, %s)", (worker_id,)).fetchone()[0]


def register_worker(conn: psycopg.Connection, heartbeat_age: str) -> int:
    worker_id = conn.execute("SELECT worker_id FROM procrastinate_register_worker_v1()").fetchone()[0]
    conn.execute(
        "UPDATE procrastinate_workers SET last_heartbeat = now() - %s::interval WHERE id = %s",
        (heartbeat_age, worker_id),
    )
    return worker_id


def test_retry_stalled_jobs_requeues_only_jobs_of_silent_workers(conn):
    defer(page_views.cleanup_old_page_views)
    defer(page_views.cleanup_old_page_views, lock="other")
    dead = register_worker(conn, "10 minutes")
    # A worker that is draining stops heart-beating, but for less than the threshold.
    draining = register_worker(
        conn, f"{jobs.settings.graceful_seconds + jobs.settings.heartbeat_seconds} seconds"
    )
    dead_job = fetch_job_for_worker(conn, dead)
    draining_job = fetch_job_for_worker(conn, draining)

    defer(queue_upkeep.retry_stalled_jobs)
    run_queued_jobs()

    status = dict(
        conn.execute(
            "SELECT id, status::text FROM procrastinate_jobs WHERE id IN (%s, %s)", (dead_job, draining_job)
        )
    )
    assert status[draining_job] == "doing"
    # The re-queued job was picked up again by the test's worker and finished.
    assert status[dead_job] == "succeeded"
    workers = {row[0] for row in conn.execute("SELECT id FROM procrastinate_workers")}
    assert dead not in workers and draining in workers


def test_a_dead_workers_job_that_was_asked_to_abort_ends_aborted(conn):
    """procrastinate's retry turns a running job with an abort requested into `failed`, with no
    error (shown as a failure of None), and Tally counted it as re-queued."""
    defer(page_views.cleanup_old_page_views)
    dead = register_worker(conn, "10 minutes")
    job_id = fetch_job_for_worker(conn, dead)
    conn.execute("SELECT procrastinate_cancel_job_v1(%s, true, false)", (job_id,))  # abort asked

    defer(queue_upkeep.retry_stalled_jobs)
    run_queued_jobs()

    status, attempts = conn.execute(
        "SELECT status::text, attempts FROM procrastinate_jobs WHERE id = %s", (job_id,)
    ).fetchone()
    assert (status, attempts) == ("aborted", 1)


def run_one_job(app: procrastinate.App, task) -> int:
    """Defer `task` of `app` and run `app`'s worker until the queue is empty; the job's id."""

    async def work() -> None:
        async with app.open_async():
            await app.run_worker_async(
                wait=False, concurrency=1, install_signal_handlers=False, listen_notify=False
            )

    with app.open():
        job_id = task.defer()
    asyncio.run(work())
    return job_id


def test_a_job_its_owner_asked_to_abort_ends_aborted_whatever_error_it_ends_on(conn):
    """A cleanup asked to abort while it waited out its lock_timeout failed before the worker
    heard of the abort; procrastinate's retry of a job whose abort was asked then marks it
    `failed` without counting the attempt: the jobs page said "failed, attempts 0" for a job
    its owner had stopped. Tally's worker middleware, on a task with a retry strategy."""
    app = procrastinate.App(
        connector=queue_connector.procrastinate_connector(jobs.settings),
        worker_defaults=jobs.worker_options(jobs.settings),
    )

    @app.task(name="fails_once_asked_to_abort", pass_context=True, retry=5)
    async def fails_once_asked_to_abort(context: JobContext) -> None:
        # The owner's Abort while it runs; the worker (no LISTEN here) hears of it at its next poll.
        await context.app.connector.execute_query_async(
            "SELECT procrastinate_cancel_job_v1(%(id)s, true, false)", id=context.job.id
        )
        raise RuntimeError("the lock it waited for stayed taken")

    job_id = run_one_job(app, fails_once_asked_to_abort)
    status, attempts = conn.execute(
        "SELECT status::text, attempts FROM procrastinate_jobs WHERE id = %s", (job_id,)
    ).fetchone()
    assert (status, attempts) == ("aborted", 1)
    (error,) = conn.execute("SELECT error FROM tally_job_errors WHERE job_id = %s", (job_id,)).fetchone()
    assert error.startswith("JobAborted") and "RuntimeError: the lock it waited for stayed taken" in error


@pytest.mark.parametrize("retry", [0, 5], ids=["no retry", "a retry strategy"])
def test_an_abort_asked_after_the_worker_looked_still_ends_the_job_aborted(conn, retry):
    """The middleware reads the row's abort request once the run raised; an abort that commits
    after that read and before the job ends was missed (33 of 47 jobs that fail within
    milliseconds ended `failed` in an audit). Held here by a middleware outside it that commits
    the abort once the error has passed the check: migration 0042 ends the job `aborted`."""

    async def asked_after_the_check(call_next, context: JobContext, worker) -> None:
        try:
            return await call_next()
        except Exception:
            await context.app.connector.execute_query_async(
                "SELECT procrastinate_cancel_job_v1(%(id)s, true, false)", id=context.job.id
            )
            raise

    options = jobs.worker_options(jobs.settings)
    options["worker_middleware"] = [asked_after_the_check, *options["worker_middleware"]]
    app = procrastinate.App(
        connector=queue_connector.procrastinate_connector(jobs.settings), worker_defaults=options
    )

    @app.task(name="fails_at_once", retry=retry)
    async def fails_at_once() -> None:
        raise RuntimeError("failed before anyone asked")

    job_id = run_one_job(app, fails_at_once)
    status, attempts, asked = conn.execute(
        "SELECT status::text, attempts, abort_requested FROM procrastinate_jobs WHERE id = %s", (job_id,)
    ).fetchone()
    assert (status, attempts, asked) == ("aborted", 1, False)
    (error,) = conn.execute("SELECT error FROM tally_job_errors WHERE job_id = %s", (job_id,)).fetchone()
    assert error == "RuntimeError: failed before anyone asked"


def test_only_a_running_job_asked_to_abort_that_fails_is_made_aborted(conn):
    """Migration 0042's trigger, by procrastinate's own functions: a failure with no abort
    request stays `failed` (or is retried), and a job that succeeded first stays `succeeded`."""
    ended = {}
    for case, asked, end in [
        ("failed", False, "SELECT procrastinate_finish_job_v1(%(id)s, 'failed', false)"),
        ("retried", False, "SELECT procrastinate_retry_job_v2(%(id)s, now(), NULL, NULL, NULL)"),
        ("succeeded", True, "SELECT procrastinate_finish_job_v1(%(id)s, 'succeeded', false)"),
        ("failed, asked", True, "SELECT procrastinate_finish_job_v1(%(id)s, 'failed', false)"),
        ("retried, asked", True, "SELECT procrastinate_retry_job_v2(%(id)s, now(), NULL, NULL, NULL)"),
    ]:
        defer(page_views.cleanup_old_page_views)
        job_id = fetch_job_for_worker(conn, register_worker(conn, "0 seconds"))
        if asked:
            conn.execute("SELECT procrastinate_cancel_job_v1(%s, true, false)", (job_id,))
        conn.execute(end, {"id": job_id})
        ended[case] = conn.execute(
            "SELECT status::text, attempts FROM procrastinate_jobs WHERE id = %s", (job_id,)
        ).fetchone()
        conn.execute("DELETE FROM procrastinate_jobs WHERE id = %s", (job_id,))
    assert ended == {
        "failed": ("failed", 1),
        "retried": ("todo", 1),
        "succeeded": ("succeeded", 1),
        "failed, asked": ("aborted", 1),
        "retried, asked": ("aborted", 1),
    }


def test_prune_finished_jobs_removes_old_finished_jobs_and_their_events(conn):
    for _ in range(3):
        defer(queue_upkeep.prune_finished_jobs, lock="x")
    run_queued_jobs()  # three finished jobs, then age two of them
    ids = [row[0] for row in conn.execute("SELECT id FROM procrastinate_jobs ORDER BY id")]
    conn.execute(
        "UPDATE procrastinate_events SET at = now() - %s::interval WHERE job_id = ANY(%s)",
        (f"{jobs.settings.job_retention_hours + 1} hours", ids[:2]),
    )
    defer(page_views.cleanup_old_page_views)  # waiting jobs are never pruned

    defer(queue_upkeep.prune_finished_jobs)
    run_queued_jobs()

    remaining = [row[0] for row in conn.execute("SELECT id FROM procrastinate_jobs ORDER BY id")]
    assert ids[0] not in remaining and ids[1] not in remaining and ids[2] in remaining
    assert (
        conn.execute(
            "SELECT count(*) FROM procrastinate_events WHERE job_id = ANY(%s)", (ids[:2],)
        ).fetchone()[0]
        == 0
    )


def test_every_task_can_be_deferred_with_no_arguments(conn):
    # Every task of the app (procrastinate's own builtins need arguments), with views to work
    # on: the rollup's own statements and the old rollups' removal after it both run.
    insert_views(conn, 10, "3 hours")
    names = sorted(name for name in jobs.app.tasks if "procrastinate" not in name)
    assert {"rollup_page_views", "cleanup_old_page_views", "maintain_partitions"} <= set(names)
    for name in names:
        defer(jobs.app.tasks[name])
    run_queued_jobs()
    assert job_statuses(conn) == [(name, "succeeded") for name in names]


def test_rollup_folds_committed_views_once(conn):
    insert_views(conn, 120, "3 hours")
    insert_views(conn, 30, "45 days")
    defer(page_views.rollup_page_views)
    defer(page_views.rollup_page_views)
    run_queued_jobs()
    assert conn.execute("SELECT sum(views) FROM page_view_buckets").fetchone()[0] == 150
    assert conn.execute(PATH_VIEWS).fetchone()[0] == 150


def test_rollup_removes_rollups_past_their_retention_and_keeps_the_rest(conn):
    # One visitor's views either side of a UTC midnight past ROLLUP_RETENTION_DAYS (rows in
    # every rollup table, an overlap included), and one today.
    old_midnight = datetime.datetime.now(datetime.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    old_midnight -= datetime.timedelta(days=page_views.ROLLUP_RETENTION_DAYS + 5)
    conn.execute(
        "INSERT INTO page_views (site, path, visitor, viewed_at) VALUES"
        " ('example.com', '/old', 7, %(midnight)s - interval '5 minutes'),"
        " ('example.com', '/old', 7, %(midnight)s + interval '5 minutes'),"
        " ('example.com', '/new', 8, now() - interval '1 hour')",
        {"midnight": old_midnight},
    )
    conn.execute(
        "INSERT INTO crawler_hits_daily (site, day, hits)"
        " VALUES ('example.com', %s, 3), ('example.com', current_date, 2)",
        (old_midnight.date(),),
    )
    conn.execute("SELECT tally_rollup_page_views()")
    tables = {
        "page_view_buckets": "bucket",
        "page_view_day_values": "day",
        "page_view_day_overlaps": "first_bucket",
        "page_view_visit_buckets": "bucket",
        "crawler_hits_daily": "day",
    }

    def rows_by_age() -> dict[str, tuple[int, int]]:
        return {
            table: conn.execute(
                f"SELECT count(*) FILTER (WHERE {column} < %(limit)s),"
                f" count(*) FILTER (WHERE {column} >= %(limit)s) FROM {table}",
                {"limit": old_midnight + datetime.timedelta(days=2)},
            ).fetchone()
            for table, column in tables.items()
        }

    before = rows_by_age()
    assert all(old > 0 for old, _ in before.values()), before
    defer(page_views.rollup_page_views)
    run_queued_jobs()
    assert job_statuses(conn) == [("rollup_page_views", "succeeded")]
    after = rows_by_age()
    assert {table: old for table, (old, _) in after.items()} == dict.fromkeys(tables, 0)
    assert {table: new for table, (_, new) in after.items()} == {
        table: new for table, (_, new) in before.items()
    }
    assert all(new > 0 for table, (_, new) in after.items() if table != "page_view_day_overlaps")


def test_cleanup_rolls_views_up_before_deleting_them(conn):
    insert_views(conn, 25, "45 days")
    defer(page_views.cleanup_old_page_views)
    run_queued_jobs()
    assert conn.execute("SELECT count(*) FROM page_views").fetchone()[0] == 0
    assert conn.execute(PATH_VIEWS).fetchone()[0] == 25


def test_a_failing_job_leaves_its_error_for_operators(conn):
    from jobs.middleware import record_job_errors

    job_id = defer(queue_upkeep.prune_finished_jobs)
    job = queue_upkeep.prune_finished_jobs.configure().job.evolve(id=job_id, attempts=0)
    context = JobContext(app=jobs.app, job=job, abort_reason=lambda: None, start_timestamp=time.time())

    async def failing():
        raise RuntimeError("disk on fire")

    async def run():
        async with jobs.app.open_async():
            await record_job_errors(failing, context, None)

    with pytest.raises(RuntimeError):
        asyncio.run(run())
    assert conn.execute("SELECT job_id, attempt, error FROM tally_job_errors").fetchall() == [
        (job_id, 1, "RuntimeError: disk on fire")
    ]


def test_a_stalled_job_picked_up_again_is_not_requeued_by_a_late_retry(conn):
    from tally.db import QUERIES

    job_id = defer(page_views.cleanup_old_page_views)
    dead = register_worker(conn, "10 minutes")
    fetch_job_for_worker(conn, dead)
    # A first retry_stalled_jobs re-queues it and a live worker takes it...
    conn.execute("SELECT procrastinate_retry_job_v2(%s, now(), NULL, NULL, NULL)", (job_id,))
    alive = register_worker(conn, "0 seconds")
    assert fetch_job_for_worker(conn, alive) == job_id
    # ...so a second one, which saw the job stalled under the dead worker, must leave it be.
    retried = conn.execute(QUERIES["retry_stalled_job"], {"job_id": job_id, "worker_id": dead}).fetchone()[0]
    assert retried == 0
    assert conn.execute(
        "SELECT status::text, worker_id FROM procrastinate_jobs WHERE id = %s", (job_id,)
    ).fetchone() == ("doing", alive)


@pytest.mark.parametrize("task_name", ["cleanup_old_page_views", "send_reports"])
def test_a_job_deferred_with_arguments_its_task_does_not_take_fails_at_once_saying_which(conn, task_name):
    """A typo in `procrastinate defer cleanup_old_page_views '{"bogus": 1}'` was retried ten
    times over minutes, the task's lock keeping every other cleanup waiting."""
    task = jobs.app.tasks[task_name]
    with jobs.app.open():
        job_id = task.defer(bogus=1)
    run_queued_jobs()
    assert job_statuses(conn) == [(task_name, "failed")]
    error = conn.execute("SELECT error FROM tally_job_errors WHERE job_id = %s", (job_id,)).fetchone()[0]
    assert error.startswith("WrongArguments") and "bogus" in error
