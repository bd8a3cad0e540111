"""Nothing hangs when the network goes silent: the real processes against a PostgreSQL in
a network namespace (tests/netns.py), its packets dropped by iptables while it also ends
every client's session, as a failover does.

Needs root, iproute2 and iptables: skipped with the reason where they are missing, and a
failure in CI (.ci/run installs iptables and runs as root). The outage lasts
TALLY_TEST_PARTITION_SECONDS (15 in the suite: long enough for every idle connection's
keepalive to fire and every pool to give up its reconnect; README gives the 60 s run).
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest

from tests import netns
from tests.conftest import defer_by_sql, free_port, statuses, wait_until

# The routes asked below are the owner's (tally/web/auth.py): the web gets a token, requests send it.
ADMIN_TOKEN = "owner-token-for-tests"
OWNER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
OUTAGE_SECONDS = float(os.environ.get("TALLY_TEST_PARTITION_SECONDS", "15"))
POSTERS = 4  # clients, each posting a view 50 ms after its last answer
ROUTES_ASKED = ("/api/health", "/api/stats", "/", "/api/jobs", "/metrics")

_missing = netns.missing_requirement()
if _missing and os.environ.get("CI"):
    pytest.fail(f"partition tests cannot run in CI: {_missing}", pytrace=False)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_missing is not None, reason=str(_missing))]


@pytest.fixture(scope="module")
def server():
    """A migrated PostgreSQL in its own network namespace, of the build under test."""
    from migrations import apply_pending
    from tally.localdb import PG_VERSION, POSTGRES_VERSIONS

    bin_dir = os.environ.get("TEST_POSTGRES_BIN")
    with netns.NamespacedPostgres(Path(bin_dir) if bin_dir else POSTGRES_VERSIONS[PG_VERSION]) as started:
        apply_pending(started.admin_url)
        yield started


@pytest.fixture
def admin(server) -> psycopg.Connection:
    """A connection over the unix socket, which no partition touches."""
    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        conn.execute("TRUNCATE page_views, procrastinate_jobs, procrastinate_workers CASCADE")
        conn.execute("TRUNCATE procrastinate_periodic_defers")
        yield conn
        server.heal()


def request(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 15.0):
    """(status, seconds) of one request; status None when the client gave up waiting."""
    started = time.monotonic()
    headers = {"Content-Type": "application/json"} if body is not None else {**OWNER}
    call = urllib.request.Request(f"http://127.0.0.1:{port}{path}", body, headers, method=method)
    try:
        with urllib.request.urlopen(call, timeout=timeout) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        error.read()
        status = error.code
    except TimeoutError:
        status = None
    return status, time.monotonic() - started


def listening(admin: psycopg.Connection, dyno: str) -> bool:
    row = admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND query LIKE 'LISTEN%%'",
        (dyno,),
    ).fetchone()
    return row[0] > 0


def clock_deferred_since(admin: psycopg.Connection, since: float) -> bool:
    """Whether a clock deferred a periodic job after `since` (seconds since the epoch)."""
    row = admin.execute(
        "SELECT count(*) FROM procrastinate_events event"
        " JOIN procrastinate_jobs job ON job.id = event.job_id"
        " WHERE job.task_name = 'retry_stalled_jobs' AND event.type = 'deferred'"
        " AND event.at > to_timestamp(%s)",
        (since,),
    ).fetchone()
    return row[0] > 0


def test_a_silent_partition_gets_503s_in_time_and_everything_recovers(start_process, server, admin):
    port = free_port()
    env = {"DATABASE_URL": server.tcp_url}
    web = start_process(["web.py"], {**env, "PORT": str(port), "ADMIN_TOKEN": ADMIN_TOKEN})
    worker = start_process(["worker.py"], {**env, "POLL_INTERVAL_SECONDS": "300", "DYNO": "worker.7"})
    clock = start_process(
        ["clock.py"],
        {**env, "RETRY_STALLED_SCHEDULE": "* * * * * */2", "CLEANUP_SCHEDULE": "0 0 1 1 *",
         "ROLLUP_SCHEDULE": "0 0 1 1 *", "PRUNE_SCHEDULE": "0 0 1 1 *"},
    )  # fmt: skip
    web.wait_for_line("Serving on")
    worker.wait_for_line("Starting worker")
    clock.wait_for_line("CLOCK PROCESS STARTED")
    wait_until(lambda: request(port, "GET", "/api/health")[0] == 200, 10, 0.1, "health")
    wait_until(lambda: listening(admin, "worker.7"), 10, 0.1, "the worker to LISTEN")

    posts: list[tuple[str, int | None, float]] = []  # (path, status, seconds)
    stop_posting = threading.Event()

    def post_every_50_ms() -> None:
        while not stop_posting.is_set():
            path = f"/partition/{threading.get_ident()}/{len(posts)}"
            status, took = request(port, "POST", "/api/pageviews", json.dumps({"path": path}).encode())
            posts.append((path, status, took))
            stop_posting.wait(0.05)

    posters = [threading.Thread(target=post_every_50_ms) for _ in range(POSTERS)]
    for poster in posters:
        poster.start()
    time.sleep(1)

    server.partition()
    dropped = server.drop_clients()
    cut_at = time.monotonic()
    # Each route asked over and over by its own client while the network is silent.
    during: dict[str, list[tuple[int | None, float]]] = {path: [] for path in ROUTES_ASKED}

    def ask_until_healed(path: str) -> None:
        while time.monotonic() - cut_at < OUTAGE_SECONDS:
            during[path].append(request(port, "GET", path))

    askers = [threading.Thread(target=ask_until_healed, args=(path,)) for path in ROUTES_ASKED]
    for asker in askers:
        asker.start()
    for asker in askers:
        asker.join()
    server.heal()
    healed_at = time.monotonic()

    wait_until(lambda: request(port, "GET", "/api/health", timeout=5)[0] == 200, 30, 0.05, "health 200")
    health_back = time.monotonic() - healed_at
    stop_posting.set()
    for poster in posters:
        poster.join(30)
    try:
        wait_until(lambda: listening(admin, "worker.7"), 30, 0.05, "the worker to LISTEN again")
    except AssertionError as error:
        raise AssertionError(f"{error}; worker's log:\n{worker.output()[-6000:]}") from None
    listen_back = time.monotonic() - healed_at
    defer_by_sql(admin, "prune_finished_jobs")
    wait_until(lambda: statuses(admin, "prune_finished_jobs") == ["succeeded"], 30, 0.05, "a new job")
    job_back = time.monotonic() - healed_at
    wall_healed = time.time() - (time.monotonic() - healed_at)
    try:
        wait_until(lambda: clock_deferred_since(admin, wall_healed), 30, 0.05, "the clock to defer")
    except AssertionError as error:
        raise AssertionError(f"{error}; clock's log:\n{clock.output()[-6000:]}") from None
    clock_back = time.monotonic() - healed_at

    accepted = [path for path, status, _ in posts if status == 201]
    refused = [status for _, status, _ in posts if status != 201]
    stored = dict(admin.execute("SELECT path, count(*) FROM page_views GROUP BY path").fetchall())
    refused_but_stored = sum(1 for path, status, _ in posts if status != 201 and path in stored)
    slowest_post = max(took for _, _, took in posts)
    slowest = {path: max(took for _, took in answers) for path, answers in during.items()}
    answered = {path: {status for status, _ in answers} for path, answers in during.items()}
    print(
        f"partition of {OUTAGE_SECONDS:g} s ({dropped} sessions ended): slowest answers "
        + ", ".join(f"{path} {took:.2f} s" for path, took in slowest.items())
        + f" ({len(during['/api/health'])} health asks); posts:"
        f" {len(accepted)} answered 201, {len(refused)} refused ({refused_but_stored} of them stored),"
        f" slowest {slowest_post:.2f} s; after:"
        f" health 200 in {health_back:.1f} s, LISTEN in {listen_back:.1f} s, a new job done in"
        f" {job_back:.1f} s, the clock deferring in {clock_back:.1f} s"
    )
    # /metrics answers 200 with what it could gather (its queue metrics go missing).
    assert answered == {path: {200} if path == "/metrics" else {503} for path in ROUTES_ASKED}
    assert slowest["/api/health"] < 2.0 and max(slowest.values()) < 5.0
    assert slowest_post < 5.0 and set(refused) <= {503}
    assert all(stored.get(path) == 1 for path in accepted) and set(stored.values()) == {1}
    assert health_back < 5.0
    assert job_back < 10.0 and clock_back < 10.0
    for process in (web, worker, clock):
        assert process.popen.poll() is None


def test_the_server_ends_the_session_of_a_client_behind_a_silent_partition(server, admin):
    """A cloud network fault leaves no RST: without keepalives of its own the server keeps a
    vanished client's session (its connection slot, its advisory locks) for two hours
    (tcp_keepalives_idle=7200 by default), so each outage leaked every pool's connections
    until the next reconnects met `too many clients`. Tally's sessions set the server's
    probes as the client's are set, so the server ends such a session within seconds."""
    from tally import config, db

    settings = config.from_env({"DATABASE_URL": server.tcp_url, "DYNO": "web.9"}, process_type="web")
    conn = psycopg.connect(server.tcp_url, **db.connection_kwargs(settings, db.WEB_SESSION_SETTINGS))
    try:
        pid = conn.info.backend_pid
        server.partition()
        try:
            sessions = "SELECT count(*) FROM pg_stat_activity WHERE pid = %s"
            wait_until(
                lambda: admin.execute(sessions, [pid]).fetchone()[0] == 0,
                20,
                0.2,
                "the server to end the vanished client's session",
            )
        finally:
            server.heal()
    finally:
        conn.close()
