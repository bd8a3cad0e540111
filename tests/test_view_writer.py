"""Group commit: every view of concurrent requests stored once, in fewer INSERTs, errors kept apart."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import re
import threading
import time
from collections.abc import Callable

import psycopg
import pytest

from tally import db
from tally.config import from_env
from tally.db import web_pool
from tally.web.view_writer import InsertQueueTimeout, ViewWriter
from tests.conftest import free_port


def stored_paths(conn: psycopg.Connection) -> list[str]:
    return [row[0] for row in conn.execute("SELECT path FROM page_views ORDER BY path")]


def test_concurrent_writes_are_each_stored_once(pool, conn):
    writer = ViewWriter(pool)
    start = threading.Barrier(32)

    def write(index: int) -> None:
        start.wait()
        for round_ in range(20):
            writer.write([(f"/t{index:02d}/{round_:02d}", None), (f"/t{index:02d}/{round_:02d}b", "r")])

    with concurrent.futures.ThreadPoolExecutor(32) as executor:
        list(executor.map(write, range(32)))
    expected = sorted(
        f"/t{i:02d}/{r:02d}{suffix}" for i in range(32) for r in range(20) for suffix in ("", "b")
    )
    assert stored_paths(conn) == expected


def test_a_lone_write_is_committed_when_it_returns(pool, database_url):
    writer = ViewWriter(pool)
    writer.write([("/now", "https://example.com/")])
    with psycopg.connect(database_url) as other:  # another session sees it: committed
        assert other.execute("SELECT path, referrer FROM page_views").fetchall() == [
            ("/now", "https://example.com/")
        ]


@pytest.mark.parametrize(
    ("bad_path", "error"),
    [
        ("no-slash", psycopg.errors.CheckViolation),  # the table's own check
        ("/lone-\ud800", psycopg.DataError),  # JSON carries it as an escape the server refuses
        ("/nul-\x00", psycopg.DataError),  # text cannot hold it
    ],
)
def test_a_refused_request_does_not_take_the_others_down_with_it(pool, conn, bad_path, error):
    """A row the database refuses (validation would have caught it) fails its own request only."""
    writer = ViewWriter(pool)
    start = threading.Barrier(12)
    outcomes: dict[int, str] = {}

    def write(index: int) -> None:
        start.wait()
        path = bad_path if index == 5 else f"/ok{index}"
        try:
            writer.write([(path, None)])
            outcomes[index] = "stored"
        except error:
            outcomes[index] = "refused"

    threads = [threading.Thread(target=write, args=(index,)) for index in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert outcomes == {index: "refused" if index == 5 else "stored" for index in range(12)}
    assert stored_paths(conn) == sorted(f"/ok{index}" for index in range(12) if index != 5)


def test_an_unreachable_database_fails_every_waiting_request_and_the_next_one_leads(conn):

    bad = from_env(
        {"DATABASE_URL": "postgresql://postgres@/postgres?host=/nonexistent-tally"}, process_type="web"
    )
    with web_pool(bad) as unreachable:
        writer = ViewWriter(unreachable)
        errors = []

        def write() -> None:
            try:
                writer.write([("/x", None)])
            except Exception as error:
                errors.append(type(error).__name__)

        threads = [threading.Thread(target=write) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(errors) == 6 and not any(thread.is_alive() for thread in threads)


@pytest.mark.slow
def test_web_stores_every_view_of_64_connections_once_in_shared_inserts(start_process, conn):
    port = free_port()
    web = start_process(["web.py"], {"PORT": str(port), "METRICS_TOKEN": "scraper-token"})
    web.wait_for_line("Serving on")

    def client(index: int) -> list[int]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        answers = []
        for round_ in range(25):
            body = json.dumps({"path": f"/c{index:02d}/{round_:02d}"})
            connection.request("POST", "/api/pageviews", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            answers.append(response.status)
        connection.close()
        return answers

    with concurrent.futures.ThreadPoolExecutor(64) as executor:
        statuses = [status for answers in executor.map(client, range(64)) for status in answers]
    assert statuses == [201] * 64 * 25
    assert stored_paths(conn) == sorted(f"/c{i:02d}/{r:02d}" for i in range(64) for r in range(25))
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/metrics", headers={"Authorization": "Bearer scraper-token"})
    metrics = connection.getresponse().read().decode()
    inserts = float(re.search(r"^tally_page_view_inserts_total (\S+)$", metrics, re.M).group(1))
    assert 0 < inserts < 64 * 25 / 2, "concurrent requests share INSERTs"


def test_writes_behind_a_locked_table_fail_in_bounded_time_and_store_nothing(pool, conn, database_url):
    """The leader waits out the web's lock_timeout; those queued behind it fail with it."""
    writer = ViewWriter(pool)
    start = threading.Barrier(8)

    def write(index: int) -> tuple[str, float]:
        start.wait()
        began = time.monotonic()
        try:
            writer.write([(f"/locked/{index}", None)])
            outcome = "stored"
        except psycopg.OperationalError as error:  # LockNotAvailable
            outcome = type(error).__name__
        return outcome, time.monotonic() - began

    with psycopg.connect(database_url) as locker:
        locker.execute("LOCK TABLE page_views IN ACCESS EXCLUSIVE MODE")
        with concurrent.futures.ThreadPoolExecutor(8) as executor:
            results = list(executor.map(write, range(8)))
        locker.rollback()
    assert {outcome for outcome, _ in results} == {"LockNotAvailable"}
    assert max(took for _, took in results) < 2 * db.WEB_LOCK_TIMEOUT_MS / 1000  # one wait, not two
    assert stored_paths(conn) == []
    writer.write([("/after", None)])  # and the writer is not stuck
    assert stored_paths(conn) == ["/after"]


def test_a_request_queued_too_long_leaves_the_queue_unstored(pool, conn, database_url):
    writer = ViewWriter(pool, queue_wait_seconds=0.3)
    with psycopg.connect(database_url) as locker:
        locker.execute("LOCK TABLE page_views IN ACCESS EXCLUSIVE MODE")
        leader_errors: list[BaseException] = []

        def lead() -> None:
            try:
                writer.write([("/a", None)])
            except psycopg.OperationalError as error:
                leader_errors.append(error)

        leader = threading.Thread(target=lead)
        leader.start()
        time.sleep(0.1)  # the leader is now waiting for the lock
        with pytest.raises(InsertQueueTimeout):
            writer.write([("/b", None)])
        leader.join()
        locker.rollback()
    assert len(leader_errors) == 1  # the leader waited out the lock itself
    writer.write([("/c", None)])
    assert stored_paths(conn) == ["/c"]


def transactions_of(conn: psycopg.Connection, paths: list[str]) -> int:
    """How many transactions (each INSERT autocommits) stored these paths."""
    return conn.execute(
        "SELECT count(DISTINCT recorded_xid) FROM page_views WHERE path = ANY(%s)", (paths,)
    ).fetchone()[0]


def test_writes_one_after_another_never_wait_for_the_commit_delay(pool, conn):
    """Groups of one stay under COMMIT_SIBLINGS: no leader sleeps, however long the delay."""
    writer = ViewWriter(pool, commit_delay_seconds=5.0, commit_siblings=2)
    began = time.monotonic()
    for index in range(5):
        writer.write([(f"/one-by-one/{index}", None)])
    assert time.monotonic() - began < 2.0
    assert transactions_of(conn, [f"/one-by-one/{index}" for index in range(5)]) == 5


def test_when_busy_the_leader_waits_and_takes_the_requests_that_arrive_meanwhile(pool, conn):
    writer = ViewWriter(pool, commit_delay_seconds=0.6, commit_siblings=1)
    began = time.monotonic()
    writer.write([("/first", None)])  # nothing before it: stored at once, a group of one
    assert time.monotonic() - began < 0.5
    leader = threading.Thread(target=writer.write, args=([("/leader", None)],))
    leader.start()  # the last group held 1 >= commit_siblings: this leader sleeps first
    time.sleep(0.2)
    began = time.monotonic()
    writer.write([("/joined", None)])  # arrives during the delay: queued, and in its group
    leader.join(5)
    assert time.monotonic() - began < 0.6
    assert transactions_of(conn, ["/leader", "/joined"]) == 1
    assert transactions_of(conn, ["/first", "/leader"]) == 2


def held_reads() -> tuple[threading.Semaphore, threading.Event, Callable]:
    """A read that takes a connection, says so (`held`), and keeps it until `release` (at most 10 s)."""
    held, release = threading.Semaphore(0), threading.Event()

    def slow_read(read_pool):
        with read_pool.connection() as connection:
            connection.execute("SELECT 1")
            held.release()
            release.wait(10)

    return held, release, slow_read


def test_slow_reads_leave_the_pool_to_the_views_arriving(pool, conn, monkeypatch):
    """Four owner reads held all four of the web's connections (a filter over many views runs
    up to the 5 s statement timeout, and a public dashboard lets anyone ask for one), and a
    beacon waited out its 1.5 s for a connection: a 503, a view lost. Reads on the primary now
    take at most the pool less the writers' two; the others wait their turn, then a 503."""
    from tally.web import replica

    monkeypatch.setattr(replica, "READ_WAIT_SECONDS", 0.3, raising=False)
    reads = replica.ReadRouter(pool)
    assert pool.max_size == 4
    held, release, slow_read = held_reads()

    with concurrent.futures.ThreadPoolExecutor(4) as executor:
        running = [executor.submit(reads.run, slow_read) for _ in range(4)]
        try:
            assert held.acquire(timeout=5) and held.acquire(timeout=5)
            # The other two wait their turn, and are turned away (before: took the last two).
            deadline = time.monotonic() + 3
            while sum(future.done() for future in running) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            started = time.monotonic()
            ViewWriter(pool).write([("/arrived", None)])
            assert time.monotonic() - started < 0.5
            with pool.connection(timeout=0.5) as connection:  # health's, say
                connection.execute("SELECT 1")
        finally:
            release.set()
    errors = [future.exception(timeout=10) for future in running]
    assert sorted(type(error).__name__ for error in errors) == [
        "NoneType",
        "NoneType",
        "ReadsBusy",
        "ReadsBusy",
    ]
    assert stored_paths(conn) == ["/arrived"]


def test_reads_with_the_primary_down_are_told_so_without_waiting_for_a_turn():
    """With the primary's connects failing (an outsider's iptables DROP), ten reads at once
    queued for the two turns, each then waiting out the pool's 1.5 s for a server already
    known down: the last answered after 5.9 s, and the two past the threads' share were told
    that slow reads held the database. Each now waits the pool's own wait at most, and all are
    told the database is unreachable."""
    from tally.checked_pool import NoConnection
    from tally.web import replica

    url = f"postgresql://tally@127.0.0.1:{free_port()}/tally"  # nothing listens there
    config = from_env({"DATABASE_URL": url, "WEB_THREADS": "16"}, process_type="web")
    with web_pool(config) as down:
        deadline = time.monotonic() + 10
        while down.last_connect_error is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert down.last_connect_error is not None
        reads = replica.ReadRouter(down, None, config)

        def read(pool) -> None:
            with pool.connection() as connection:
                connection.execute("SELECT 1")

        def timed() -> tuple[float, BaseException | None]:
            started = time.monotonic()
            try:
                reads.run(read)
            except Exception as error:
                return time.monotonic() - started, error
            return time.monotonic() - started, None

        with concurrent.futures.ThreadPoolExecutor(10) as executor:
            answers = list(executor.map(lambda _: timed(), range(10)))
        reads.close()
    assert [type(error) for _, error in answers] == [NoConnection] * 10
    assert {error.problem for _, error in answers} == {"unreachable"}
    assert max(took for took, _ in answers) < db.WEB_POOL_WAIT_SECONDS + 0.5


def test_reads_waiting_their_turn_leave_the_web_threads_to_the_views_arriving(
    pool, database_url, monkeypatch
):
    """The read turns kept slow reads off the views' connections, but a read waited for its turn
    in one of the web's threads: 24 requests for the busiest country (a share link is enough)
    held all 16, and beacons queued behind them in waitress for 5 s, 48 for 15 s (the Heroku
    router gives up at 30). Reads on the primary, running or waiting, now take at most half the
    threads; one more is turned away at once."""
    from tally.web import replica

    monkeypatch.setattr(replica, "READ_WAIT_SECONDS", 3.0, raising=False)
    config = from_env({"DATABASE_URL": database_url, "WEB_THREADS": "8"}, process_type="web")
    reads = replica.ReadRouter(pool, None, config)
    assert reads.read_slots == 2
    held, release, slow_read = held_reads()

    with concurrent.futures.ThreadPoolExecutor(4) as executor:
        running = [executor.submit(reads.run, slow_read) for _ in range(4)]  # 2 run, 2 wait
        try:
            assert held.acquire(timeout=5) and held.acquire(timeout=5)
            time.sleep(0.2)  # the other two wait their turn
            started = time.monotonic()
            with pytest.raises(replica.ReadsBusy):
                reads.run(slow_read)  # a fifth thread: half of 8 are in reads already
            assert time.monotonic() - started < 0.5
        finally:
            release.set()
    assert [future.exception(timeout=10) for future in running] == [None] * 4
