"""The figures about now of a filtered answer (tally/web/recent.py), and the reads of a few ids'
views they and a carried answer make: plans that stay linear in the rows they read, whatever
the planner estimates, and in one process whatever it thinks of workers."""

from __future__ import annotations

import datetime

import psycopg
import pytest

from tally.db import QUERIES
from tally.web import filtered
from tally.web.filtered import EVERY_VIEW
from tests.conftest import plan_nodes
from tests.test_web_collect import sites_client
from tests.test_web_exact import DIMENSION_COLUMNS

# The planner told that parallel workers cost nothing, as in test_web_exact's check that a
# filtered answer may use them: then a plan for a few rows puts them under a nested loop too.
FREE_WORKERS = (
    "parallel_setup_cost",
    "parallel_tuple_cost",
    "min_parallel_table_scan_size",
    "min_parallel_index_scan_size",
)


@pytest.fixture
def client(database_url, pool):
    return sites_client(database_url, pool)


@pytest.fixture
def plans(monkeypatch) -> dict[str, list[str]]:
    """The plan of each filtered_answer (as 'narrowed' when it counts a few ids, else 'whole') and
    filtered_recent_edges run from here on, made as the statement itself is, with workers free."""
    made: dict[str, list[str]] = {}
    original = psycopg.Cursor.execute

    def execute(self, query, params=None, *args, **kwargs):
        name = None
        if query == QUERIES["filtered_recent_edges"]:
            name = "edges"
        elif query == QUERIES["filtered_answer"]:
            name = "whole" if params["of_visitors"] is None else "narrowed"
        if name is not None:
            for setting in FREE_WORKERS:
                original(self, f"SET LOCAL {setting} = 0")
            original(self, "EXPLAIN " + query, params)
            made.setdefault(name, []).append("\n".join(row[0] for row in self.fetchall()))
        return original(self, query, params, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    return made


def test_a_few_ids_views_are_read_without_parallel_workers(client, conn, plans):
    """A join of a few ids to their views is estimated at a row or two. On PostgreSQL 18 the
    planner put a parallel sort (a Gather Merge) under a nested loop over them, which starts its
    workers again for each outer row: `?goal_path=` took 1.7 s a request, its
    filtered_recent_edges 1.8 s for 59 views, 11 ms in one process (300,000 views over 30 days).
    The edges of the last 24 hours and a carried answer's few ids are read in one process; the
    whole answer may still use workers."""
    conn.execute(
        "INSERT INTO page_views (site, path, country, visitor, viewed_at)"
        " SELECT 'example.com', '/p' || n % 7, 'DE', n % 300, now() - n * interval '10 seconds'"
        "   FROM generate_series(1, 20000) AS n"
    )
    conn.execute("ANALYZE page_views")
    query = {"days": "7", "tz": "UTC", "goal_path": "/p3", "compare": "previous"}
    first = client.get("/api/stats", query).json
    conn.execute(
        "INSERT INTO page_views (site, path, country, visitor)"
        " SELECT 'example.com', '/p3', 'DE', n FROM generate_series(1, 40) AS n"
    )
    later = client.get("/api/stats", query).json
    assert later["total_views"] == first["total_views"] + 40
    assert set(plans) == {"whole", "edges", "narrowed"}, plans.keys()
    for name in ("edges", "narrowed"):
        for plan in plans[name]:
            assert "Gather" not in plan, (name, plan)
    # The whole answer, counted before the edges: workers are allowed (the previous period's,
    # after them, has no views, and a plan without workers costs no more).
    assert "Gather" in plans["whole"][0], plans["whole"][0]


def rows_compared_by_join_filters(plan: dict) -> int:
    """The rows an EXPLAIN ANALYZE plan (JSON) compared and threw away in its joins' filters:
    how much a nested loop without an index to probe read for nothing."""
    return sum(
        node.get("Rows Removed by Join Filter", 0) * node.get("Actual Loops", 1) for node in plan_nodes(plan)
    )


def test_the_edges_under_a_goal_read_the_ids_that_reached_it_not_a_join_to_it(client, conn, monkeypatch):
    """Under a goal, the edges of the last 24 hours were the views of the ids of those minutes
    joined to the ids among them that reached the goal. Both sides estimated at a row (the ids
    are those of the views: the planner takes them as independent; and statistics taken before
    the minutes' views came), PostgreSQL 18 nested the loop with the goal's ids as the inner
    side and compared every pair: 9.2M rows for 10,000 views of 5,000 ids, 3.8 s a request
    (2.6 s on a copy of a real-sized database). The ids that reached the goal are found first,
    counted (goal_reached_ids), and the edges read their views with no goal to join: the same
    figures, no pair compared."""
    compared: list[int] = []
    original = psycopg.Cursor.execute

    def execute(self, query, params=None, *args, **kwargs):
        if query == QUERIES["filtered_recent_edges"]:
            original(self, "EXPLAIN (ANALYZE, FORMAT JSON) " + query, params)
            compared.append(rows_compared_by_join_filters(self.fetchone()[0][0]))
        return original(self, query, params, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    conn.execute("SELECT tally_ensure_day_partition(((now() AT TIME ZONE 'UTC') - interval '1 day')::date)")
    conn.execute(  # the day before: a view every 20 seconds, and statistics taken
        "INSERT INTO page_views (site, path, visitor, viewed_at)"
        " SELECT 'example.com', '/p' || n % 5, n % 3000, now() - n * interval '20 seconds'"
        "   FROM generate_series(1, 8000) AS n"
    )
    conn.execute("ANALYZE page_views")
    conn.execute(  # then 5,000 ids in the last minutes, a fifth of their views on the goal
        "INSERT INTO page_views (site, path, visitor)"
        " SELECT 'example.com', '/p' || n % 5, 90000 + n % 5000 FROM generate_series(1, 10000) AS n"
    )
    body = client.get("/api/stats", {"days": "7", "tz": "UTC", "goal_path": "/p3"}).json
    assert compared and max(compared) < 10_000, compared
    reached = "SELECT DISTINCT visitor FROM page_views WHERE path = '/p3' AND visitor IS NOT NULL"
    current = conn.execute(  # at the answer's own now
        f"SELECT count(DISTINCT visitor) FROM page_views"
        f" WHERE viewed_at >= %(now)s::timestamptz - interval '5 minutes' AND viewed_at <= %(now)s"
        f"   AND visitor IN ({reached})",
        {"now": body["generated_at"]},
    ).fetchone()[0]
    assert body["current_visitors"] == current == 1003, body["current_visitors"]  # 3 of the day before


def scanned_whole(plan: dict) -> set[str]:
    """The relations an EXPLAIN ANALYZE plan (JSON) read rows of by a sequential scan (an empty
    day partition's is costed at nothing, and reads nothing)."""
    return {
        node["Relation Name"]
        for node in plan_nodes(plan)
        if node["Node Type"] == "Seq Scan"
        and node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
    }


@pytest.mark.parametrize(
    "goal",
    [{"event": "Signup"}, {"goal_path": "/p0"}, {"country": "DE"}, {"event": "Signup", "country": "DE"}],
)
def test_a_carried_count_reads_each_changed_ids_views_by_the_index_whatever_their_number(conn, goal):
    """A kept filtered answer counts the ids that changed again (tally/web/carried.py), one
    statement each way. As a join of the ids to their views, the planner put it at a row (the
    ids are those of the views) and from a few hundred ids on hashed every view of the window
    (and a referrer filter's parsing of each), then nested loops over the CTEs built from it:
    1.5-3.9 s for 1,000 to 7,000 ids on 1M views (PostgreSQL 18), 5.3 s for 300 ids under
    `referrer=Google`, past the web's statement timeout. Each id's views, events and goals are
    now a probe of its own (a subquery the planner cannot flatten), so the count is linear in
    the ids: 20-35 ms for 300 ids, 0.5-0.9 s for 7,000, and no pair is compared."""
    conn.execute(
        "SELECT tally_ensure_day_partition(day::date) FROM generate_series("
        " (now() AT TIME ZONE 'UTC')::date - 30, (now() AT TIME ZONE 'UTC')::date, '1 day') AS day"
    )
    # Every day of the window is full, today's too: placed back from now, today's partition held
    # a few rows in a day's first minutes, and the planner rightly read those whole.
    conn.execute(
        "INSERT INTO page_views (site, path, country, visitor, viewed_at)"
        " SELECT 'example.com', '/p' || n % 7, CASE WHEN n % 3 = 0 THEN 'DE' ELSE 'US' END, n % 3000,"
        "        tomorrow - n * interval '40 seconds'"
        "   FROM generate_series(1, 60000) AS n,"
        "        (SELECT ((now() AT TIME ZONE 'UTC')::date + 1)::timestamp AT TIME ZONE 'UTC' AS tomorrow)"
        "          AS midnight"
    )
    conn.execute(
        "INSERT INTO events (site, name, path, visitor, occurred_at)"
        " SELECT 'example.com', 'Signup', '/p1', n % 3000, tomorrow - n * interval '400 seconds'"
        "   FROM generate_series(1, 6000) AS n,"
        "        (SELECT ((now() AT TIME ZONE 'UTC')::date + 1)::timestamp AT TIME ZONE 'UTC' AS tomorrow)"
        "          AS midnight"
    )
    conn.execute("ANALYZE page_views")
    conn.execute("ANALYZE events")
    now = datetime.datetime.now(datetime.UTC)
    start = datetime.datetime.combine(now.date() - datetime.timedelta(days=29), datetime.time(), datetime.UTC)
    end = datetime.datetime.combine(now.date() + datetime.timedelta(days=1), datetime.time(), datetime.UTC)
    ids = list(range(1000))
    params = {
        **{name: None for name in (*DIMENSION_COLUMNS, "event", "goal_path")},
        **EVERY_VIEW,
        **goal,
        **filtered.utc_days(start, end),
        "site": None,
        "tz": "UTC",
        "start": start,
        "end": end,
        "goals_only": "country" not in goal,
        "panels": True,
        "buckets": True,
        "of_sites": ["example.com"] * len(ids),
        "of_visitors": ids,
    }
    with (
        conn.transaction(),
        conn.cursor() as cur,
        filtered.planned_for_few_ids(cur),
    ):  # as the web counts them
        cur.execute(QUERIES["set_local_work_mem"], {"work_mem": filtered.WORK_MEM})
        cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + QUERIES["filtered_answer"], params)
        (plan,) = cur.fetchone()[0]
    assert not {name for name in scanned_whole(plan) if name.startswith("page_views")}, scanned_whole(plan)
    assert rows_compared_by_join_filters(plan) < 1_000, rows_compared_by_join_filters(plan)
