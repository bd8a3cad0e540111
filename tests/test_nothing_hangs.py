"""Nothing hangs: a killed worker's job runs again within seconds, a locked table costs a
job a bounded wait and a retry, and no job attempt outlives JOB_TIMEOUT_SECONDS.
Real entry files as subprocesses, real database (the network side: test_partitions.py).
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request

import psycopg
import pytest

from tests.conftest import (
    PATH_VIEWS,
    ROOT,
    VENV_BIN,
    CleanupBlocker,
    defer_by_sql,
    expired_views,
    free_port,
    statuses,
    wait_until,
)

pytestmark = pytest.mark.slow


# The routes asked below are the owner's (tally/web/auth.py): the web gets a token, requests send it.
ADMIN_TOKEN = "owner-token-for-tests"
OWNER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def http_json(port: int, path: str) -> dict:
    call = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=OWNER)
    with urllib.request.urlopen(call, timeout=10) as response:
        return json.load(response)


def post_view(port: int, path: str) -> tuple[int, float]:
    """(status, seconds) of one POST of a view."""
    started = time.monotonic()
    body = json.dumps({"path": path}).encode()
    call = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/pageviews", body, {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(call, timeout=15) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    return status, time.monotonic() - started


def started_events(conn: psycopg.Connection, task: str) -> int:
    return conn.execute(
        "SELECT count(*) FROM procrastinate_events event JOIN procrastinate_jobs job ON job.id = event.job_id"
        " WHERE job.task_name = %s AND event.type = 'started'",
        (task,),
    ).fetchone()[0]


def test_a_sigkilled_workers_job_runs_again_on_another_within_15_s(start_process, conn, database_url):
    """Default heartbeat settings (60 s of silence): only the session lock explains 15 s."""
    expired_views(conn, 300_000)
    victim = start_process(["worker.py"], {"CLEANUP_BATCH_SIZE": "200", "DYNO": "worker.1"})
    victim.wait_for_line("Starting worker")
    with CleanupBlocker(database_url, conn) as blocker:
        defer_by_sql(conn, "cleanup_old_page_views", lock="cleanup_old_page_views")
        rescuer = start_process(["worker.py"], {"DYNO": "worker.2"})
        rescuer.wait_for_line("holds its session lock")
        blocker.wait_until_reached()
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


def test_a_live_workers_job_is_not_run_again_when_its_session_ends(start_process, conn, database_url):
    """A worker's session can end while the worker lives on (a database restart, a network
    blip, pg_terminate_backend): the other worker's sweep took the free lock for death,
    re-queued the running job and ran it beside the first. Now the owner takes its lock again
    within a second or two of each end, and a lock counts as lost only once free for 6 s."""
    expired_views(conn, 300_000)
    owner = start_process(["worker.py"], {"CLEANUP_BATCH_SIZE": "200", "DYNO": "worker.1"})
    owner.wait_for_line("Starting worker")
    # The job stays busy through the session's troubles and two sweeps after (about 10 s),
    # each wait under the worker's 5 s lock_timeout: three blockers, held 3.2 to 3.5 s each.
    with (
        CleanupBlocker(database_url, conn, at=0.3) as first,
        CleanupBlocker(database_url, conn, at=0.5) as second,
        CleanupBlocker(database_url, conn, at=0.7) as third,
    ):
        defer_by_sql(conn, "cleanup_old_page_views", lock="cleanup_old_page_views")
        other = start_process(["worker.py"], {"DYNO": "worker.2"})
        other.wait_for_line("holds its session lock")
        first.wait_until_reached()
        (worker_id,) = conn.execute(
            "SELECT worker_id FROM procrastinate_jobs WHERE task_name = 'cleanup_old_page_views'"
        ).fetchone()
        session_of = "SELECT pid FROM tally_worker_locks WHERE worker_id = %s"
        # Its session ends, and each new one too, for 3.2 s (a network that comes and goes):
        # longer than the other worker's sweep interval, shorter than the grace.
        killed = set()
        ends = time.monotonic() + 3.2
        while time.monotonic() < ends:
            for (pid,) in conn.execute(session_of, (worker_id,)).fetchall():
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                killed.add(pid)
            time.sleep(0.02)
        assert killed
        first.release()
        second.wait_until_reached()
        reached = time.monotonic()

        def held_anew() -> bool:
            holder = conn.execute(session_of, (worker_id,)).fetchone()
            return holder is not None and holder[0] not in killed

        wait_until(held_anew, 3, 0.05, "the owner to take its lock again")
        # Two more sweeps of the other worker while the job runs on, each wait under 5 s.
        time.sleep(max(0.0, 3.5 - (time.monotonic() - reached)))
        second.release()
        third.wait_until_reached()
        time.sleep(3.5)
        third.release()
    wait_until(lambda: statuses(conn, "cleanup_old_page_views") == ["succeeded"], 120, 0.2, "the cleanup")
    assert started_events(conn, "cleanup_old_page_views") == 1
    assert "re-queued" not in other.output() and "session ended" not in other.output()
    assert "lost its session" in owner.output()


def test_a_draining_workers_job_is_not_run_again(start_process, conn, database_url):
    """A worker that drains has stopped heart-beating but holds its session: it is alive."""
    # The blockers hold the job, not the views' number: with 300,000, deleting the 150,000 up to
    # the first blocker, 200 a commit, took past the 60 s wait on a CI machine running six
    # suites at once (its disk in WALSync).
    expired_views(conn, 30_000)
    drainer = start_process(
        ["worker.py"], {"CLEANUP_BATCH_SIZE": "200", "WORKER_GRACEFUL_SECONDS": "8", "DYNO": "worker.1"}
    )
    drainer.wait_for_line("Starting worker")
    # The job is busy for the whole 8 s grace, however fast the machine: it waits at the
    # first blocker for 4 s, then deletes up to the second and waits there (each wait
    # under the worker's 5 s lock_timeout). The other worker sweeps every 3 s meanwhile.
    with (
        CleanupBlocker(database_url, conn, at=0.5) as first,
        CleanupBlocker(database_url, conn, at=0.75),
    ):
        defer_by_sql(conn, "cleanup_old_page_views", lock="cleanup_old_page_views")
        other = start_process(["worker.py"], {"DYNO": "worker.2"})
        other.wait_for_line("holds its session lock")
        first.wait_until_reached()
        drainer.signal(signal.SIGTERM)
        time.sleep(4)
        first.release()
        drainer.wait_for_line("still running after graceful timeout", timeout=30)
    assert drainer.wait(30) == 0
    assert "session ended" not in other.output()
    assert started_events(conn, "cleanup_old_page_views") <= 2  # the drained attempt, maybe its retry
    assert "re-queued" not in other.output()


def job_events(conn: psycopg.Connection, job_id: int) -> list[str]:
    rows = conn.execute(
        "SELECT type::text FROM procrastinate_events WHERE job_id = %s ORDER BY id", (job_id,)
    )
    return [row[0] for row in rows]


def test_a_cleanup_past_its_time_limit_is_cut_and_resumed_until_done(start_process, conn, database_url):
    rows = int(os.environ.get("TALLY_TEST_TIMEOUT_ROWS", "300000"))
    expired_views(conn, rows)
    port = free_port()
    web = start_process(["web.py"], {"PORT": str(port), "ADMIN_TOKEN": ADMIN_TOKEN})
    worker = start_process(["worker.py"], {"JOB_TIMEOUT_SECONDS": "3", "CLEANUP_BATCH_SIZE": "1000"})
    worker.wait_for_line("Starting worker")
    web.wait_for_line("Serving on")
    started = time.monotonic()
    # The first attempt waits halfway on a row lock, past its limit (or, on a machine too
    # slow to get there in 3 s, passes it on the way); it stops at its next check once the
    # lock goes, and a retry deletes the rest.
    with CleanupBlocker(database_url, conn):
        defer_by_sql(conn, "cleanup_old_page_views", lock="cleanup_old_page_views")
        worker.wait_for_line("passed its time limit of 3 s", timeout=30)
        remaining_when_cut = conn.execute("SELECT count(*) FROM page_views").fetchone()[0]
    assert 0 < remaining_when_cut < rows  # the first attempt's batches stay deleted
    job_id = conn.execute(
        "SELECT id FROM procrastinate_jobs WHERE task_name = 'cleanup_old_page_views'"
    ).fetchone()[0]
    wait_until(
        lambda: "JobTimedOut" in (http_json(port, f"/api/jobs/{job_id}")["last_error"] or ""), 10, 0.1, "api"
    )
    wait_until(
        lambda: statuses(conn, "cleanup_old_page_views") == ["succeeded"], 300, 0.2, "the cleanup to finish"
    )
    took = time.monotonic() - started

    attempts = conn.execute("SELECT attempts FROM procrastinate_jobs WHERE id = %s", (job_id,)).fetchone()[0]
    errors = [
        row[0] for row in conn.execute("SELECT error FROM tally_job_errors WHERE job_id = %s", (job_id,))
    ]
    events = job_events(conn, job_id)
    print(
        f"time limit: {rows} rows at 1,000 a batch, 3 s an attempt:"
        f" done in {took:.1f} s over {attempts} attempts"
    )
    assert attempts >= 2 and len(errors) == attempts - 1
    assert all(error.startswith("JobTimedOut: the attempt passed its time limit of 3 s") for error in errors)
    assert events.count("started") == attempts and events.count("deferred_for_retry") == attempts - 1
    assert conn.execute("SELECT count(*) FROM page_views").fetchone()[0] == 0
    assert conn.execute(PATH_VIEWS).fetchone()[0] == rows
    assert worker.output().count("passed its time limit of 3 s: aborting it") == attempts - 1


def test_a_task_may_declare_its_own_time_limit():
    from procrastinate import JobContext
    from procrastinate.jobs import Job

    import jobs
    from jobs.time_limit import limit_for

    def context_of(task: str) -> JobContext:
        job = Job(id=1, queue="default", lock=None, queueing_lock=None, task_name=task, task_kwargs={})
        return JobContext(app=jobs.app, job=job, start_timestamp=0.0, abort_reason=lambda: None)

    assert limit_for(context_of("retry_stalled_jobs"), 600.0) == 60.0  # its own @time_limit
    assert limit_for(context_of("cleanup_old_page_views"), 600.0) == 600.0  # JOB_TIMEOUT_SECONDS


def test_a_locked_table_costs_jobs_and_ingest_a_bounded_wait(start_process, conn, database_url):
    lock_seconds = float(os.environ.get("TALLY_TEST_LOCK_SECONDS", "20"))
    expired_views(conn, 20_000)
    port = free_port()
    web = start_process(["web.py"], {"PORT": str(port), "ADMIN_TOKEN": ADMIN_TOKEN})
    worker = start_process(["worker.py"], {"POLL_INTERVAL_SECONDS": "1"})
    worker.wait_for_line("Starting worker")
    web.wait_for_line("Serving on")

    with psycopg.connect(database_url) as locker:
        locker.execute("LOCK TABLE page_views IN ACCESS EXCLUSIVE MODE")  # as psql would, for minutes
        locked_at = time.monotonic()
        defer_by_sql(conn, "cleanup_old_page_views", lock="cleanup_old_page_views")
        worker.wait_for_line("Starting job cleanup_old_page_views")
        defer_by_sql(conn, "prune_finished_jobs")
        wait_until(lambda: statuses(conn, "prune_finished_jobs") == ["succeeded"], 10, 0.1, "another job")
        health = http_json(port, "/api/health")  # the database is up: only a count is unknown
        assert (health["status"], health["rollup_views_waiting"]) == ("ok", None)
        answers = []
        while time.monotonic() - locked_at < lock_seconds:
            answers.append(post_view(port, f"/locked/{len(answers)}"))
            time.sleep(0.2)
        assert statuses(conn, "cleanup_old_page_views") != ["succeeded"]
        locker.commit()
    wait_until(
        lambda: statuses(conn, "cleanup_old_page_views") == ["succeeded"], 60, 0.2, "the cleanup after"
    )
    errors = [row[0] for row in conn.execute("SELECT error FROM tally_job_errors")]
    slowest = max(took for _, took in answers)
    print(
        f"lock of {lock_seconds:g} s: cleanup failed {len(errors)} time(s) on the lock and finished"
        f" {time.monotonic() - locked_at - lock_seconds:.1f} s after it; {len(answers)} posts, slowest"
        f" {slowest:.2f} s, statuses {sorted({status for status, _ in answers})}"
    )
    assert errors and all("LockNotAvailable" in error for error in errors)
    assert slowest < 6.0 and {status for status, _ in answers} <= {201, 503}
    assert conn.execute("SELECT count(*) FROM page_views WHERE path LIKE '/old/%'").fetchone()[0] == 0


def test_a_locked_defers_table_costs_the_clock_a_bounded_wait_and_a_line(start_process, conn, database_url):
    """The clock's defers waited without a bound or a word behind a lock on procrastinate's
    periodic-defers table (a LOCK TABLE in psql): each tick now gives up after the lock
    timeout, says so, and is deferred once the lock is gone."""
    never = "0 0 1 1 *"
    schedule = {
        "RETRY_STALLED_SCHEDULE": "* * * * * *",
        **{
            name: never for name in ("CLEANUP_SCHEDULE", "ROLLUP_SCHEDULE", "PRUNE_SCHEDULE", "SALT_SCHEDULE")
        },
        "REPORT_SCHEDULE": "off",
    }
    with psycopg.connect(database_url) as locker:
        locker.execute("LOCK TABLE procrastinate_periodic_defers IN EXCLUSIVE MODE")
        clock = start_process(["clock.py"], schedule)
        clock.wait_for_line("could not defer periodic jobs", timeout=15)
        assert "lock timeout" in clock.output()
        assert statuses(conn, "retry_stalled_jobs") == []
        locker.commit()
    wait_until(lambda: statuses(conn, "retry_stalled_jobs"), 10, 0.1, "a tick deferred after the lock")


def test_a_job_whose_notify_nobody_heard_starts_once_listen_is_back(start_process, conn):
    """A job deferred while the worker was not listening (its NOTIFY lost) runs once LISTEN
    is re-established, not at the next poll (300 s here)."""
    worker = start_process(["worker.py"], {"POLL_INTERVAL_SECONDS": "300", "DYNO": "worker.5"})
    worker.wait_for_line("Starting worker")
    listen_pids = lambda: [  # noqa: E731
        row[0]
        for row in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'worker.5' AND query LIKE 'LISTEN%%'"
        )
    ]
    old = wait_until(listen_pids, 10, 0.05, "the worker to LISTEN")
    with conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")  # no trigger: no NOTIFY
        conn.execute(
            "INSERT INTO procrastinate_jobs (queue_name, task_name, args)"
            " VALUES ('default', 'prune_finished_jobs', '{}')"
        )
    conn.execute("SELECT pg_terminate_backend(%s)", (old[0],))
    cut = time.monotonic()
    wait_until(lambda: statuses(conn, "prune_finished_jobs") == ["succeeded"], 15, 0.05, "the unheard job")
    print(f"catch-up: a job deferred unheard ran {time.monotonic() - cut:.2f} s after LISTEN was cut")
    assert listen_pids() and listen_pids() != old


class StatementHold:
    """Holds every DELETE of the default partition (the partition move's, the cleanup's there)
    inside its statement, on the server, until `release()`: a statement-level trigger that
    waits while a row of `tally_test_hold` exists. The statement is then mid-run when the
    test says so, however fast the machine moves rows, and only a cancel or the end of its
    session stops it."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        conn.execute("CREATE TABLE tally_test_hold ()")
        conn.execute("INSERT INTO tally_test_hold DEFAULT VALUES")
        conn.execute(
            "CREATE FUNCTION tally_test_hold() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN WHILE EXISTS (SELECT FROM tally_test_hold) LOOP PERFORM pg_sleep(0.01); END LOOP;"
            " RETURN NULL; END $$"
        )
        conn.execute(
            "CREATE TRIGGER tally_test_hold BEFORE DELETE ON page_views_default"
            " FOR EACH STATEMENT EXECUTE FUNCTION tally_test_hold()"
        )

    def held(self, statement: str) -> list[int]:
        """The backends held inside a statement that contains `statement`."""
        rows = self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND query LIKE %s",
            (f"%{statement}%",),
        )
        return [row[0] for row in rows]

    def release(self) -> None:
        self.conn.execute("DELETE FROM tally_test_hold")

    def __enter__(self) -> StatementHold:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self.conn.execute("DROP TRIGGER tally_test_hold ON page_views_default")
        self.conn.execute("DROP FUNCTION tally_test_hold()")
        self.conn.execute("DROP TABLE tally_test_hold")


def test_sigterm_mid_partition_move_stops_the_move_and_the_next_run_makes_the_day(start_process, conn):
    """A worker drained while maintain_partitions moved a big day out of the default partition
    waited for the move to end, abort or not: 34 s after SIGTERM, past Heroku's SIGKILL. The
    abort now cancels the move's statement; its transaction leaves nothing behind."""
    day = time.gmtime(time.time() - 3 * 86400)
    name = time.strftime("page_views_p%Y%m%d", day)
    conn.execute(
        "INSERT INTO page_views (path, viewed_at) SELECT '/moved', %s::date + n * interval '1 s'"
        " FROM generate_series(1, 2000) n",
        (time.strftime("%Y-%m-%d", day),),
    )
    worker = start_process(["worker.py"], {"WORKER_GRACEFUL_SECONDS": "1", "DYNO": "worker.1"})
    worker.wait_for_line("Starting worker")
    try:
        with StatementHold(conn) as hold:
            defer_by_sql(conn, "maintain_partitions", lock="maintain_partitions")
            wait_until(lambda: hold.held("ensure_day_partition"), 30, 0.02, "the move to be under way")
            signalled = time.monotonic()
            worker.signal(signal.SIGTERM)
            assert worker.wait(15) == 0
            exited_in = time.monotonic() - signalled
            print(f"SIGTERM mid-move (1 s grace): exited {exited_in:.2f} s later")
            assert exited_in < 4.0  # the forced exit would be 1 + 5 s
            assert not hold.held("ensure_day_partition")  # cancelled on the server, not left running
            # Nothing half-done: no table of the day, every view still in the default partition.
            assert conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0] is None
            assert conn.execute("SELECT count(*) FROM page_views_default").fetchone()[0] == 2000
            assert statuses(conn, "maintain_partitions") == ["aborted"]  # the next hourly tick's
        successor = start_process(["worker.py"], {"DYNO": "worker.2"})
        successor.wait_for_line("Starting worker")
        defer_by_sql(conn, "maintain_partitions", lock="maintain_partitions")  # the next tick
        wait_until(lambda: statuses(conn, "maintain_partitions")[-1] == "succeeded", 30, 0.05, "the next run")
        assert conn.execute("SELECT count(*) FROM page_views_default").fetchone()[0] == 0
        assert conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] == 2000
    finally:
        conn.execute(f'DROP TABLE IF EXISTS "{name}"')


def test_a_job_deaf_to_the_abort_costs_the_drain_a_bounded_wait_and_runs_again(start_process, conn):
    """A sync job in one long statement cannot be stopped (Python cannot kill a thread): the
    drain waited for it with no bound. Now the worker gives aborted jobs DRAIN_ABORT_SECONDS,
    then exits without writing their outcome, and the sweep runs them again elsewhere."""
    expired_views(conn, 2000)  # 90 days old: in the default partition, deleted in batches there
    victim = start_process(["worker.py"], {"WORKER_GRACEFUL_SECONDS": "1", "DYNO": "worker.1"})
    victim.wait_for_line("Starting worker")
    with StatementHold(conn) as hold:
        defer_by_sql(conn, "cleanup_old_page_views", lock="cleanup_old_page_views")
        wait_until(lambda: hold.held("delete_expired_views_batch"), 30, 0.02, "the cleanup to be under way")
        rescuer = start_process(["worker.py"], {"DYNO": "worker.2"})
        rescuer.wait_for_line("holds its session lock")
        signalled = time.monotonic()
        victim.signal(signal.SIGTERM)
        assert victim.wait(20) == 0
        exited_in = time.monotonic() - signalled
        print(f"SIGTERM with a job deaf to its abort (1 s grace): exited {exited_in:.2f} s later")
        assert exited_in < 1 + 5 + 2
        assert "left to the sweep" in victim.output()
        # The server ends the statement of the gone worker (client_connection_check_interval).
        wait_until(lambda: not hold.held("delete_expired_views_batch"), 5, 0.05, "the server to end it")
        rescuer.wait_for_line("Starting job cleanup_old_page_views", timeout=30)
        hold.release()
    wait_until(lambda: statuses(conn, "cleanup_old_page_views") == ["succeeded"], 60, 0.1, "the cleanup")
    assert started_events(conn, "cleanup_old_page_views") == 2  # the abandoned attempt and one more
    assert conn.execute("SELECT count(*) FROM page_views").fetchone()[0] == 0


def test_the_cli_workers_drain_has_the_same_bound(start_process, conn):
    """procrastinate's own drain waited for an aborted job with no bound: `procrastinate
    --app=jobs.app worker` stayed past Heroku's 30 s for a job deaf to its abort and, silent
    meanwhile, retry_stalled_jobs re-queued that job while it still ran (it ran twice at once).
    Every worker jobs.app builds has worker.py's bound (jobs/drain.py)."""
    expired_views(conn, 2000)
    worker = start_process(
        [str(VENV_BIN / "procrastinate"), "--app=jobs.app", "worker"],
        # This checkout's jobs.app, whichever checkout the venv's .pth names.
        {"WORKER_GRACEFUL_SECONDS": "1", "PYTHONPATH": str(ROOT)},
    )
    worker.wait_for_line("Starting worker")
    with StatementHold(conn) as hold:
        defer_by_sql(conn, "cleanup_old_page_views", lock="cleanup_old_page_views")
        wait_until(lambda: hold.held("delete_expired_views_batch"), 30, 0.02, "the cleanup to be under way")
        signalled = time.monotonic()
        worker.signal(signal.SIGTERM)
        assert worker.wait(20) == 0
        exited_in = time.monotonic() - signalled
        print(f"CLI worker, SIGTERM with a job deaf to its abort (1 s grace): exited {exited_in:.2f} s later")
        assert exited_in < 1 + 5 + 2
        assert "left to the sweep" in worker.output()
        wait_until(lambda: not hold.held("delete_expired_views_batch"), 5, 0.05, "the server to end it")
    # No session lock: its job waits for the heartbeat rule, as a SIGKILLed CLI worker's does.
    assert statuses(conn, "cleanup_old_page_views") == ["doing"]
