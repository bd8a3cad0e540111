"""The Procfile's entry files, started as real subprocesses against the session's database."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import psycopg
import pytest

from tests.conftest import (
    ROOT,
    VENV_BIN,
    CleanupBlocker,
    defer_by_sql,
    expired_views,
    free_port,
    sigterm_mid_cleanup,
    statuses,
    wait_until,
)

# Long enough that only NOTIFY, never the fallback poll, can explain a quick pickup.
SLOW_POLL = {"POLL_INTERVAL_SECONDS": "120"}


def cli_defer(task: str, database_url: str) -> None:
    """`procrastinate --app=jobs.app defer TASK '{}'`, typed in the repository root."""
    subprocess.run(
        [str(VENV_BIN / "procrastinate"), "--app=jobs.app", "defer", task, "{}"],
        cwd=ROOT,
        env={"DATABASE_URL": database_url, "PATH": f"{VENV_BIN}:/usr/bin:/bin"},
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("entry", "variable", "value"),
    [
        (["web.py"], "PORT", "eighty"),
        (["worker.py"], "WORKER_CONCURRENCY", "0"),
        (["clock.py"], "CLEANUP_SCHEDULE", "hourly"),
        (["-m", "migrations"], "RETENTION_DAYS", "-3"),
    ],
)
def test_invalid_configuration_stops_the_process_with_one_line(entry, variable, value):
    result = subprocess.run(
        [sys.executable, *entry],
        cwd=ROOT,
        env={variable: value, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert variable in lines[0] and "Traceback" not in lines[0]


@pytest.mark.parametrize("entry", [["web.py"], ["worker.py"], ["clock.py"], ["-m", "migrations"]])
def test_a_dyno_without_database_url_stops_instead_of_starting_a_local_database(entry):
    """On a dyno the local database was a server in the dyno's own filesystem: each dyno
    counted its own views and lost them all at its next restart."""
    result = subprocess.run(
        [sys.executable, *entry],
        cwd=ROOT,
        env={"DYNO": "web.1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and "DATABASE_URL is not set" in lines[0], lines


def test_the_cli_gives_up_within_seconds_on_a_database_it_cannot_use(database_url):
    """psycopg_pool's open waits 30 s by default: a wrong password or database name kept
    `procrastinate --app=jobs.app healthchecks` (or `defer`) silent that long."""
    wrong = psycopg.conninfo.make_conninfo(database_url, dbname="no_such_database")
    started = time.monotonic()
    result = subprocess.run(
        [str(VENV_BIN / "procrastinate"), "--app=jobs.app", "healthchecks"],
        cwd=ROOT,
        env={"DATABASE_URL": wrong, "PATH": f"{VENV_BIN}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - started
    assert result.returncode != 0 and took < 15, (took, result.stdout[-500:], result.stderr[-500:])


def test_a_web_whose_port_is_taken_says_so_in_one_line(database_url):
    """A second `make run` on the same port printed waitress's 25-line traceback."""
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "web.py"],
            cwd=ROOT,
            env={"DATABASE_URL": database_url, "PORT": str(port), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
        )
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output, output
    assert f"PORT={port} is in use" in output


def test_the_release_step_says_in_one_line_that_the_database_did_not_answer(database_url):
    missing = database_url.replace("/postgres?", "/no_such_database?")
    assert missing != database_url
    result = subprocess.run(
        [sys.executable, "-m", "migrations"],
        cwd=ROOT,
        env={"DATABASE_URL": missing, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    failed = [line for line in result.stdout.splitlines() if "release failed" in line]
    assert len(failed) == 1 and "no_such_database" in failed[0] and "does not exist" in failed[0]


def test_web_serves_health_and_logs_its_start_line(start_process):
    port = free_port()
    web = start_process(["web.py"], {"PORT": str(port), "DYNO": "web.7"})
    web.wait_for_line("Serving on")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5) as response:
        assert response.status == 200
        body = json.load(response)
    assert body["status"] == "ok" and body["dyno"] == "web.7" and body["database"] == "ok"
    start_lines = [line for line in web.output().splitlines() if "PROCESS STARTED" in line]
    assert len(start_lines) == 1
    assert "file=web.py" in start_lines[0] and "processType=web" in start_lines[0]
    assert "web.7" in start_lines[0]


def test_sigterm_answers_what_open_connections_send_then_stops(start_process, conn):
    """On SIGTERM the web stopped reading at once: a beacon sent just after it on a kept-alive
    connection got no answer and was reset (a helper's soak lost 4 per restart). Now the
    listening socket closes (a new connection is refused), a request on an open connection is
    answered and stored, with `Connection: close`, and the web then stops by itself."""
    port = free_port()
    web = start_process(["web.py"], {"PORT": str(port)})
    web.wait_for_line("Serving on")
    view = json.dumps({"path": "/kept-alive"})
    headers = {"Content-Type": "application/json"}
    kept = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    kept.request("POST", "/api/pageviews", view, headers)
    first = kept.getresponse()
    first.read()
    assert first.status == 201 and first.getheader("Connection") is None  # kept alive
    web.signal(signal.SIGTERM)
    web.wait_for_line("SIGTERM: answering the open connections")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    kept.request("POST", "/api/pageviews", view, headers)
    second = kept.getresponse()
    second.read()
    assert second.status == 201 and second.getheader("Connection") == "close"
    kept.close()
    started = time.monotonic()
    assert web.wait(10) == 0
    assert time.monotonic() - started < 3  # every connection closed: no need to wait the drain out
    assert conn.execute("SELECT count(*) FROM page_views WHERE path = '/kept-alive'").fetchone()[0] == 2


def test_an_idle_connection_holds_a_stopping_web_no_longer_than_the_drain(start_process):
    from tally.web.serving import DRAIN_SECONDS

    port = free_port()
    web = start_process(["web.py"], {"PORT": str(port)})
    web.wait_for_line("Serving on")
    idle = socket.create_connection(("127.0.0.1", port), timeout=5)  # a router's kept connection
    try:
        time.sleep(0.2)  # accepted
        started = time.monotonic()
        web.signal(signal.SIGTERM)
        assert web.wait(DRAIN_SECONDS + 8) == 0
        assert DRAIN_SECONDS - 0.5 < time.monotonic() - started < DRAIN_SECONDS + 6
    finally:
        idle.close()


def test_a_client_holding_hundreds_of_half_sent_requests_leaves_the_web_answering(start_process):
    """waitress served 100 connections at once by default: one client with 100 requests it
    never finished (each byte renews waitress's 120 s) left health and every beacon waiting."""
    port = free_port()
    web = start_process(["web.py"], {"PORT": str(port)})
    web.wait_for_line("Serving on")
    held = []
    try:
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: tally\r\nX-Slow: ")
            held.append(sock)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5) as response:
            assert response.status == 200
    finally:
        for sock in held:
            sock.close()


def test_a_job_deferred_with_the_cli_runs_within_a_second(start_process, conn, database_url):
    worker = start_process(["worker.py"], SLOW_POLL)
    worker.wait_for_line("Starting worker")
    # Warm up: the first job may be found by the start-up fetch rather than NOTIFY.
    cli_defer("prune_finished_jobs", database_url)
    wait_until(lambda: statuses(conn, "prune_finished_jobs") == ["succeeded"], 150, message="warm-up job")

    cli_defer("cleanup_old_page_views", database_url)
    deferred_at = time.monotonic()
    wait_until(
        lambda: statuses(conn, "cleanup_old_page_views") == ["succeeded"],
        10,
        0.005,
        message="the CLI-deferred cleanup",
    )
    picked_up_in = time.monotonic() - deferred_at
    print(f"CLI defer -> job succeeded in {picked_up_in * 1000:.0f} ms (polling every 120 s)")
    assert picked_up_in < 1.0
    assert "cleanup removed 0 page views" in worker.output()


def test_clock_defers_and_the_worker_runs_it(start_process, conn):
    worker = start_process(["worker.py"], SLOW_POLL)
    clock = start_process(["clock.py"], {"RETRY_STALLED_SCHEDULE": "* * * * * */2"})
    clock.wait_for_line("CLOCK PROCESS STARTED")
    # The start line first, as README says: procrastinate's "Registering task" lines came before it.
    assert "CLOCK PROCESS STARTED" in clock.output().splitlines()[0], clock.output()[:500]
    worker.wait_for_line("Starting worker")
    wait_until(
        lambda: "succeeded" in statuses(conn, "retry_stalled_jobs"),
        20,
        0.1,
        message="a clock-deferred retry_stalled_jobs to succeed",
    )
    defers = conn.execute(
        "SELECT count(*) FROM procrastinate_periodic_defers WHERE task_name = 'retry_stalled_jobs'"
    ).fetchone()[0]
    assert defers >= 1
    assert "Periodic job retry_stalled_jobs" in clock.output()
    assert "Starting job" not in clock.output()  # the clock never runs jobs
    assert "Periodic job" not in worker.output()  # the worker never defers periodic jobs


def test_sigterm_drains_the_worker_and_the_cleanup_resumes(start_process, conn, database_url):
    expired_views(conn, 300_000)
    settings = {**SLOW_POLL, "CLEANUP_BATCH_SIZE": "300", "WORKER_GRACEFUL_SECONDS": "1"}
    worker = start_process(["worker.py"], settings)
    worker.wait_for_line("Starting worker")
    with CleanupBlocker(database_url, conn) as blocker:
        defer_by_sql(conn, "cleanup_old_page_views", lock="cleanup_old_page_views")
        drained_in = sigterm_mid_cleanup(worker, blocker)
    assert drained_in < 30
    assert statuses(conn, "cleanup_old_page_views") == ["todo"]  # aborted, waiting for its retry
    remaining = conn.execute("SELECT count(*) FROM page_views").fetchone()[0]
    assert 0 < remaining < 300000

    # The retry is scheduled a few seconds ahead: the default polling finds it.
    successor = start_process(["worker.py"], {"CLEANUP_BATCH_SIZE": "5000"})
    successor.wait_for_line("Starting worker")
    wait_until(
        lambda: statuses(conn, "cleanup_old_page_views") == ["succeeded"],
        60,
        0.1,
        message="the retried cleanup to finish",
    )
    assert conn.execute("SELECT count(*) FROM page_views").fetchone()[0] == 0


def test_the_procrastinate_cli_worker_runs_jobs_too(start_process, conn, database_url):
    worker = start_process([str(VENV_BIN / "procrastinate"), "--app=jobs.app", "--verbose", "worker"])
    worker.wait_for_line("Starting worker")
    cli_defer("cleanup_old_page_views", database_url)
    wait_until(lambda: statuses(conn, "cleanup_old_page_views") == ["succeeded"], 15, 0.05, message="the job")
    assert "cleanup removed 0 page views" in worker.output()
    assert "Periodic job" not in worker.output()


def test_a_worker_waiting_for_the_database_stops_at_once_on_sigterm(start_process):
    worker = start_process(
        ["worker.py"], {"DATABASE_URL": "postgresql://postgres@/x?host=/nonexistent-tally"}
    )
    worker.wait_for_line("WORKER PROCESS STARTED")
    time.sleep(1)
    worker.signal(signal.SIGTERM)
    assert worker.wait(5) == 0


@pytest.mark.parametrize("entry", ["worker.py", "clock.py", "web.py"])
def test_a_process_waiting_for_a_database_that_does_not_exist_says_why(start_process, database_url, entry):
    """They wait as for an outage, but the server's reason is in the log (once a minute), where
    the clock and the worker said only "Database error" and "pool initialization incomplete"."""
    missing = database_url.replace("/postgres?", "/no_such_database?")
    assert missing != database_url
    process = start_process([entry], {"DATABASE_URL": missing, "PORT": str(free_port())})
    process.wait_for_line('database "no_such_database" does not exist', timeout=15)
    time.sleep(3)  # more attempts meanwhile: one line says it
    assert process.output().count("does not exist") == 1


def test_a_worker_that_cannot_hold_its_session_leaves_no_live_worker_row(conn, monkeypatch):
    """procrastinate registers a worker before Tally's worker takes its session lock: with every
    connection slot taken, each restart failed there and left a row with a fresh heartbeat
    (health read 27 workers alive of 2 running). A worker that never ran unregisters."""
    import asyncio

    import psycopg

    import jobs
    from jobs import worker_process
    from jobs.liveness import WorkerSession

    async def no_slot(cls, settings, worker_id):
        raise psycopg.OperationalError("FATAL: sorry, too many clients already")

    monkeypatch.setattr(WorkerSession, "hold", classmethod(no_slot))
    assert jobs.settings.worker_session_liveness

    async def attempt() -> None:
        options = jobs.worker_options(jobs.settings)
        started = worker_process.SupervisedWorker(app=jobs.app, **options, install_signal_handlers=False)
        with pytest.raises(psycopg.OperationalError):
            await worker_process.open_and_run(jobs.app, started)

    asyncio.run(attempt())
    assert conn.execute("SELECT count(*) FROM procrastinate_workers").fetchone()[0] == 0


def test_a_migration_that_fails_ends_the_release_with_one_line_naming_it(fresh_database):
    """A SQL error (a role without CREATE, an object in the way, a database from an edited
    migration) is not the database failing to answer, but it must still read as one line."""
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute("CREATE VIEW page_views AS SELECT 1 AS id")  # 0001 makes a table of that name
    result = subprocess.run(
        [sys.executable, "-m", "migrations"],
        cwd=ROOT,
        env={"DATABASE_URL": fresh_database, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output, output
    failed = [line for line in result.stdout.splitlines() if "release failed" in line]
    assert len(failed) == 1, output
    assert "0001_page_views.sql" in failed[0] and "already exists" in failed[0], failed
