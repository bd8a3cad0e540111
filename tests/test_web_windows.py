"""The last 24 hours cut a bucket at each end (tally/web/windows.py, Window.ends): counted from
the rollups' whole buckets less a short raw part, they stay exact wherever now falls. And a
panel's top rows from a dimension's most viewed values alone (`Ranking`) are the whole ranking's."""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable

import psycopg
import pytest

from tally.db import QUERIES
from tally.web.stats import SettledDays, StatsReader, snapshot
from tally.web.windows import BUCKET, DAY, TOP_ROWS, Ranking, Window, bucket_of
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
            cur.execute("SELECT settled_before, settled_by FROM page_view_rollup_state")
            settled = SettledDays(*cur.fetchone())
            answer, _ = reader._read(cur, state, settled, {**bounds, "now": now}, window_at(now), pool)
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


def looking_up(views: dict[str, int], asked: list) -> Callable[[list[str] | None], dict[str, int]]:
    """A `Ranking.top` lookup of `views`, noting what it was asked in `asked`."""

    def lookup(wanted: list[str] | None) -> dict[str, int]:
        asked.append(wanted)
        return dict(views) if wanted is None else {name: views.get(name, 0) for name in wanted}

    return lookup


def test_the_top_rows_of_the_most_viewed_values_and_the_tail_are_the_whole_rankings():
    rng = random.Random(52)
    fell_back = 0
    for _ in range(2000):
        views = {f"/p{n}": rng.choice([0, 1, 1, 2, 3, 3, 5, 40]) for n in range(rng.randrange(1, 40))}
        views[""] = rng.randrange(0, 9)  # an import's "none": never a row
        names = [*views, *(f"/new{n}" for n in range(5))]
        # Only the visits' entry and exit pages move down: a view moves a visit's exit.
        moves_down = rng.random() < 0.3
        lowest = -3 if moves_down else 0
        tail = {rng.choice(names): rng.randrange(lowest, 6) for _ in range(rng.randrange(0, 25))}
        read = rng.randrange(1, 30)
        first = sorted(views, key=lambda name: (-views[name], name))[: read + 1]
        last = (views[first[-1]], first[-1]) if len(views) > read + 1 else None
        asked: list[list[str] | None] = []
        lookup = looking_up(views, asked)
        whole = Ranking.of(views).top(tail, "path", lookup)
        assert asked == []  # a whole ranking looks nothing up
        assert Ranking.of({name: views[name] for name in first}, last).top(tail, "path", lookup) == whole
        # Every value is read again only when those read cannot fill the rows (a tail moving
        # views away, or fewer read than rows); a name is looked up only if the tail brings it.
        if not moves_down and read >= TOP_ROWS:
            assert None not in asked
        fell_back += None in asked
        assert all(set(wanted) <= set(tail) for wanted in asked if wanted is not None)
    assert 0 < fell_back < 1000
