"""The rollup by snapshot (migrations/0004): exact, never held back, and planned with real figures."""

from __future__ import annotations

import contextlib
import datetime
import json
import random
from collections.abc import Iterator

import psycopg
import pytest

import jobs
from jobs import page_views
from tally.db import QUERIES
from tests.conftest import PATH_VIEWS, statuses
from tests.test_jobs import defer, insert_views, run_queued_jobs
from tests.test_web import TOKEN, assert_exact, make_client, roll_up

OTHER_DATABASE = "tally_test_other_app"


@pytest.fixture
def client(database_url, pool):
    return make_client(database_url, pool, owner=True, ADMIN_TOKEN=TOKEN)


@pytest.fixture(scope="session")
def other_database_url(database_url: str) -> str:
    """Another database on the same server, as another app sharing a Heroku Postgres."""
    with psycopg.connect(database_url, autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (OTHER_DATABASE,)).fetchone()
        if not exists:
            admin.execute(f"CREATE DATABASE {OTHER_DATABASE}")
    return psycopg.conninfo.make_conninfo(database_url, dbname=OTHER_DATABASE)


@contextlib.contextmanager
def open_write_transaction(url: str) -> Iterator[psycopg.Connection]:
    """A transaction that holds a transaction id and stays open, like a forgotten BEGIN in psql."""
    with psycopg.connect(url) as held:
        held.execute("SELECT pg_current_xact_id()")  # a write would assign it too
        yield held
        held.rollback()


def state(conn: psycopg.Connection) -> dict:
    """The rollup state and the tail's span of days, as a stats request reads them."""
    row = conn.execute(QUERIES["stats_state"], {"tz": "UTC"}).fetchone()
    return {"watermark": row[0], "in_progress": row[1], "tail_from": row[4], "tail_to": row[5]}


def waiting(conn: psycopg.Connection) -> int:
    return conn.execute(QUERIES["views_waiting"], state(conn)).fetchone()[0]


@pytest.mark.parametrize("where", ["another database", "Tally's own database"])
def test_an_open_transaction_anywhere_does_not_hold_the_rollup_back(
    where, client, conn, database_url, other_database_url
):
    with open_write_transaction(other_database_url if where == "another database" else database_url):
        insert_views(conn, 3000, "2 hours")
        assert roll_up(conn) == 3000
        assert waiting(conn) == 0
        health = client.get("/api/health").json
        assert health["rollup_views_waiting"] == 0 and health["rollup_age_seconds"] < 5
        assert assert_exact(client, conn, 30)["total_views"] == 3000


def test_cleanup_deletes_on_time_while_a_transaction_is_held_open(conn, other_database_url):
    with open_write_transaction(other_database_url):
        insert_views(conn, 500, "45 days")
        insert_views(conn, 20, "1 hour")
        defer(page_views.cleanup_old_page_views)
        run_queued_jobs()
        assert statuses(conn, "cleanup_old_page_views") == ["succeeded"]
        assert conn.execute("SELECT count(*) FROM page_views").fetchone()[0] == 20
    assert conn.execute("SELECT sum(views) FROM page_view_buckets").fetchone()[0] == 520


def test_a_view_committing_minutes_later_behind_a_held_transaction_counts_once(
    client, conn, database_url, other_database_url
):
    with open_write_transaction(other_database_url), psycopg.connect(database_url) as late:
        late.execute("INSERT INTO page_views (path) VALUES ('/late')")
        insert_views(conn, 50, "1 hour")
        assert roll_up(conn) == 50
        assert assert_exact(client, conn, 30)["total_views"] == 50
        insert_views(conn, 10, "5 minutes")
        assert roll_up(conn) == 10  # the late view's transaction is still running: not folded
        late.commit()
        assert assert_exact(client, conn, 30)["total_views"] == 61  # in the tail now
        assert roll_up(conn) == 1
        assert roll_up(conn) == 0
        assert assert_exact(client, conn, 30)["total_views"] == 61
    assert conn.execute("SELECT sum(views) FROM page_view_buckets").fetchone()[0] == 61
    assert conn.execute(PATH_VIEWS).fetchone()[0] == 61


def test_views_of_an_aborted_transaction_are_never_counted(client, conn, database_url):
    with psycopg.connect(database_url) as aborted:
        aborted.execute("INSERT INTO page_views (path) VALUES ('/never')")
        insert_views(conn, 1, "1 minute")  # a later transaction commits: the open one is below the watermark
        assert roll_up(conn) == 1
        assert state(conn)["in_progress"], "the open transaction is remembered"
        aborted.rollback()
    assert roll_up(conn) == 0
    assert state(conn)["in_progress"] == []
    assert assert_exact(client, conn, 30)["total_views"] == 1


def test_random_interleavings_of_commits_aborts_and_rollups_count_every_view_once(
    client, conn, database_url, other_database_url
):
    """Views from several sessions, committed or aborted in any order around rollups and stats."""
    chooser = random.Random(20261129)
    sessions = [psycopg.connect(database_url) for _ in range(4)] + [psycopg.connect(other_database_url)]
    try:
        for step in range(150):
            session = chooser.choice(sessions)
            action = chooser.random()
            if action < 0.45:
                if session.info.dbname == OTHER_DATABASE:
                    session.execute("SELECT pg_current_xact_id()")
                else:
                    session.execute(
                        "INSERT INTO page_views (path, viewed_at)"
                        " SELECT '/s' || n, now() - n * interval '7 hours' FROM generate_series(1, %s) n",
                        (chooser.randint(1, 5),),
                    )
            elif action < 0.65:
                session.commit()
            elif action < 0.75:
                session.rollback()
            elif action < 0.9:
                roll_up(conn)
            else:
                assert_exact(client, conn, chooser.choice([1, 7, 30]))
            if step % 10 == 0:
                assert_exact(client, conn, 30)
        for session in sessions:
            session.commit()
        roll_up(conn)
        body = assert_exact(client, conn, 366)
        counted = conn.execute("SELECT count(*) FROM page_views").fetchone()[0]
        assert body["total_views"] == counted > 0
        assert conn.execute("SELECT sum(views) FROM page_view_buckets").fetchone()[0] == counted
    finally:
        for session in sessions:
            session.close()


# --- plans -------------------------------------------------------------------------------


def plan(conn: psycopg.Connection, query: str, params: dict) -> dict:
    """EXPLAIN's JSON for one of Tally's queries, planned as the web plans it (values bound)."""
    row = conn.execute("EXPLAIN (FORMAT JSON) " + query, params).fetchone()[0]
    document = row if isinstance(row, list) else json.loads(row)
    return document[0]["Plan"]


def scans(node: dict) -> Iterator[tuple[str, str | None]]:
    """(node type, relation) for every node of a plan."""
    yield node["Node Type"], node.get("Relation Name")
    for child in node.get("Plans", []):
        yield from scans(child)


@pytest.fixture
def large_table(conn):
    """200,000 rolled-up views and 1,500 fresh ones, statistics gathered as autovacuum would."""
    conn.execute(
        "INSERT INTO page_views (path, viewed_at)"
        " SELECT '/p' || n % 300, now() - (n % 700) * interval '1 hour' FROM generate_series(1, 200000) n"
    )
    roll_up(conn)
    conn.execute("ANALYZE page_views")
    insert_views(conn, 1500, "10 minutes")  # arrived after the statistics were gathered
    return conn


def test_stats_queries_never_reach_the_jit_threshold_and_never_scan_the_table(large_table):
    conn = large_table
    conn.execute("SET jit = on")  # as on a server with JIT, even through a pooler that drops our options
    threshold = float(conn.execute("SHOW jit_above_cost").fetchone()[0])
    bounds = state(conn)
    since = conn.execute("SELECT now() - interval '30 days'").fetchone()[0]
    for name, site in [
        ("stats_tail", None),
        ("stats_tail", "example.com"),
        ("stats_tail_days", None),
        ("stats_tail_days", "example.com"),
        ("stats_tail_visitors", None),
        ("sites_tail", None),
        ("views_waiting", None),
        ("page_views_total", None),
    ]:
        parameters = {
            **bounds,
            "site": site,
            "since": since,
            "recent": since,
            "now_bucket": since,
            "now": datetime.datetime.now(datetime.UTC),
            "tz": "Asia/Kathmandu",
            "from_xid": str(bounds["watermark"]),  # the whole tail's (id, day)s
            "running": [str(xid) for xid in bounds["in_progress"]],
            "days": None,
            "as_of": None,
        }
        root = plan(conn, QUERIES[name], parameters)
        assert root["Total Cost"] < threshold / 10, (name, site, root["Total Cost"])
        assert ("Seq Scan", "page_views") not in set(scans(root)), (name, site)
    cleanup = plan(
        conn,
        QUERIES["delete_expired_page_views_batch"],
        {**bounds, "cutoff": "2000-01-01", "batch_size": jobs.settings.cleanup_batch_size},
    )
    assert cleanup["Total Cost"] < threshold


def test_the_rollup_runs_without_jit_whatever_the_session_says(large_table):
    conn = large_table
    conn.execute("SET jit = on")
    conn.execute("SET jit_above_cost = 0")  # compile everything this session plans itself
    settings = conn.execute(
        "SELECT proconfig FROM pg_proc WHERE proname = 'tally_rollup_page_views'"
    ).fetchone()[0]
    assert "jit=off" in settings and "plan_cache_mode=force_custom_plan" in settings
    assert roll_up(conn) == 1500


# --- the web asks for rollups ---------------------------------------------------------------


def test_a_long_tail_makes_stats_ask_for_one_rollup(client, conn):
    insert_views(conn, 1200, "1 hour")
    for _ in range(3):
        assert client.get("/api/stats").json["total_views"] == 1200
    assert statuses(conn, "rollup_page_views") == ["todo"]  # asked once, queued once
    run_queued_jobs()
    assert waiting(conn) == 0
    assert client.get("/api/stats").json["total_views"] == 1200


def test_a_short_tail_asks_for_nothing(client, conn):
    insert_views(conn, 100, "1 hour")
    client.get("/api/stats")
    assert statuses(conn, "rollup_page_views") == []


def test_rollup_lag_shows_in_health_metrics_and_dashboard(client, conn, database_url, pool):
    insert_views(conn, 7, "1 hour")
    health = client.get("/api/health").json
    assert health["rollup_views_waiting"] == 7 and health["rollup_age_seconds"] is None
    roll_up(conn)
    insert_views(conn, 3, "1 minute")
    health = client.get("/api/health").json
    assert health["rollup_views_waiting"] == 3 and 0 <= health["rollup_age_seconds"] < 5
    metrics = client.get("/metrics").text
    assert "tally_rollup_views_waiting 3.0" in metrics
    # Health is public: the views waiting are the last minutes' traffic, for the owner and the
    # metrics token only (a wrong token gets the public answer, and counts toward the limit).
    anyone = make_client(database_url, pool, ADMIN_TOKEN=TOKEN, METRICS_TOKEN="metrics-" + "m" * 20)
    assert "rollup_views_waiting" not in anyone.get("/api/health").json
    wrong = {"Authorization": "Bearer not-the-token"}
    assert "rollup_views_waiting" not in anyone.get("/api/health", headers=wrong).json
    scraper = {"Authorization": "Bearer metrics-" + "m" * 20}
    assert anyone.get("/api/health", headers=scraper).json["rollup_views_waiting"] == 3
    assert "tally_rollup_age_seconds " in metrics
    page = client.get("/").text
    assert 'id="rollup-waiting">3 views waiting' in page
