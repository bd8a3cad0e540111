"""`procrastinate --app=jobs.app worker` (and `healthchecks` and `shell`), which must work as well
as `python worker.py` (DESIGN.md): the real CLI, started as a subprocess against the session's
database."""

from __future__ import annotations

import re
import signal
import subprocess
import time

import pytest

from tests.conftest import (
    ROOT,
    VENV_BIN,
    CleanupBlocker,
    defer_by_sql,
    expired_views,
    process_environment,
    statuses,
    wait_until,
)

CLI = str(VENV_BIN / "procrastinate")
# tally/logs.py's LINE_FORMAT, as worker.py writes it.
LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} worker\.1 type=worker (DEBUG|INFO|WARNING|ERROR) \S+: "
)
NOT_MIGRATED = "not migrated: run `python -m migrations`"


def cli(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, "--app=jobs.app", *args],
        cwd=ROOT,
        env=process_environment(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_one_shot_worker_finishes_the_jobs_it_took_past_the_drain_grace(start_process, conn, database_url):
    """procrastinate ended a one-shot run as a SIGTERM's drain: WORKER_GRACEFUL_SECONDS, then it
    aborted what still ran, left a cleanup half done (`todo`) and exited 0."""
    expired_views(conn, 20_000)
    with CleanupBlocker(database_url, conn) as blocker:
        defer_by_sql(conn, "cleanup_old_page_views")
        worker = start_process(
            [CLI, "--app=jobs.app", "worker", "--one-shot"],
            {"WORKER_GRACEFUL_SECONDS": "1", "CLEANUP_BATCH_SIZE": "1000"},
        )
        blocker.wait_until_reached()
        time.sleep(3)  # three times the grace, under the worker's 5 s lock_timeout
    assert worker.wait(60) == 0, worker.output()[-3000:]
    assert statuses(conn, "cleanup_old_page_views") == ["succeeded"], worker.output()[-3000:]
    assert conn.execute("SELECT count(*) FROM page_views").fetchone()[0] == 0
    assert "Aborting them" not in worker.output()


def test_sigterm_drains_a_one_shot_worker_waiting_for_its_jobs_within_the_bound(
    start_process, conn, database_url
):
    expired_views(conn, 20_000)
    with CleanupBlocker(database_url, conn) as blocker:
        defer_by_sql(conn, "cleanup_old_page_views")
        worker = start_process(
            [CLI, "--app=jobs.app", "worker", "--one-shot"],
            {"WORKER_GRACEFUL_SECONDS": "1", "CLEANUP_BATCH_SIZE": "1000"},
        )
        blocker.wait_until_reached()
        worker.wait_for_line("no more jobs: waiting for the 1 running to finish")
        signalled = time.monotonic()
        worker.signal(signal.SIGTERM)
        worker.wait_for_line("still running after graceful timeout", timeout=10)
        blocker.release()
        assert worker.wait(15) == 0
    took = time.monotonic() - signalled
    assert took < 1 + 5 + 2, took  # the grace, the abort's bound, and some slack
    # Aborted for the shutdown, so to run again: its retry strategy put it back.
    assert statuses(conn, "cleanup_old_page_views") == ["todo"], worker.output()[-3000:]


def test_healthchecks_fail_on_a_database_tally_has_not_migrated(fresh_database):
    """With only procrastinate's schema (`procrastinate schema --apply`) it said OK three times,
    then every worker failed on a missing table of Tally's."""
    env = {"DATABASE_URL": fresh_database}
    applied = cli(["schema", "--apply"], env)
    assert applied.returncode == 0, applied.stderr

    result = cli(["healthchecks"], env)
    assert result.returncode == 1
    assert "OK" not in result.stdout
    assert NOT_MIGRATED in result.stderr, result.stderr

    worker = cli(["worker", "--one-shot"], env)
    assert worker.returncode == 1
    assert NOT_MIGRATED in worker.stdout and "does not exist" not in worker.stdout, worker.stdout


def test_healthchecks_say_ok_on_a_migrated_database():
    result = cli(["healthchecks"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": OK") == 3


def test_the_shell_lists_retries_and_cancels_tallys_jobs(conn):
    """DESIGN.md names the CLI's `shell` among the stock tools: its commands on Tally's tables."""
    defer_by_sql(conn, "cleanup_old_page_views", 2)
    conn.execute("UPDATE procrastinate_jobs SET status = 'failed' WHERE id = 1")

    def shell(*command: str) -> str:
        result = cli(["shell", *command])
        assert result.returncode == 0 and not result.stderr, result.stderr
        return result.stdout

    assert shell("list_jobs").splitlines() == [
        "#1 cleanup_old_page_views on default - [failed]",
        "#2 cleanup_old_page_views on default - [todo]",
    ]
    assert "default: 2 jobs (todo: 1, doing: 0, succeeded: 0, failed: 1" in shell("list_queues")
    assert "cleanup_old_page_views: 2 jobs" in shell("list_tasks")
    assert shell("retry", "1").strip() == "#1 cleanup_old_page_views on default - [todo]"
    assert shell("cancel", "2").strip() == "#2 cleanup_old_page_views on default - [cancelled]"
    assert conn.execute("SELECT status::text FROM procrastinate_jobs ORDER BY id").fetchall() == [
        ("todo",),
        ("cancelled",),
    ]


def test_worker_py_says_not_migrated_once_a_try_and_starts_once_migrated(start_process, fresh_database):
    """It said "worker stopped on an error … / worker restarting in 1 s (database unreachable?)"
    twice a second, for ever."""
    env = {"DATABASE_URL": fresh_database}
    assert cli(["schema", "--apply"], env).returncode == 0
    worker = start_process(["worker.py"], env)
    worker.wait_for_line(NOT_MIGRATED)
    time.sleep(4.5)
    output = worker.output()
    assert 2 <= output.count(NOT_MIGRATED) <= 3, output  # tries 2 s, then 4 s apart
    assert "database unreachable" not in output and "does not exist" not in output, output

    release = subprocess.run(
        [str(VENV_BIN / "python"), "-m", "migrations"],
        cwd=ROOT,
        env=process_environment(env),
        capture_output=True,
        timeout=120,
    )
    assert release.returncode == 0, release.stdout[-2000:]
    worker.wait_for_line("Starting worker", timeout=20)


def test_the_cli_worker_logs_as_worker_py_does(conn):
    """procrastinate's CLI logged `INFO:procrastinate.worker.worker.1:…` to stderr, tracebacks on
    many lines, with no start line, whatever LOG_LEVEL said."""
    defer_by_sql(conn, "no_such_task")  # its failure's log has a traceback
    result = cli(["worker", "--one-shot"])
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert all(LOG_LINE.match(line) for line in lines), [line for line in lines if not LOG_LINE.match(line)]
    started = [line for line in lines if "PROCESS STARTED" in line]
    assert len(started) == 1 and started[0] == lines[0], lines[:3]
    assert "WORKER PROCESS STARTED file=procrastinate processType=worker dyno=worker.1" in started[0]
    assert any("Traceback" in line and "TaskNotFound" in line for line in lines), lines

    quiet = cli(["worker", "--one-shot"], {"LOG_LEVEL": "WARNING"})
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert len(quiet.stdout.splitlines()) == 1 and "WORKER PROCESS STARTED" in quiet.stdout, quiet.stdout


@pytest.mark.slow
def test_a_cli_worker_requeues_a_killed_worker_py_job_within_seconds(start_process, conn, database_url):
    """README: every worker makes the session sweep. The CLI's did not: with only it alive, a
    killed worker.py's job waited for two `retry_stalled_jobs` runs of the clock (1-2 min)."""
    expired_views(conn, 20_000)
    victim = start_process(["worker.py"], {"CLEANUP_BATCH_SIZE": "1000"})
    victim.wait_for_line("holds its session lock")
    with CleanupBlocker(database_url, conn) as blocker:
        defer_by_sql(conn, "cleanup_old_page_views")
        blocker.wait_until_reached()
        victim.signal(signal.SIGKILL)
        killed = time.monotonic()
        victim.wait(10)
        rescuer = start_process([CLI, "--app=jobs.app", "worker"], {"CLEANUP_BATCH_SIZE": "1000"})
        rescuer.wait_for_line("re-queued job 1 (cleanup_old_page_views)", timeout=20)
    print(f"sweep: the CLI worker re-queued the killed worker's job after {time.monotonic() - killed:.1f} s")
    wait_until(lambda: statuses(conn, "cleanup_old_page_views") == ["succeeded"], 60, 0.1, "the cleanup")
