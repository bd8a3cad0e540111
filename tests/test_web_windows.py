"""The last 24 hours cut a bucket at each end (tally/web/windows.py, Window.ends): counted from
the rollups' whole buckets less a short raw part, they stay exact wherever now falls."""

from __future__ import annotations

import datetime
import random

import psycopg
import pytest

from tally.web.stats import StatsReader, snapshot
from tally.web.windows import BUCKET, DAY, Window, bucket_of
from tests.conftest import request_bounds
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
