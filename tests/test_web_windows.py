"""The last 24 hours cut a bucket at each end (tally/web/windows.py, Window.ends): counted from
the rollups' whole buckets less a short raw part, they stay exact wherever now falls."""

from __future__ import annotations

import datetime
import random

import psycopg
import pytest

from tally.db import QUERIES
from tally.web.stats import StatsReader, snapshot
from tally.web.windows import BUCKET, DAY, Window, bucket_of
from tests.conftest import plan_nodes, request_bounds
from tests.test_web import roll_up

# Where a request's now falls in its bucket: on either side of its middle, at its edges.
OFFSETS = [
    datetime.timedelta(seconds=1),
    datetime.timedelta(minutes=3, seconds=20),
    datetime.timedelta(minutes=7, seconds=29),
    datetime.timedelta(minutes=7, seconds=31),
    datetime.timedelta(minutes=11, seconds=40),
    datetime.timedelta(minutes=14, seconds=59),
]


def window_at(now: datetime.datetime) -> Window:
    today = now.date()
    return Window.ending(now, today, 1, today)


def test_the_shorter_part_of_the_first_bucket_is_counted_raw():
    start = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)
    early, late = (
        window_at(start + datetime.timedelta(minutes=2)),
        window_at(start + datetime.timedelta(minutes=13)),
    )
    # 2 minutes into the bucket 24 hours ago: its 2 minutes before the cut, less from the whole.
    assert (early.ends(30).raw_from, early.ends(30).raw_to, early.ends(30).less) == (
        start - DAY,
        start - DAY + datetime.timedelta(minutes=2),
        True,
    )
    # 13 minutes in: its last 2 minutes, the views of the 24 hours themselves.
    assert (late.ends(30).raw_from, late.ends(30).raw_to, late.ends(30).less) == (
        start - DAY + datetime.timedelta(minutes=13),
        start - DAY + BUCKET,
        False,
    )
    # Retention of one day may have deleted raw views before the cut: never less.
    assert not early.ends(1).less
    assert (early.ends(1).raw_from, early.ends(1).raw_to) == (
        start - DAY + datetime.timedelta(minutes=2),
        start - DAY + BUCKET,
    )


def insert_around(conn: psycopg.Connection, moments: list[datetime.datetime]) -> None:
    conn.execute(
        "INSERT INTO page_views (path, viewed_at) SELECT '/p', unnest(%s::timestamptz[])",
        (moments,),
    )


@pytest.mark.parametrize("retention_days", [30, 1])
def test_views_of_the_last_24_hours_are_exact_wherever_now_falls_in_its_bucket(pool, conn, retention_days):
    """Views around both cuts of several nows (each 2 hours ago, at a point of its bucket),
    some rolled up and some in the tail, some at the cut itself; views_last_24h against a
    count of the raw views from now - 24 h to now. With a retention of one day, the raw views
    before the cut are deleted as the cleanup would."""
    rng = random.Random(24)
    base = bucket_of(conn.execute("SELECT now()").fetchone()[0]) - datetime.timedelta(hours=2)
    nows = [base + offset for offset in OFFSETS]

    def around(moment: datetime.datetime) -> list[datetime.datetime]:
        spread = [moment + datetime.timedelta(seconds=rng.uniform(-1200, 1200)) for _ in range(40)]
        return [*spread, moment, moment - DAY]

    for now in nows:
        insert_around(conn, around(now) + around(now - DAY))
    roll_up(conn)
    for now in nows:  # the tail: not rolled up
        insert_around(conn, around(now)[::3] + around(now - DAY)[::3])
    reader = StatsReader(pool, retention_days=retention_days)
    for now in nows:
        if retention_days == 1:  # the cleanup, as of this now: the rollups keep what it deletes
            conn.execute("DELETE FROM page_views WHERE viewed_at < %s", (now - DAY,))
        expected = conn.execute(
            "SELECT count(*) FROM page_views"
            " WHERE viewed_at >= %(now)s - interval '24 hours' AND viewed_at <= %(now)s",
            {"now": now},
        ).fetchone()[0]
        with snapshot(pool) as cur:
            bounds, _today = request_bounds(cur)
            state = (bounds["watermark"], tuple(bounds["in_progress"]))
            answer, _ = reader._read(cur, state, {**bounds, "now": now}, window_at(now))
        assert answer["views_last_24h"] == expected, now


def test_a_request_reads_only_the_tails_views_where_the_last_24_hours_begin(pool, conn, monkeypatch):
    """The bucket the last 24 hours begin in was counted in page_views at every request, up to
    half of it (at 200 views/s, 90,000 views): at 50M views on PostgreSQL 15 the stats p50 grew
    by a third against 5M. Its rolled-up views' times are kept with the rolled-up part now, and
    a request reads the tail's alone there, its answer the same."""
    now = conn.execute("SELECT now()").fetchone()[0]
    cut = now - DAY
    insert_around(conn, [cut + datetime.timedelta(seconds=s) for s in range(-400, 400, 2)])
    roll_up(conn)
    insert_around(conn, [cut + datetime.timedelta(seconds=1), cut - datetime.timedelta(seconds=1)])  # tail
    plans: list[dict] = []
    original = psycopg.Cursor.execute

    def execute(self, query, params=None, *args, **kwargs):
        if query == QUERIES["stats_last_24h_edges"]:
            explained = original(self, "EXPLAIN (ANALYZE, FORMAT JSON) " + query, params).fetchone()[0]
            plans.append(explained[0])
        return original(self, query, params, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    answer = StatsReader(pool, retention_days=30).stats_for_window(2)
    expected = conn.execute(
        "SELECT count(*) FROM page_views WHERE viewed_at >= now() - interval '24 hours'"
    ).fetchone()[0]
    assert answer["views_last_24h"] == expected
    read = [
        node["Actual Rows"]
        for node in plan_nodes(plans[0])
        if node.get("Relation Name", "").startswith("page_views_p")
        and node["Node Type"] != "Bitmap Index Scan"
    ]
    assert sum(read) <= 2, read  # the tail's two at most, not the bucket's rolled-up views
