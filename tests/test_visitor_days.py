"""Visitors exact for any data (issue 18, part 0; migrations/0015): ids that come back on
other days (a backfill, an import, a salt that did not rotate) count once on each day they
have a view, in any zone, DST days included, against a brute-force count."""

from __future__ import annotations

import datetime
import itertools
import random
import zoneinfo

import psycopg
import pytest

from migrations import apply_pending
from tests.conftest import plan_nodes
from tests.test_web import roll_up
from tests.test_web_exact import (
    AUDIENCES,
    PANELS,
    assert_visits_exact,
    brute_force,
    insert_raw,
    on_one_day,
    sites_client,
)

UTC = datetime.UTC
DAY = datetime.timedelta(days=1)


@pytest.fixture
def client(database_url, pool):
    return sites_client(database_url, pool)


def test_ids_seen_on_many_days_count_once_a_day(client, conn):
    """The issue's case, a tenth of it: 6,000 views by SQL, 400 ids over 30 days, 40 a day."""
    conn.execute(
        "INSERT INTO page_views (site, path, visitor, viewed_at)"
        " SELECT 'example.com', '/p' || (n % 7), (n / 5) % 40 + 40 * ((n / 200) % 10),"
        "        date_trunc('day', now(), 'UTC') - (n / 200) * interval '1 day'"
        "        + (n % 200) * interval '5 minutes'"
        "   FROM generate_series(0, 5999) AS n"
    )
    roll_up(conn)
    body = client.get("/api/stats", {"days": "30", "tz": "UTC"}).json
    expected = brute_force(conn, 30, None, "UTC")
    assert {day["day"]: day["visitors"] for day in body["daily"] if day["views"]} == {
        day: visitors for day, (_, visitors) in expected["daily"].items()
    }
    assert set(expected["daily"].values()) == {(200, 40)} and len(expected["daily"]) == 30
    assert body["visitors"] == 1200
    assert body["top_paths"] == expected["top_paths"]


def returning_visitors(rng: random.Random, count: int, around: list[datetime.datetime]) -> list[tuple]:
    """Views of ids that come back: every few minutes, after about a day (22 to 26 hours, the
    lengths of days around DST changes), or after days; near the given instants (midnights and
    DST changes) more than elsewhere."""
    views = []
    while len(views) < count:
        site = rng.choice(["example.com", "shop.example.org"])
        visitor = rng.getrandbits(63) - 2**62
        audience = [rng.choice(choices) for choices in AUDIENCES.values()]
        at = rng.choice(around) + datetime.timedelta(minutes=rng.randrange(-26 * 60, 26 * 60))
        for _ in range(rng.randrange(1, 8)):
            path = f"/p{rng.randrange(0, 6)}"
            views.append((site, path, None, None, visitor, *audience, at))
            at += rng.choice(
                [
                    datetime.timedelta(0),  # two views at one instant: stored order decides
                    datetime.timedelta(minutes=rng.randrange(1, 90)),
                    datetime.timedelta(minutes=rng.randrange(22 * 60, 26 * 60)),
                    datetime.timedelta(days=rng.randrange(1, 4), minutes=rng.randrange(0, 24 * 60)),
                ]
            )
    return views


def insert_at(conn, views: list[tuple]) -> None:
    """Views at absolute instants (insert_raw takes ages before now)."""
    now = conn.execute("SELECT now()").fetchone()[0]
    insert_raw(conn, [(*view[:-1], now - view[-1]) for view in views])


def midnights(zone: str, first: datetime.date, days: int) -> list[datetime.datetime]:
    tz = zoneinfo.ZoneInfo(zone)
    return [
        datetime.datetime.combine(first + datetime.timedelta(days=n), datetime.time(), tz).astimezone(UTC)
        for n in range(days)
    ]


@pytest.mark.parametrize(
    ("seed", "tz"),
    [(31, "UTC"), (32, "America/New_York"), (33, "Asia/Kathmandu"), (34, "Pacific/Kiritimati")],
)
def test_returning_ids_are_exact_across_rollups_and_the_tail(client, conn, seed, tz, age_shift):
    rng = random.Random(seed)
    today = conn.execute("SELECT (now() AT TIME ZONE 'UTC')::date").fetchone()[0]
    now = conn.execute("SELECT now()").fetchone()[0]
    instants = [t for t in midnights("UTC", today - datetime.timedelta(days=12), 12)]
    instants += [t for t in midnights(tz, today - datetime.timedelta(days=12), 12)]
    views = [view for view in returning_visitors(rng, 3000, instants) if view[-1] < now]
    rng.shuffle(views)  # a backfill in any order, folded by several rollups, the rest in the tail
    for chunk in range(4):
        insert_at(conn, views[chunk::5])
        roll_up(conn)
    insert_at(conn, views[4::5])

    def check() -> None:
        for days in (1, 3, 12):
            for site in (None, "example.com"):
                query = {"days": str(days), "tz": tz, **({"site": site} if site else {})}
                body = client.get("/api/stats", query).json
                expected = brute_force(conn, days, site, tz)
                daily = {day["day"]: (day["views"], day["visitors"]) for day in body["daily"] if day["views"]}
                assert daily == expected["daily"], (days, site)
                for key in PANELS.values():
                    assert body[key] == expected[key], (days, site, key)
                assert_visits_exact(body, expected, (days, site))
                rows = client.get("/api/export", query).text.splitlines()[1:]
                per_path = {(d, p): (int(v), int(u)) for d, p, v, u in (row.split(",") for row in rows)}
                assert per_path == expected["export"], (days, site)

    on_one_day(conn, tz, check)


# DST changes of 2026 with a day of other than 24 hours: an hour, half an hour (Lord Howe),
# two hours (Troll), both hemispheres, both directions, at 02:00 and at midnight.
DST_DAYS = [
    ("America/New_York", datetime.date(2026, 3, 8)),
    ("America/New_York", datetime.date(2026, 11, 1)),
    ("Europe/London", datetime.date(2026, 10, 25)),
    ("Australia/Lord_Howe", datetime.date(2026, 10, 4)),
    ("Antarctica/Troll", datetime.date(2026, 10, 25)),
    ("Pacific/Chatham", datetime.date(2026, 9, 27)),
    # At local midnight itself: a day that starts at 01:00, and one whose 23:00 comes twice.
    ("America/Santiago", datetime.date(2026, 9, 6)),
    ("America/Santiago", datetime.date(2026, 4, 4)),
    ("Asia/Beirut", datetime.date(2026, 3, 29)),
]


@pytest.mark.parametrize(("tz", "change"), DST_DAYS)
def test_days_of_23_and_25_hours_are_exact(pool, conn, tz, change):
    from tally.web.stats import StatsReader

    rng = random.Random(f"{tz} {change}")
    instants = midnights(tz, change - datetime.timedelta(days=2), 5) + midnights(
        "UTC", change - datetime.timedelta(days=2), 5
    )
    views = returning_visitors(rng, 1500, instants)
    insert_at(conn, views[::2])
    roll_up(conn)
    insert_at(conn, views[1::2])
    roll_up(conn)
    reader = StatsReader(pool, retention_days=30)
    last_day = change + datetime.timedelta(days=4)
    body = reader.stats_for_window(9, None, tz, last_day=last_day)
    expected = brute_force(conn, 9, None, tz, last_day=last_day)
    daily = {day["day"]: (day["views"], day["visitors"]) for day in body["daily"] if day["views"]}
    assert daily == expected["daily"]
    for key in ("top_paths", "top_countries", "top_browsers"):
        assert body[key] == expected[key], key
    assert_visits_exact(body, expected, tz)


def test_every_zone_meets_the_rule_the_visitor_days_rest_on():
    """A local day meets at most two UTC days, and never lies inside one without touching its
    start or end (migrations/0015): checked on every zone of the zone database, 2024 to 2028."""
    first = datetime.date(2024, 1, 1)
    broken = []
    for name in sorted(zoneinfo.available_timezones()):
        starts = midnights(name, first, 5 * 366 + 1)
        for start, end in itertools.pairwise(starts):
            first_utc, last_utc = start.date(), (end - datetime.timedelta(microseconds=1)).date()
            utc_start = datetime.datetime.combine(first_utc, datetime.time(), UTC)
            inside = first_utc == last_utc and utc_start < start and end < utc_start + DAY
            if (last_utc - first_utc).days > 1 or inside:
                broken.append((name, start, end))
    assert broken == []


# The days of 2026 where tally_day_overlaps and the per-pair conversion differ: which local day,
# how many ids (the pairs are the same on every day: first bucket, last the day before, ids).
PAIRS_READ_AGAINST_CONVERTED = """
WITH days AS (SELECT day::date FROM generate_series('2026-01-01'::date, '2026-12-31', '1 day') AS day),
read AS (
    SELECT days.day, o.local_day, o.visitors
      FROM days, tally_day_overlaps(days.day, %(pairs)s::integer[], tally_pair_steps(%(pairs)s::integer[]),
                                    %(tz)s, '-infinity', 'infinity') AS o
     WHERE o.visitors <> 0
), pairs AS (
    SELECT days.day, ids,
           days.day::timestamp AT TIME ZONE 'UTC' + f * interval '15 minutes' AS first_bucket,
           (days.day - 1)::timestamp AT TIME ZONE 'UTC' + l * interval '15 minutes' AS prev_last
      FROM days, (SELECT %(pairs)s::integer[] AS given) AS given,
           unnest(given[:][1:1], given[:][2:2], given[:][3:3]) AS p (f, l, ids)
), converted AS (
    SELECT day, (first_bucket AT TIME ZONE %(tz)s)::date AS local_day, sum(ids) AS visitors FROM pairs
     WHERE (prev_last AT TIME ZONE %(tz)s)::date = (first_bucket AT TIME ZONE %(tz)s)::date
     GROUP BY 1, 2
)
SELECT coalesce(r.day, c.day), r.local_day, r.visitors, c.local_day, c.visitors
  FROM read r FULL JOIN converted c ON c.day = r.day
 WHERE r.local_day IS DISTINCT FROM c.local_day OR r.visitors IS DISTINCT FROM c.visitors
"""
DAYS_WITH_PAIRS_TAKEN = """
SELECT count(*)
  FROM generate_series('2026-01-01'::date, '2026-12-31', '1 day') AS day,
       tally_day_overlaps(day::date, %(pairs)s, tally_pair_steps(%(pairs)s), %(tz)s,
                          '-infinity', 'infinity') AS o
 WHERE o.visitors > 0
"""


@pytest.mark.parametrize(
    "tz",
    [
        "America/New_York",
        "America/Santiago",  # its clocks change at midnight
        "Australia/Lord_Howe",  # half an hour of daylight saving
        "Pacific/Chatham",  # +12:45, +13:45
        "Asia/Kathmandu",
        "America/St_Johns",
        "Europe/London",
        "UTC",
    ],
)
def test_pairs_fall_on_the_local_day_their_two_buckets_share(conn, tz):
    """tally_day_overlaps (migration 0031) works out a row's bounds once, as bucket numbers, and
    counts a day of 24 hours from the row's 96 steps and any other day (23 or 25 hours) from its
    pairs: on every day of 2026 the same ids as converting both buckets of each pair to the zone
    (migrations/0020's reading), on the same local day."""
    rng = random.Random(tz)
    pairs = [[first, prev, rng.randrange(1, 5)] for first in range(0, 96, 3) for prev in range(1, 96, 4)]
    different = conn.execute(PAIRS_READ_AGAINST_CONVERTED, {"pairs": pairs, "tz": tz}).fetchall()
    assert different == []
    if tz not in ("UTC", "Europe/London"):
        taken = conn.execute(DAYS_WITH_PAIRS_TAKEN, {"pairs": pairs, "tz": tz}).fetchone()[0]
        assert taken >= 300  # the test reads pairs that do fall on one local day


BOUNDARY_ZONES = ["UTC", "America/New_York", "Asia/Kathmandu", "Australia/Adelaide", "America/St_Johns"]


@pytest.mark.parametrize("rolled_up", [True, False])
def test_views_exactly_at_midnights_and_a_microsecond_before_count_on_their_own_day(pool, conn, rolled_up):
    """Random data never lands on an instant a day or a window turns at (now() has microseconds):
    views at each zone's and UTC's midnights of the last days and a microsecond before them, by
    ids that come back across them, rolled up or in the tail, against the brute-force count in
    every zone, for windows ending today and on a past day."""
    from tally.web.stats import StatsReader

    today = conn.execute("SELECT (now() AT TIME ZONE 'UTC')::date").fetchone()[0]
    now = conn.execute("SELECT now()").fetchone()[0]
    instants = sorted(
        {
            t
            for zone in BOUNDARY_ZONES
            for t in midnights(zone, today - datetime.timedelta(days=5), 6)
            if t < now
        }
    )
    views, visitor = [], 0
    for at in instants:
        for before in (datetime.timedelta(microseconds=1), datetime.timedelta(0)):
            visitor += 1
            for seen, path in ((at - before, "/at"), (at - before + datetime.timedelta(minutes=10), "/next")):
                views.append(("example.com", path, None, None, visitor % 7, *[None] * 6, seen))
    insert_at(conn, views[::2])
    if rolled_up:
        roll_up(conn)
    insert_at(conn, views[1::2])
    reader = StatsReader(pool, retention_days=30)
    for tz in BOUNDARY_ZONES:
        local_today = conn.execute("SELECT (now() AT TIME ZONE %s)::date", (tz,)).fetchone()[0]
        for days, last_day in ((3, None), (1, local_today - DAY), (2, local_today - 2 * DAY)):
            body = reader.stats_for_window(days, None, tz, last_day=last_day)
            expected = brute_force(conn, days, None, tz, last_day=last_day)
            daily = {day["day"]: (day["views"], day["visitors"]) for day in body["daily"] if day["views"]}
            assert daily == expected["daily"], (tz, days, last_day)
            assert body["top_paths"] == expected["top_paths"], (tz, days, last_day)
            assert_visits_exact(body, expected, (tz, days, last_day))


ADD_CELLS = "SELECT tally_add_cells(%s::integer[], %s::integer[])"


def summed_cells(*arrays: list[list[int]]) -> dict[int, tuple[int, int, int]]:
    """The cells' counts per slot, brute force; slots whose counts add up to zero left out."""
    sums: dict[int, list[int]] = {}
    for array in arrays:
        for slot, *counts in array:
            sums[slot] = [a + b for a, b in zip(sums.get(slot, [0, 0, 0]), counts, strict=True)]
    return {slot: tuple(counts) for slot, counts in sums.items() if any(counts)}


@pytest.mark.parametrize("seed", range(3))
def test_a_days_cells_add_up_slot_by_slot(conn, seed):
    """tally_add_cells (migrations/0034) walks the two arrays in slot order: the result is the
    brute-force sum per slot, in slot order, one row a slot, and without the cells that cancel
    out (a visitor's first bucket moved: -1 where it was, +1 where it is)."""
    rng = random.Random(seed)

    def cells() -> list[list[int]]:
        slots = sorted(rng.sample(range(96), rng.randrange(0, 12)))
        return [[slot, rng.randrange(-2, 3), rng.randrange(-1, 2), rng.randrange(-1, 2)] for slot in slots]

    for _ in range(200):
        held, added = cells(), cells()
        result = conn.execute(ADD_CELLS, (held, added)).fetchone()[0]
        expected = summed_cells(held, added)
        assert [row[0] for row in result] == sorted(expected)
        assert {slot: tuple(counts) for slot, *counts in result} == expected
    # Rows out of order, or a slot twice (no writer makes them): no count is lost.
    held, added = [[7, 1, 1, 0], [5, 2, 0, 1], [5, 1, 0, 0]], [[5, 1, 1, 1]]
    result = conn.execute(ADD_CELLS, (held, added)).fetchone()[0]
    assert summed_cells(result) == summed_cells(held, added)


ADD_PAIRS = "SELECT tally_add_pairs(%s::integer[], %s::integer[])"
PAIR_STEPS = "SELECT tally_pair_steps(%s::integer[])"


def summed_pairs(*arrays: list[list[int]]) -> dict[tuple[int, int], int]:
    """The ids per (first slot, slot the day before), brute force; pairs that add up to zero left out."""
    sums: dict[tuple[int, int], int] = {}
    for array in arrays:
        for first_slot, prev_slot, ids in array:
            sums[first_slot, prev_slot] = sums.get((first_slot, prev_slot), 0) + ids
    return {pair: ids for pair, ids in sums.items() if ids}


def pair_steps(pairs: list[list[int]]) -> list[int]:
    """migrations/0031's steps, brute force: +ids after the first slot, -ids after the other, for
    the pairs whose first slot is before the other; none for no pairs."""
    if not pairs:
        return []
    steps = [0] * 96
    for first_slot, prev_slot, ids in pairs:
        if first_slot < prev_slot:
            steps[first_slot] += ids
            steps[prev_slot] -= ids
    return steps


@pytest.mark.parametrize("seed", range(3))
def test_a_days_pairs_add_up_and_step_pair_by_pair(conn, seed):
    """tally_add_pairs and tally_pair_steps (migrations/0036) walk the arrays: the pairs are the
    brute-force sum per (first slot, slot the day before), in that order, one row a pair and
    none that cancel out; the steps are those of every pair, whatever their order."""
    rng = random.Random(seed)

    def pairs() -> list[list[int]]:
        slots = [(f, p) for f in range(0, 96, 7) for p in range(0, 96, 5)]
        keys = sorted(rng.sample(slots, rng.randrange(0, 10)))
        return [[f, p, rng.randrange(-2, 3) or 1] for f, p in keys]

    for _ in range(200):
        held, added = pairs(), pairs()
        result = conn.execute(ADD_PAIRS, (held, added)).fetchone()[0]
        expected = summed_pairs(held, added)
        assert [tuple(row[:2]) for row in result] == sorted(expected)
        assert {(f, p): ids for f, p, ids in result} == expected
        assert conn.execute(PAIR_STEPS, (held,)).fetchone()[0] == pair_steps(held)
        assert conn.execute(PAIR_STEPS, (result,)).fetchone()[0] == pair_steps(result)
    # Rows out of order, or a pair twice (no writer makes them): no id is lost.
    held, added = [[9, 40, 2], [3, 10, 1], [3, 10, 4]], [[3, 10, -1], [0, 95, 1]]
    result = conn.execute(ADD_PAIRS, (held, added)).fetchone()[0]
    assert summed_pairs(result) == summed_pairs(held, added)
    assert conn.execute(PAIR_STEPS, (held + added,)).fetchone()[0] == pair_steps(held + added)


# The other days' partitions' scans in this transaction so far (the counters not yet sent to
# the cumulative statistics: only this session's, on every version, PostgreSQL 14's included).
OTHER_DAYS_SCANS = """
SELECT coalesce(sum(seq_scan + coalesce(idx_scan, 0)), 0)
  FROM pg_stat_xact_user_tables
 WHERE relname LIKE 'page_views_p%%' AND relname NOT IN (
       SELECT 'page_views_p' || to_char((now() AT TIME ZONE 'UTC')::date + shift, 'YYYYMMDD')
         FROM generate_series(-2, 1) AS shift)
"""


def other_days_scanned(conn, call: str, params: tuple) -> int:
    """How many scans of the partitions of other days than the last two and the next `call` made."""
    with conn.transaction():
        before = conn.execute(OTHER_DAYS_SCANS).fetchone()[0]
        conn.execute(call, params).fetchall()
        return conn.execute(OTHER_DAYS_SCANS).fetchone()[0] - before


def test_an_ids_views_are_read_from_its_days_alone_whatever_the_plan(fresh_database):
    """tally_visitor_moves and tally_visit_moves read the views of the (id, day)s they are given
    through the index of an id's views, in those days' partitions only. As joins, a plan made
    for the array of a minutely rollup (PostgreSQL 18 makes one for each call of a SQL
    function) hashed every view of every day: a minutely rollup of 1,000 views then took 1.0 s
    after 1M views, growing with the table (migrations/0035).

    The scans are counted in the call's transaction (pg_stat_xact_user_tables): the cumulative
    statistics, which every session adds to when it flushes, late if it was busy, once counted
    564 scans that were not the call's, in CI's shared database."""
    apply_pending(fresh_database)
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        ids_views_read_from_their_days_alone(conn)


def ids_views_read_from_their_days_alone(conn: psycopg.Connection) -> None:
    conn.execute(
        "SELECT tally_ensure_day_partition(day::date) FROM generate_series("
        " (now() AT TIME ZONE 'UTC')::date - 30, (now() AT TIME ZONE 'UTC')::date, interval '1 day') AS day"
    )
    conn.execute(
        "INSERT INTO page_views (site, path, country, visitor, viewed_at)"
        " SELECT 'example.com', '/p' || n % 500, 'GB', n / 3,"
        "        now() - interval '30 days' + n * (interval '30 days' / 120000)"
        "   FROM generate_series(1, 120000) AS n"
    )
    roll_up(conn)
    conn.execute(  # 1,000 views now, half of them by ids of the last day
        "INSERT INTO page_views (site, path, country, visitor, viewed_at)"
        " SELECT 'example.com', '/p' || n % 500, 'GB',"
        "        CASE WHEN n % 2 = 0 THEN 39000 + n ELSE 1000000 + n END, now()"
        "   FROM generate_series(1, 1000) AS n"
    )
    conn.execute("ANALYZE page_views")
    conn.execute("SET plan_cache_mode = force_custom_plan")  # as the rollup plans
    watermark, in_progress = conn.execute(
        "SELECT watermark, in_progress FROM page_view_rollup_state"
    ).fetchone()
    days = conn.execute(  # the (id, day)s a rollup asks about, read before counting scans
        "SELECT ARRAY(SELECT DISTINCT ROW(site, visitor, (viewed_at AT TIME ZONE 'UTC')::date)"
        "                    ::tally_visitor_of_day FROM page_views WHERE recorded_xid >= %s)::text",
        (watermark,),
    ).fetchone()[0]
    assert days.count("(") == 1000
    moves = "SELECT * FROM tally_visitor_moves(%s::tally_visitor_of_day[], %s, %s, pg_current_snapshot())"
    assert other_days_scanned(conn, moves, (days, watermark, in_progress)) == 0
    visits = "SELECT * FROM tally_visit_moves(%s::tally_visitor_of_day[], pg_current_snapshot())"
    assert other_days_scanned(conn, visits, (days,)) == 0
    # Planned once a session, for any array (migrations/0037): each plan reads by the index.
    settings = conn.execute(
        "SELECT array_agg(proname::text ORDER BY proname) FROM pg_proc"
        " WHERE proname IN ('tally_visitor_moves', 'tally_visit_moves')"
        "   AND 'plan_cache_mode=force_generic_plan' = ANY (proconfig)"
    ).fetchone()[0]
    assert settings == ["tally_visit_moves", "tally_visitor_moves"]
    assert roll_up(conn) == 1000


# The day partitions whose indexes this session holds open (a scan started holds its index's lock
# until the transaction ends; a plan only names the tables).
PARTITIONS_WITH_INDEXES_OPEN = """
SELECT DISTINCT t.relname::text
  FROM pg_locks l
  JOIN pg_index i ON i.indexrelid = l.relation
  JOIN pg_class t ON t.oid = i.indrelid
  JOIN pg_inherits h ON h.inhrelid = t.oid AND h.inhparent = 'page_views'::regclass
 WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation'
"""


def partitions_started(conn, call: str, params: tuple) -> set[str]:
    """The partitions of page_views whose scans `call` started, once its plan is made."""
    conn.execute(call, params).fetchall()  # made here: planning opens every partition's indexes
    with conn.transaction():
        conn.execute(call, params).fetchall()
        return {name for (name,) in conn.execute(PARTITIONS_WITH_INDEXES_OPEN).fetchall()}


def test_a_few_ids_moves_start_their_days_partitions_alone(conn):
    """A stats request with ids in its tail reads their moves (tail_moves.py), a few (id, day)s,
    through plans kept for the session; those start the scans of the partitions of the days
    given (and the day before and after) and of no other day. A plan that bounds each probe only
    by its own (id, day) started every partition's scan at each call, and PostgreSQL 15 planned
    the SQL functions at each call: with a year of days (375 partitions) a stats request with
    ids arriving took 160-250 ms on 15, and each call 4 ms on 18 (migrations/0041)."""
    conn.execute(
        "SELECT tally_ensure_day_partition(day::date) FROM generate_series("
        " (now() AT TIME ZONE 'UTC')::date - 40, (now() AT TIME ZONE 'UTC')::date + 1, '1 day') AS day"
    )
    conn.execute(
        "INSERT INTO page_views (site, path, visitor, viewed_at)"
        " SELECT 'example.com', '/p' || n, n % 3, now() - n * interval '1 day' FROM generate_series(0, 40) n"
    )
    conn.execute(  # the days' views of many ids, and statistics that know them: an id's probe of
        # a day is by the index, whose scan is what is counted (CI found this test leaning on the
        # statistics an earlier test had left, and a sequential scan of a near-empty day)
        "INSERT INTO page_views (site, path, visitor, viewed_at)"
        " SELECT 'example.com', '/p' || n % 40, 10 + n % 5000, now() - (n % 41) * interval '1 day'"
        "   FROM generate_series(0, 20499) n"
    )
    conn.execute("ANALYZE page_views")
    roll_up(conn)
    conn.execute("INSERT INTO page_views (site, path, visitor) VALUES ('example.com', '/new', 1)")
    today = conn.execute("SELECT (now() AT TIME ZONE 'UTC')::date").fetchone()[0]
    days = f'{{"(example.com,1,{today})","(example.com,2,{today})"}}'
    near = {f"page_views_p{today + shift * DAY:%Y%m%d}" for shift in (-1, 0, 1)}
    state = "SELECT watermark, in_progress FROM page_view_rollup_state"
    watermark, in_progress = conn.execute(state).fetchone()
    moves = "SELECT * FROM tally_visitor_moves(%s::tally_visitor_of_day[], %s, %s, NULL)"
    started = partitions_started(conn, moves, (days, watermark, in_progress))
    assert started and started <= near, started
    visits = "SELECT * FROM tally_visit_moves(%s::tally_visitor_of_day[], NULL)"
    started = partitions_started(conn, visits, (days,))
    assert started == {f"page_views_p{today:%Y%m%d}"}, started


def probe_indexes(conn, day: datetime.date, partition: str) -> set[str]:
    """The indexes of `partition` the read of an (id, day)'s views uses (as tally_visit_moves
    reads them: the plan has each partition's, run-time pruning leaves the day's)."""
    plan = conn.execute(
        "EXPLAIN (FORMAT JSON) SELECT * FROM unnest(%s::tally_visitor_of_day[]) w CROSS JOIN LATERAL ("
        " SELECT * FROM page_views v WHERE v.site = w.site AND v.visitor = w.visitor"
        "    AND v.viewed_at >= w.day::timestamp AT TIME ZONE 'UTC'"
        "    AND v.viewed_at < (w.day + 1)::timestamp AT TIME ZONE 'UTC'"
        "    AND v.visitor IS NOT NULL OFFSET 0) v",
        ("{" + ",".join(f'"(example.com,{n},{day})"' for n in range(300)) + "}",),
    ).fetchone()[0]
    found = {node["Index Name"] for node in plan_nodes(plan[0]) if "Index Name" in node}
    return {name for name in found if name.startswith(f"{partition}_")}


def test_a_day_analyzed_before_its_ids_came_is_analyzed_again_by_the_rollup(conn):
    """Statistics of a day partition taken while none of its views had an id say none has one:
    the planner then reads an (id, day)'s views through the index on viewed_at alone, every
    view with an id of the day for each (2.9 s for a stats request's 1,492 (id, day)s, a
    minutely rollup 10 s). The rollup analyzes such a day first (migrations/0038), once."""
    day = datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=2)
    (partition,) = conn.execute("SELECT tally_ensure_day_partition(%s)", (day,)).fetchone()
    conn.execute(
        "INSERT INTO page_views (site, path, viewed_at) SELECT 'example.com', '/p',"
        " %s::timestamp AT TIME ZONE 'UTC' + n * interval '1 second' FROM generate_series(1, 20000) n",
        (day,),
    )
    conn.execute(f"ANALYZE {partition}")
    null_frac = "SELECT null_frac FROM pg_stats WHERE tablename = %s AND attname = 'visitor'"
    assert conn.execute(null_frac, (partition,)).fetchone()[0] == 1
    conn.execute(
        "INSERT INTO page_views (site, path, viewed_at, visitor) SELECT 'example.com', '/p',"
        " %s::timestamp AT TIME ZONE 'UTC' + interval '6 hours' + n * interval '1 second', n %% 700"
        " FROM generate_series(1, 3000) n",
        (day,),
    )
    assert roll_up(conn) == 23000
    assert conn.execute(null_frac, (partition,)).fetchone()[0] < 1
    assert probe_indexes(conn, day, partition) == {f"{partition}_site_visitor_viewed_at_idx"}
    # Statistics that know of ids are left as they are.
    assert (
        conn.execute("SELECT tally_analyze_days_with_unseen_ids(ARRAY[%s::date])", (day,)).fetchone()[0] == 0
    )


@pytest.mark.parametrize("known_ids", ["few", "one"])
def test_a_day_whose_ids_outgrew_its_statistics_is_analyzed_again_by_the_rollup(conn, known_ids):
    """Statistics that know of a few ids (1% of the views, or all views one id's) cost an (id,
    day)'s read at one row through either index of views with ids, and the index on viewed_at
    alone wins the tie: CI's rollup of 60,000 views with 20,000 ids ran past two minutes. The
    rollup analyzes a day whose index of views with ids has more than doubled since its
    statistics (migrations/0040); one that has not grown is left as it is."""
    day = datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=2)
    (partition,) = conn.execute("SELECT tally_ensure_day_partition(%s)", (day,)).fetchone()
    visitor = "CASE WHEN n %% 100 = 0 THEN n END" if known_ids == "few" else "1"
    conn.execute(
        "INSERT INTO page_views (site, path, viewed_at, visitor) SELECT 'example.com', '/p',"
        f" %s::timestamp AT TIME ZONE 'UTC' + n * interval '1 second', {visitor}"
        " FROM generate_series(1, 5000) n",
        (day,),
    )
    assert roll_up(conn) == 5000
    conn.execute(f"ANALYZE {partition}")
    unchanged = "SELECT tally_analyze_days_with_unseen_ids(ARRAY[%s::date])"
    assert conn.execute(unchanged, (day,)).fetchone()[0] == 0
    conn.execute(
        "INSERT INTO page_views (site, path, viewed_at, visitor) SELECT 'example.com', '/p',"
        " %s::timestamp AT TIME ZONE 'UTC' + interval '6 hours' + n * interval '100 ms', n %% 20000"
        " FROM generate_series(1, 60000) n",
        (day,),
    )
    # What the statistics taken before the ids came make of the day: the wrong index.
    assert probe_indexes(conn, day, partition) == {f"{partition}_viewed_at_idx1"}
    conn.execute("SET statement_timeout = '30s'")  # read that way, the fold takes many minutes
    assert roll_up(conn) == 60000
    assert probe_indexes(conn, day, partition) == {f"{partition}_site_visitor_viewed_at_idx"}
    assert conn.execute(unchanged, (day,)).fetchone()[0] == 0
