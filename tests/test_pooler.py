"""Tally behind a transaction-mode pooler (PgBouncer, Heroku's connection pooling), for real:
DATABASE_POOLER=transaction, and what happens without it (README "PgBouncer")."""

from __future__ import annotations

import collections
import concurrent.futures
import json
import logging
import time
import urllib.error
import urllib.request

import psycopg
import pytest
import webtest

import jobs
import migrations
from tally.config import from_env
from tally.db import web_pool
from tally.web.app import build_app
from tests import pooler
from tests.conftest import defer_by_sql, free_port, statuses, wait_until

TOKEN = "s3cret-token"
needs_pgbouncer = pytest.mark.skipif(pooler.missing() is not None, reason=str(pooler.missing()))


def _request(method: str, url: str, body: dict | None = None) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, data, headers, method=method), timeout=15
        ) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@needs_pgbouncer
def test_web_worker_and_clock_run_through_a_transaction_pooler(database_url, conn, start_process):
    """With DATABASE_POOLER=transaction every pool prepares nothing, workers poll and hold no
    session lock: through PgBouncer 1.18 47% of beacons answered 500 (a statement prepared on one
    server connection, run on another), the worker restarted and the clock failed its defers."""
    with pooler.PgBouncer(database_url, pool_size=3) as bouncer:
        env = {
            "DATABASE_URL": bouncer.url,
            "DATABASE_POOLER": "transaction",
            "ADMIN_TOKEN": TOKEN,
            "POLL_INTERVAL_SECONDS": "0.5",
            "ROLLUP_SCHEDULE": "* * * * * */2",
            "RETRY_STALLED_SCHEDULE": "* * * * * */2",
        }
        port = free_port()
        web = start_process(["web.py"], {**env, "PORT": str(port), "DYNO": "web.1"})
        worker = start_process(["worker.py"], {**env, "DYNO": "worker.1"})
        clock = start_process(["clock.py"], {**env, "DYNO": "clock.1"})
        web.wait_for_line("Serving on")
        worker.wait_for_line("worker.py")
        base = f"http://127.0.0.1:{port}"
        answers: collections.Counter = collections.Counter()
        stored_paths: list[str] = []

        def send(sender: int) -> None:
            deadline = time.monotonic() + 4
            n = 0
            while time.monotonic() < deadline:
                n += 1
                path = f"/p-{sender}-{n}"
                status, _ = _request("POST", f"{base}/api/pageviews", {"path": path})
                answers[("POST /api/pageviews", status)] += 1
                if status == 201:
                    stored_paths.append(path)
                for read in ("/api/jobs", "/api/stats?days=7", "/api/sites", "/", "/api/export?days=7"):
                    if n % 5 == 0:
                        answers[(read, _request("GET", base + read)[0])] += 1

        with concurrent.futures.ThreadPoolExecutor(8) as senders:
            list(senders.map(send, range(8)))
        status, body = _request("POST", f"{base}/api/jobs/cleanup_old_page_views")
        assert status == 202, body
        job_id = json.loads(body)["job_id"]
        wait_until(
            lambda: (
                conn.execute("SELECT status FROM procrastinate_jobs WHERE id = %s", (job_id,)).fetchone()[0]
                == "succeeded"
            ),
            timeout=15,
            message="the deferred job to run",
        )
        wait_until(
            lambda: conn.execute("SELECT count(*) FROM procrastinate_periodic_defers").fetchone()[0] >= 2,
            timeout=10,
            message="the clock's defers",
        )
        logs = {"web": web.output(), "worker": worker.output(), "clock": clock.output()}
    assert {key: count for key, count in answers.items() if key[1] != 200 and key[1] != 201} == {}, logs[
        "web"
    ][-3000:]
    rows = conn.execute("SELECT path, count(*) FROM page_views GROUP BY path").fetchall()
    assert len(stored_paths) > 100 and dict(rows) == {path: 1 for path in stored_paths}
    for name, output in logs.items():
        assert "prepared statement" not in output.lower() and "PreparedStatement" not in output, (
            name,
            output[-3000:],
        )
    assert "worker restarting" not in logs["worker"] and "could not defer" not in logs["clock"]
    assert "listen_notify=False" in logs["worker"]  # it polls: a notification would reach nobody


def test_a_prepared_statement_the_server_lost_is_a_503_naming_the_setting(database_url, conn, caplog):
    """A statement psycopg prepared and the server no longer has (what a transaction pooler does
    to most of them): 503, nothing stored, and a line naming DATABASE_POOLER; it was a 500."""
    settings = from_env({"DATABASE_URL": database_url, "WEB_POOL_SIZE": "2"}, process_type="web")
    with web_pool(settings) as pool:
        client = webtest.TestApp(build_app(settings, pool, jobs.app))
        for n in range(14):  # each connection runs the insert past psycopg's prepare_threshold (5)
            assert client.post_json("/api/pageviews", {"path": f"/{n}"}).status_int == 201
        with pool.connection() as first, pool.connection() as second:
            for connection in (first, second):
                names = [row[0] for row in connection.execute("SELECT name FROM pg_prepared_statements")]
                assert names  # psycopg's; by name (psycopg forgets its own at a DEALLOCATE ALL)
                for name in names:
                    connection.execute(f'DEALLOCATE "{name}"')
        with caplog.at_level(logging.ERROR, logger="tally.web"):
            response = client.post_json("/api/pageviews", {"path": "/lost"}, status=503)
    assert "DATABASE_POOLER=transaction" in response.json["error"]
    assert "nothing was changed" in response.json["error"]
    assert "set DATABASE_POOLER=transaction" in caplog.text
    assert conn.execute("SELECT count(*) FROM page_views WHERE path = '/lost'").fetchone()[0] == 0


def test_with_database_pooler_the_web_prepares_nothing(database_url, conn):
    settings = from_env({"DATABASE_URL": database_url, "DATABASE_POOLER": "transaction"}, process_type="web")
    with web_pool(settings) as pool:
        client = webtest.TestApp(build_app(settings, pool, jobs.app))
        for n in range(14):
            assert client.post_json("/api/pageviews", {"path": f"/{n}"}).status_int == 201
        with pool.connection() as first, pool.connection() as second:
            for connection in (first, second):
                assert connection.prepare_threshold is None
                assert connection.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0] == 0


@needs_pgbouncer
def test_a_release_through_a_pooler_stops_and_leaves_no_lock_behind(fresh_database):
    """Through a transaction pooler the release's lock and its unlock ran on two server
    connections: the unlock failed unchecked, the lock stayed on a pooled server connection
    (for the pooler's server_lifetime, an hour) and every release after it waited for good."""
    with pooler.PgBouncer(fresh_database, pool_size=2, round_robin=True) as bouncer:
        with pytest.raises(
            migrations.ReleaseLockLost, match="run the release step on the direct database URL"
        ):
            migrations.apply_pending(bouncer.url)
        with psycopg.connect(fresh_database, autocommit=True) as direct:
            held = direct.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s",
                (migrations.ADVISORY_LOCK_KEY & 0xFFFFFFFF,),
            ).fetchone()[0]
            assert held == 0
            assert direct.execute("SELECT to_regclass('tally_migrations')").fetchone()[0] is None
        # The direct URL is not held up by it.
        assert migrations.apply_pending(fresh_database)


def test_a_polling_worker_runs_the_job_an_ended_one_held_back_at_once(conn, start_process):
    """Jobs of one-at-a-time tasks (cleanup, rollup, partitions, reports, salts) deferred together:
    a polling worker (DATABASE_POOLER=transaction) ran them one POLL_INTERVAL_SECONDS apart."""
    defer_by_sql(conn, "cleanup_old_page_views", count=3, lock="cleanup_old_page_views")
    start_process(["worker.py"], {"LISTEN_NOTIFY": "false", "POLL_INTERVAL_SECONDS": "30"})
    wait_until(
        lambda: statuses(conn, "cleanup_old_page_views") == ["succeeded"] * 3,
        timeout=10,
        message="three cleanups in a row, each started when the one before ended",
    )
