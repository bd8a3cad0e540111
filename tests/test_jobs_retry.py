"""Upkeep jobs whose attempt lost the database are tried again (jobs/retry.py)."""

from __future__ import annotations

import psycopg
import psycopg_pool
import pytest
from procrastinate.exceptions import ConnectorException

from jobs.retry import lost_database
from tests.conftest import defer_by_sql, statuses, wait_until
from tests.test_faults import FAST_RECOVERY


def wrapped(error: Exception) -> ConnectorException:
    """As procrastinate's connector raises a psycopg error."""
    try:
        raise ConnectorException() from error
    except ConnectorException as raised:
        return raised


@pytest.mark.parametrize(
    ("error", "lost"),
    [
        (psycopg.errors.AdminShutdown("terminating connection due to administrator command"), True),
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),
        (psycopg.InterfaceError("the connection is closed"), True),
        (psycopg_pool.PoolTimeout("couldn't get a connection after 30.00 sec"), True),
        (psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"), False),
        (psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), False),
        (psycopg.errors.UndefinedTable('relation "page_views" does not exist'), False),
        (ValueError("a bug"), False),
    ],
)
def test_only_a_lost_database_is_retried(error, lost):
    assert lost_database(error) is lost
    assert lost_database(wrapped(error)) is lost


def test_a_rollup_cut_off_by_the_database_is_tried_again_not_failed(start_process, conn, database_url):
    """A rollup running while PostgreSQL restarted ended `failed` for good (AdminShutdown), in
    recent_failures and tally_jobs, though nothing was wrong. Its connection is ended here as a
    restart ends it (pg_terminate_backend: SQLSTATE 57P01), while it waits for the rollup
    state's row."""
    worker = start_process(["worker.py"], FAST_RECOVERY)
    worker.wait_for_line("Starting worker")
    conn.execute("INSERT INTO page_views (path) SELECT '/p' FROM generate_series(1, 100)")
    with psycopg.connect(database_url) as holder:
        holder.execute("SELECT * FROM page_view_rollup_state FOR UPDATE")
        defer_by_sql(conn, "rollup_page_views", lock="rollup_page_views")
        waiting = (
            "SELECT pid FROM pg_stat_activity WHERE query LIKE '%tally_rollup_page_views()%'"
            " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        wait_until(lambda: conn.execute(waiting).fetchone() is not None, 30, 0.1, "the rollup waiting")
        (pid,) = conn.execute(waiting).fetchone()
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        wait_until(lambda: statuses(conn, "rollup_page_views") == ["todo"], 30, 0.1, "the rollup to retry")
    wait_until(lambda: statuses(conn, "rollup_page_views") == ["succeeded"], 60, 0.2, "the retried rollup")
    attempts = conn.execute("SELECT attempts FROM procrastinate_jobs WHERE task_name = 'rollup_page_views'")
    assert attempts.fetchone()[0] == 2, worker.output()
    assert conn.execute("SELECT count(*) FROM page_view_buckets").fetchone()[0] > 0
