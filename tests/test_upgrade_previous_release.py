"""A deploy as Heroku makes it: the release step runs while the previous release's processes
keep running, and they run on beside the new schema until they are stopped; a rollback runs
the previous release's step again on the newer schema.

The previous release is the tree just before the newest numbered migration was added (taken
from git), so the newest migration is the one checked against the code it lands under. Without
the git history (an unpacked archive, a shallow clone) the test is skipped, saying so.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from migrations import tally_files
from tests.conftest import ROOT, defer_by_sql, process_environment, wait_until

pytestmark = pytest.mark.slow


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's tree just before its newest migration file was added."""
    newest = tally_files()[-1].name
    try:
        added = git("log", "--diff-filter=A", "--format=%H", "-1", "--", f"migrations/{newest}")
        if not added:
            raise subprocess.CalledProcessError(1, "git log")
        parent = git("rev-parse", f"{added}^")
    except (subprocess.CalledProcessError, FileNotFoundError):
        pytest.skip(f"no git history for the release before {newest} (not a full clone)")
    tree = tmp_path_factory.mktemp("previous-release")
    archive = subprocess.run(["git", "archive", parent], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    assert not (tree / "migrations" / newest).exists()
    return tree


def release_step(tree: Path, url: str) -> str:
    env = process_environment({"DATABASE_URL": url, "PYTHONPATH": str(tree)})
    done = subprocess.run(
        [sys.executable, "-m", "migrations"], cwd=tree, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def job_row(conn: psycopg.Connection, job_id: int) -> tuple:
    return conn.execute(
        "SELECT status::text, attempts, abort_requested FROM procrastinate_jobs WHERE id = %s", (job_id,)
    ).fetchone()


def deferred(conn: psycopg.Connection, task: str) -> int:
    defer_by_sql(conn, task)
    return conn.execute("SELECT max(id) FROM procrastinate_jobs WHERE task_name = %s", (task,)).fetchone()[0]


def test_the_previous_releases_worker_runs_on_the_new_schema_and_a_rollback_applies_nothing(
    fresh_database, previous_release
):
    release_step(previous_release, fresh_database)
    log = previous_release / "worker.log"
    with open(log, "w") as out:
        worker = subprocess.Popen(
            [sys.executable, "worker.py"],
            cwd=previous_release,
            env=process_environment({"DATABASE_URL": fresh_database, "PYTHONPATH": str(previous_release)}),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        with psycopg.connect(fresh_database, autocommit=True) as conn:
            wait_until(
                lambda: conn.execute("SELECT count(*) FROM procrastinate_workers").fetchone()[0],
                20,
                0.05,
                "the previous release's worker",
            )
            # The deploy: this release's step while the previous release's worker runs.
            upgraded = release_step(ROOT, fresh_database)
            assert "release done" in upgraded and "0 migration(s)" not in upgraded, upgraded

            # A job deferred now (by this release's web or clock) runs on the previous worker.
            job = deferred(conn, "retry_stalled_jobs")
            wait_until(lambda: job_row(conn, job)[0] == "succeeded", 20, 0.05, f"job {job} to succeed")

            # A job asked to abort on the previous worker that then ends on an error ends aborted,
            # its attempt counted (README, POST /api/jobs/<id>/cancel): a cleanup waiting on rows
            # someone holds, asked to abort, its statement then cancelled.
            conn.execute(
                "INSERT INTO events (site, name, occurred_at) SELECT 'old.example', 'Old',"
                " now() - interval '40 days' - g * interval '1 second' FROM generate_series(1, 20) g"
            )
            with psycopg.connect(fresh_database) as holder:
                holder.execute("SELECT id FROM events WHERE site = 'old.example' FOR UPDATE")
                job = deferred(conn, "cleanup_old_page_views")
                waiting = wait_until(
                    lambda: conn.execute(
                        "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
                        ("%DELETE FROM events%",),
                    ).fetchone(),
                    20,
                    0.05,
                    "the cleanup to wait on the held events",
                )[0]
                conn.execute("SELECT procrastinate_cancel_job_v1(%s, true, false)", (job,))
                assert job_row(conn, job) == ("doing", 0, True)
                conn.execute("SELECT pg_cancel_backend(%s)", (waiting,))
                wait_until(lambda: job_row(conn, job)[0] != "doing", 20, 0.05, f"job {job} to end")
                holder.rollback()
            assert job_row(conn, job) == ("aborted", 1, False), log.read_text()[-3000:]

            # A rollback: the previous release's step on the newer schema applies nothing, fails
            # nothing, and its worker goes on.
            rolled_back = release_step(previous_release, fresh_database)
            assert "release done: 0 migration(s) applied" in rolled_back, rolled_back
            job = deferred(conn, "retry_stalled_jobs")
            wait_until(lambda: job_row(conn, job)[0] == "succeeded", 20, 0.05, f"job {job} to succeed")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, log.read_text()[-3000:]
    assert " ERROR " not in log.read_text(), log.read_text()[-3000:]
