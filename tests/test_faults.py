"""The process model under faults: drain, crash, scale-out, several clocks, a database
restart and a soak with a killed worker. Real entry files as subprocesses, real database.

These take tens of seconds each: `make test-quick` skips them, CI runs them all.
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
import urllib.request

import psycopg
import pytest

from tests.conftest import (
    PATH_VIEWS,
    CleanupBlocker,
    defer_by_sql,
    expired_views,
    free_port,
    sigterm_mid_cleanup,
    statuses,
    wait_until,
)

pytestmark = pytest.mark.slow

# Short enough for a test, and still stalled > graceful + heartbeat as the config demands.
FAST_RECOVERY = {
    "WORKER_HEARTBEAT_SECONDS": "1",
    "WORKER_GRACEFUL_SECONDS": "2",
    "STALLED_AFTER_SECONDS": "4",
    "POLL_INTERVAL_SECONDS": "1",
}
EVERY_TWO_SECONDS = "* * * * * */2"
NEVER_SOON = "0 0 1 1 *"  # keeps other periodic jobs out of the way
# Expired views in the default partition (90 days old: no day holds them), deleted in batches:
# the blocker holds the cleanup mid-way however fast the machine is, so a million is plenty.
DRAIN_VIEWS = 1_000_000
SOAK_SECONDS = 30  # a worker killed half way


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, dict, float]:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return response.status, json.load(response), time.monotonic() - started
    except urllib.error.HTTPError as error:
        return error.code, json.load(error), time.monotonic() - started


def test_drain_stops_a_cleanup_over_a_million_rows_and_it_resumes(start_process, conn, database_url):
    expired_views(conn, DRAIN_VIEWS)
    worker = start_process(["worker.py"], {"WORKER_GRACEFUL_SECONDS": "2", "CLEANUP_BATCH_SIZE": "5000"})
    worker.wait_for_line("Starting worker")
    with CleanupBlocker(database_url, conn) as blocker:
        defer_by_sql(conn, "cleanup_old_page_views", lock="cleanup_old_page_views")
        drain_seconds = sigterm_mid_cleanup(worker, blocker)
    print(f"drain: worker exited 0 in {drain_seconds:.2f} s")
    assert conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE status = 'doing'").fetchone()[0] == 0
    assert statuses(conn, "cleanup_old_page_views") == ["todo"]
    left = conn.execute("SELECT count(*) FROM page_views").fetchone()[0]
    assert 0 < left < DRAIN_VIEWS

    successor = start_process(["worker.py"], {"CLEANUP_BATCH_SIZE": "20000"})
    successor.wait_for_line("Starting worker")
    wait_until(
        lambda: statuses(conn, "cleanup_old_page_views") == ["succeeded"], 120, 0.2, "the retried cleanup"
    )
    assert conn.execute("SELECT count(*) FROM page_views").fetchone()[0] == 0
    assert conn.execute(PATH_VIEWS).fetchone()[0] == DRAIN_VIEWS


def test_a_killed_workers_job_is_finished_by_another(start_process, conn, database_url):
    """The heartbeat rule, for workers without a session lock (PgBouncer; see test_nothing_hangs)."""
    expired_views(conn, 300_000)
    clock = start_process(
        ["clock.py"],
        {
            "RETRY_STALLED_SCHEDULE": EVERY_TWO_SECONDS,
            "CLEANUP_SCHEDULE": NEVER_SOON,
            "ROLLUP_SCHEDULE": NEVER_SOON,
        },
    )
    victim = start_process(
        ["worker.py"],
        # Without its session lock a worker must stay silent longer than a drain's abort before
        # it counts as stalled (tally/config.py); the rescuer judges it by its own 4 s.
        {
            **FAST_RECOVERY,
            "STALLED_AFTER_SECONDS": "9",
            "CLEANUP_BATCH_SIZE": "200",
            "WORKER_SESSION_LIVENESS": "false",
        },
    )
    victim.wait_for_line("Starting worker")
    clock.wait_for_line("CLOCK PROCESS STARTED")
    # Held a tenth along: the kill has to land mid-cleanup, not after 150,000 deletes (while
    # this transaction runs, the deleted rows are not dead to every transaction, so each
    # batch's index scan steps over them again: a CI machine once took over 60 s half way).
    with CleanupBlocker(database_url, conn, at=0.1) as blocker:
        defer_by_sql(conn, "cleanup_old_page_views", lock="cleanup_old_page_views")
        blocker.wait_until_reached()
        victim.signal(signal.SIGKILL)
        killed = time.monotonic()
        victim.wait(10)
        assert statuses(conn, "cleanup_old_page_views") == ["doing"]  # as the kill left it

    rescuer = start_process(["worker.py"], FAST_RECOVERY)
    rescuer.wait_for_line("Starting worker")
    wait_until(
        lambda: statuses(conn, "cleanup_old_page_views") == ["succeeded"], 180, 0.2, "the rescued cleanup"
    )
    print(f"crash: killed worker's job finished by another after {time.monotonic() - killed:.1f} s")
    assert "re-queued stalled job" in rescuer.output()
    assert conn.execute("SELECT count(*) FROM page_views").fetchone()[0] == 0
    attempts = conn.execute(
        "SELECT attempts FROM procrastinate_jobs WHERE task_name = 'cleanup_old_page_views'"
    )
    assert attempts.fetchone()[0] == 2, rescuer.output()  # the killed attempt and the one that finished


def test_three_workers_start_every_job_exactly_once(start_process, conn):
    workers = [start_process(["worker.py"], {"WORKER_CONCURRENCY": "4"}) for _ in range(3)]
    for worker in workers:
        worker.wait_for_line("Starting worker")
    defer_by_sql(conn, "retry_stalled_jobs", count=300)
    defer_by_sql(conn, "prune_finished_jobs", count=100)
    wait_until(
        lambda: (
            conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'").fetchone()[0]
            == 400
        ),
        120,
        0.2,
        "400 jobs to succeed",
    )
    starts = conn.execute(
        "SELECT job.id, count(event.id) FROM procrastinate_jobs job"
        " LEFT JOIN procrastinate_events event ON event.job_id = job.id AND event.type = 'started'"
        " GROUP BY job.id"
    ).fetchall()
    duplicates = [job_id for job_id, started in starts if started != 1]
    print(f"scale-out: {len(starts)} jobs over 3 workers, duplicates found: {len(duplicates)}")
    assert len(starts) == 400 and duplicates == []


def test_several_clocks_defer_each_tick_once(start_process, conn):
    schedule = {
        "RETRY_STALLED_SCHEDULE": "* * * * * *",
        "CLEANUP_SCHEDULE": NEVER_SOON,
        "ROLLUP_SCHEDULE": NEVER_SOON,
        "PRUNE_SCHEDULE": NEVER_SOON,
    }
    clocks = [start_process(["clock.py"], {**schedule, "DYNO": f"clock.{n}"}) for n in (1, 2, 3)]
    for clock in clocks:
        clock.wait_for_line("CLOCK PROCESS STARTED")
    time.sleep(6)
    for clock in clocks:
        clock.stop()
    ticks = conn.execute(
        "SELECT args->>'timestamp', count(*) FROM procrastinate_jobs"
        " WHERE task_name = 'retry_stalled_jobs' GROUP BY 1"
    ).fetchall()
    print(f"clocks: 3 clocks, {len(ticks)} ticks, deferred twice: {sum(1 for _, n in ticks if n > 1)}")
    assert len(ticks) >= 4
    assert all(count == 1 for _, count in ticks)


def listening(conn_url: str, dyno: str) -> bool:
    with psycopg.connect(conn_url, autocommit=True) as conn:
        return bool(
            conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND query LIKE 'LISTEN%%'",
                (dyno,),
            ).fetchone()[0]
        )


def test_everything_recovers_from_a_database_restart(start_process, database_url, test_server):
    port = free_port()
    web = start_process(["web.py"], {"PORT": str(port)})
    worker = start_process(["worker.py"], {"POLL_INTERVAL_SECONDS": "300", "DYNO": "worker.9"})
    clock = start_process(
        ["clock.py"],
        {
            "RETRY_STALLED_SCHEDULE": EVERY_TWO_SECONDS,
            "CLEANUP_SCHEDULE": NEVER_SOON,
            "ROLLUP_SCHEDULE": NEVER_SOON,
        },
    )
    web.wait_for_line("Serving on")
    worker.wait_for_line("Starting worker")
    clock.wait_for_line("CLOCK PROCESS STARTED")
    assert http_get(port, "/api/health")[0] == 200
    wait_until(lambda: listening(database_url, "worker.9"), 10, 0.1, "the worker to LISTEN")

    test_server.stop(mode="fast")
    down_at = time.monotonic()
    slowest = 0.0
    while time.monotonic() - down_at < 4:
        status, body, took = http_get(port, "/api/health")
        assert status == 503 and body["database"] == "unreachable"
        slowest = max(slowest, took)
    assert slowest < 2.0

    test_server.start()
    back_at = time.monotonic()
    wait_until(lambda: http_get(port, "/api/health")[0] == 200, 15, 0.1, "health to answer 200 again")
    health_back = time.monotonic() - back_at
    try:
        wait_until(lambda: listening(database_url, "worker.9"), 20, 0.1, "the worker to LISTEN again")
    except AssertionError:
        raise AssertionError(worker.output()[-5000:]) from None
    listen_back = time.monotonic() - back_at

    with psycopg.connect(database_url, autocommit=True) as conn:
        before = len(statuses(conn, "prune_finished_jobs"))
        defer_by_sql(conn, "prune_finished_jobs")
        deferred = time.monotonic()
        wait_until(
            lambda: statuses(conn, "prune_finished_jobs")[before:] == ["succeeded"], 10, 0.01, "NOTIFY"
        )
        pickup = time.monotonic() - deferred
        restarted_at = conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
        wait_until(
            lambda: (
                conn.execute(
                    "SELECT count(*) FROM procrastinate_jobs job"
                    " JOIN procrastinate_events event ON event.job_id = job.id"
                    " WHERE job.task_name = 'retry_stalled_jobs' AND event.type = 'deferred'"
                    " AND event.at > %s",
                    (restarted_at,),
                ).fetchone()[0]
                > 0
            ),
            15,
            0.2,
            "the clock to defer again",
        )
    print(
        f"database restart: health 503 in at most {slowest:.2f} s while down;"
        f" 200 again after {health_back:.1f} s; LISTEN back after {listen_back:.1f} s;"
        f" NOTIFY pickup {pickup * 1000:.0f} ms"
    )
    assert pickup < 1.0  # polling is 300 s: only NOTIFY explains this
    for process in (web, worker, clock):
        assert process.popen.poll() is None  # nobody needed a restart


def test_the_first_request_after_a_database_restart_is_answered(start_process, database_url, test_server):
    """Every idle connection of the web's pool died with the server; the first request after it
    came back found them one by one, and psycopg_pool's checkout loop slept its backoff (1 s,
    then 2 s) after each: a 503 after 1.5 s, a beacon lost, 10 to 40 s after the restart."""
    port = free_port()
    web = start_process(["web.py"], {"PORT": str(port)})
    web.wait_for_line("Serving on")
    for _ in range(8):  # every connection of the pool used once
        assert post_view(port, "/before") == 201
    test_server.stop(mode="fast")
    test_server.start()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT 1")  # the server answers again
        started = time.monotonic()
        status = post_view(port, "/first-after")
        took = time.monotonic() - started
        assert status == 201, web.output()[-3000:]
        assert took < 1.0
        assert conn.execute("SELECT count(*) FROM page_views WHERE path = '/first-after'").fetchone()[0] == 1
    assert http_get(port, "/api/health")[0] == 200


def post_view(port: int, path: str) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/pageviews",
        data=json.dumps({"path": path}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_no_accepted_view_is_lost_in_a_soak_with_a_killed_worker(start_process, conn):
    conn.execute(
        "INSERT INTO page_views (path, viewed_at) SELECT '/expired', now() - interval '60 days'"
        " FROM generate_series(1, 50000)"
    )
    port = free_port()
    fast_jobs = {"ROLLUP_SCHEDULE": EVERY_TWO_SECONDS, "CLEANUP_SCHEDULE": "* * * * * */10", **FAST_RECOVERY}
    web = start_process(["web.py"], {"PORT": str(port), "PUBLIC_DASHBOARD": "true"})  # stats for all
    workers = [start_process(["worker.py"], {**fast_jobs, "CLEANUP_BATCH_SIZE": "500"}) for _ in range(2)]
    clock = start_process(["clock.py"], {**fast_jobs, "RETRY_STALLED_SCHEDULE": EVERY_TWO_SECONDS})
    for process, line in [(web, "Serving on"), (clock, "CLOCK PROCESS STARTED")] + [
        (worker, "Starting worker") for worker in workers
    ]:
        process.wait_for_line(line)

    accepted = [0] * 4
    refused: list[str] = []
    stop = threading.Event()

    def client(number: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        sent = 0
        while not stop.is_set():
            batch = [{"path": f"/soak/{number}/{sent + i}"} for i in range(1 + sent % 20)]
            conn.request("POST", "/api/pageviews", json.dumps(batch), {"Content-Type": "application/json"})
            response = conn.getresponse()
            body = json.loads(response.read())
            if response.status == 201:
                accepted[number] += body["stored"]
            else:
                refused.append(f"{response.status} {body}")
            sent += len(batch)

    clients = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in clients:
        thread.start()
    time.sleep(SOAK_SECONDS / 2)
    workers[0].signal(signal.SIGKILL)
    time.sleep(SOAK_SECONDS / 2)
    stop.set()
    for thread in clients:
        thread.join(15)

    total = sum(accepted)
    rolled_up = lambda: conn.execute(  # noqa: E731
        "SELECT coalesce(sum(views), 0) FROM page_view_buckets WHERE bucket > now() - interval '2 hours'"
    ).fetchone()[0]
    wait_until(lambda: rolled_up() == total, 30, 0.5, "the rollup to catch up")
    status, stats, _ = http_get(port, "/api/stats?days=2", timeout=10)
    print(f"soak: {total} views accepted by 4 clients in {SOAK_SECONDS} s, {len(refused)} refused,")
    print(f"soak: stats total {stats['total_views']} after the rollup caught up")
    assert status == 200
    assert refused == []
    assert stats["total_views"] == total and stats["views_last_24h"] == total
    stored = conn.execute(
        "SELECT count(*), count(DISTINCT path) FROM page_views WHERE path LIKE '/soak/%'"
    ).fetchone()
    assert stored == (total, total)  # each exactly once
    assert conn.execute("SELECT count(*) FROM page_views WHERE path = '/expired'").fetchone()[0] == 0
