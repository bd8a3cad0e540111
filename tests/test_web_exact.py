"""Stats, export and days in any zone, exact against a brute-force count over the raw views
(issues 11 and 12), through the real WSGI app on the session's database."""

from __future__ import annotations

import collections
import csv
import datetime
import io
import random
import urllib.parse
import zoneinfo
from collections.abc import Callable

import psycopg
import pytest

from tally.db import QUERIES
from tally.search_engines import search_engine
from tally.web import export, filtered
from tally.web.filtered import EVERY_VIEW
from tests import ages
from tests.conftest import plan_nodes
from tests.test_web import TOKEN, make_client, roll_up
from tests.test_web_collect import OTHER_ADDRESS, beacon, sites_client


@pytest.fixture
def client(database_url, pool):
    return sites_client(database_url, pool)


# --- exact against a brute-force count ----------------------------------------------------------


# A view's audience, as tally/web/audience.py records it, drawn at random per visitor.
AUDIENCES = {
    "medium": [None, None, "email", "social"],
    # Not ASCII: a query string's value is UTF-8 to decode ("Ë" holds the byte of a C1 control).
    "campaign": [None, None, "spring", "launch", "été", "Ëvent"],
    "country": [None, "DE", "US", "US", "FR", "NP"],
    "browser": [None, "Firefox", "Chrome", "Chrome", "Safari"],
    "os": [None, "Linux", "Windows", "iOS"],
    "device": [None, "phone", "tablet", "laptop", "desktop"],
}
DIMENSION_COLUMNS = ("path", "referrer", "source", *AUDIENCES)


def referrer_label(referrer: str | None, site: str) -> str | None:
    domain = urllib.parse.urlsplit(referrer).hostname if referrer else None
    domain = domain.removeprefix("www.") if domain else None
    if not domain or domain == site.removeprefix("www."):
        return None
    return "google.com" if domain in ("google.com", "google.de") else domain  # one engine, one domain


def brute_force(
    conn: psycopg.Connection,
    days: int,
    site: str | None,
    tz: str = "UTC",
    filters: dict[str, str] | None = None,
    last_day: datetime.date | None = None,
) -> dict:
    """Every figure of /api/stats straight from page_views, days in Python's zone database,
    domains parsed in Python, of the views matching every filter."""
    zone = zoneinfo.ZoneInfo(tz)
    now = conn.execute("SELECT now()").fetchone()[0]
    last_day = last_day or now.astimezone(zone).date()
    first_day = last_day - datetime.timedelta(days=days - 1)
    start = datetime.datetime.combine(first_day, datetime.time(), zone)
    end = datetime.datetime.combine(last_day + datetime.timedelta(days=1), datetime.time(), zone)
    views, visitors = collections.Counter(), collections.defaultdict(set)
    path_views, path_visitors = collections.Counter(), collections.defaultdict(set)
    value_views = {dim: collections.Counter() for dim in DIMENSION_COLUMNS}
    value_visitors = {dim: collections.defaultdict(set) for dim in DIMENSION_COLUMNS}
    for viewed_at, row_site, visitor, *values in conn.execute(
        f"SELECT viewed_at, site, visitor, {', '.join(DIMENSION_COLUMNS)} FROM page_views"
        " WHERE viewed_at >= %s AND viewed_at < %s AND (%s::text IS NULL OR site = %s)",
        (start, end, site, site),
    ):
        day = viewed_at.astimezone(zone).date().isoformat()
        row = dict(zip(DIMENSION_COLUMNS, values, strict=True))
        row["referrer"] = referrer_label(row["referrer"], row_site)
        if any(row[dim] != value for dim, value in (filters or {}).items()):
            continue
        views[day] += 1
        path_views[(day, row["path"])] += 1
        if visitor is not None:
            visitors[day].add((row_site, visitor))
            path_visitors[(day, row["path"])].add((row_site, visitor))
        for dim, value in row.items():
            if value is not None:
                value_views[dim][value] += 1
                if visitor is not None:
                    value_visitors[dim][value].add((day, row_site, visitor))

    def top(dim):
        ranked = sorted(value_views[dim].items(), key=lambda item: (-item[1], item[0]))[:10]
        return [{dim: name, "views": n, "visitors": len(value_visitors[dim][name])} for name, n in ranked]

    return {
        "daily": {day: (views[day], len(visitors[day])) for day in views},
        "export": {key: (path_views[key], len(path_visitors[key])) for key in path_views},
        **{PANELS[dim]: top(dim) for dim in DIMENSION_COLUMNS},
        **brute_force_visits(conn, start, end, site, zone, filters or {}),
    }


UTC = datetime.UTC


def brute_force_visits(conn, start, end, site, zone, filters: dict[str, str]) -> dict:
    """Visits straight from page_views (DESIGN.md: one id's views on one UTC day with no gap
    over 30 minutes), of the matching views, counted on the local day of their start. These
    tests store no events (the events a filtered visit keeps: tests/test_events.py)."""
    # A visit never crosses a UTC midnight: the UTC days of the window's ends hold all its views.
    utc_start, utc_end = (
        datetime.datetime.combine(t.astimezone(UTC).date(), datetime.time(), UTC) for t in (start, end)
    )
    by_id_day = collections.defaultdict(list)
    for viewed_at, view_id, row_site, visitor, *values in conn.execute(
        f"SELECT viewed_at, id, site, visitor, {', '.join(DIMENSION_COLUMNS)} FROM page_views"
        " WHERE viewed_at >= %s AND viewed_at < %s AND (%s::text IS NULL OR site = %s)"
        " AND visitor IS NOT NULL",
        (utc_start, utc_end + datetime.timedelta(days=1), site, site),
    ):
        row = dict(zip(DIMENSION_COLUMNS, values, strict=True))
        row["referrer"] = referrer_label(row["referrer"], row_site)
        if any(row[dim] != value for dim, value in filters.items()):
            continue
        key = (row_site, visitor, viewed_at.astimezone(datetime.UTC).date())
        by_id_day[key].append((viewed_at, view_id, row["path"]))
    visits, bounces, views, duration = 0, 0, 0, datetime.timedelta()
    per_day, entries, exits = collections.Counter(), collections.Counter(), collections.Counter()
    for seen in by_id_day.values():
        seen.sort()
        runs = [[seen[0]]]
        for view in seen[1:]:
            if view[0] - runs[-1][-1][0] > datetime.timedelta(minutes=30):
                runs.append([])
            runs[-1].append(view)
        for run in runs:
            if not start <= run[0][0] < end:
                continue
            visits += 1
            bounces += len(run) == 1
            views += len(run)
            duration += run[-1][0] - run[0][0]
            per_day[run[0][0].astimezone(zone).date().isoformat()] += 1
            entries[run[0][2]] += 1
            exits[run[-1][2]] += 1

    def pages(counts):
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:10]
        return [{"path": path, "visits": n} for path, n in ranked]

    micros = duration // datetime.timedelta(microseconds=1)
    return {
        "visits": visits,
        "bounce_rate": round(bounces / visits, 4) if visits else 0,
        "visit_duration_seconds": round(micros / visits / 1e6, 1) if visits else 0,
        "views_per_visit": round(views / visits, 2) if visits else 0,
        "daily_visits": dict(per_day),
        "top_entry_pages": pages(entries),
        "top_exit_pages": pages(exits),
    }


VISIT_KEYS = (
    "visits",
    "bounce_rate",
    "visit_duration_seconds",
    "views_per_visit",
    "top_entry_pages",
    "top_exit_pages",
)


def assert_visits_exact(body: dict, expected: dict, context: object) -> None:
    for key in VISIT_KEYS:
        assert body[key] == expected[key], (context, key)
    daily = {day["day"]: day["visits"] for day in body["daily"] if day["visits"]}
    assert daily == expected["daily_visits"], context


def assert_recent_exact(
    conn: psycopg.Connection,
    body: dict,
    site: str | None,
    context: object,
    filters: dict[str, str] | None = None,
) -> None:
    """The figures about now against the raw rows (of the views matching every filter), at the
    answer's own `now` (generated_at): the views of the 24 hours to it, the ids of the 5 minutes
    to it, both ends included."""
    now = datetime.datetime.fromisoformat(body["generated_at"])
    views, current = 0, set()
    for viewed_at, row_site, visitor, *values in conn.execute(
        f"SELECT viewed_at, site, visitor, {', '.join(DIMENSION_COLUMNS)} FROM page_views"
        " WHERE viewed_at >= %s AND viewed_at <= %s AND (%s::text IS NULL OR site = %s)",
        (now - datetime.timedelta(hours=24), now, site, site),
    ):
        row = dict(zip(DIMENSION_COLUMNS, values, strict=True))
        row["referrer"] = referrer_label(row["referrer"], row_site)
        if any(row[dim] != value for dim, value in (filters or {}).items()):
            continue
        views += 1
        if visitor is not None and viewed_at >= now - datetime.timedelta(minutes=5):
            current.add((row_site, visitor))
    assert (body["views_last_24h"], body["current_visitors"]) == (views, len(current)), context


PANELS = {
    "path": "top_paths",
    "referrer": "top_referrers",
    "source": "top_sources",
    "medium": "top_mediums",
    "campaign": "top_campaigns",
    "country": "top_countries",
    "browser": "top_browsers",
    "os": "top_os",
    "device": "top_devices",
}


def random_visits(rng: random.Random, count: int, blogs: int = 0) -> list[list[tuple]]:
    """The views of each visitor, who comes back on one day (an id lives a day), a few of them
    across midnight, as the salt's change at midnight meets a clock a moment off; referred by
    `blogs` more domains besides, when given, and a third of their Google views in another country."""
    visits, total = [], 0
    while total < count:
        site = rng.choice(["example.com", "www.example.com", "shop.example.org"])
        visitor = rng.getrandbits(63) - 2**62
        audience = [rng.choice(choices) for choices in AUDIENCES.values()]
        start = datetime.timedelta(days=rng.randrange(0, 12), minutes=rng.randrange(0, 24 * 60))
        views = []
        for _ in range(rng.randrange(1, 6)):
            age = start - datetime.timedelta(minutes=rng.randrange(0, 20))
            source = rng.choice([None, None, "news", "hn", "Mail"])
            referrer = rng.choice(
                [None, "https://www.google.com/x", "https://news.ycombinator.com/", f"https://{site}/p"]
            )
            if blogs and rng.random() < 0.5:
                referrer = f"https://blog{rng.randrange(blogs)}.example.net/"
            elif referrer and blogs and rng.random() < 0.3:
                # A visitor's searches on two of Google's domains: one of its visitors, as the
                # name is stored with each view (`insert_raw`, as the web does).
                referrer = referrer.replace("www.google.com/x", "google.de/")
            views.append((site, f"/p{rng.randrange(0, 15)}", source, referrer, visitor, *audience, age))
        visits.append(views)
        total += len(views)
    return visits


def arrivals(rng: random.Random, visits: list[list[tuple]], chunks: int) -> list[list[tuple]]:
    """Views in the order they reach Tally: as time passes; a recent visitor's views spread over
    two chunks in any order, so they fall on both sides of a rollup. (Views older than the
    visitor rows' 3 days arrive together: ids are only used on their day.)"""
    visits = sorted(visits, key=lambda views: views[0][-1], reverse=True)
    batches: list[list[tuple]] = [[] for _ in range(chunks + 1)]
    for index, views in enumerate(visits):
        chunk = index * chunks // len(visits)
        recent = views[0][-1] < datetime.timedelta(days=2)
        for view in views:
            batches[chunk + (rng.random() < 0.5 if recent else 0)].append(view)
    for batch in batches:
        rng.shuffle(batch)
    return batches


def on_one_day(conn: psycopg.Connection, tz: str, check: Callable[[], None]) -> None:
    """Run `check` (requests and brute-force counts, each reading the clock) once more if it
    fails while the zone's day turns: an answer of one day's window and a count of the next
    differ (a run at Kathmandu's midnight, 18:15 UTC, failed so). A failure on one day stands."""
    for attempt in (1, 2):
        day = conn.execute("SELECT (now() AT TIME ZONE %s)::date", (tz,)).fetchone()[0]
        try:
            check()
            return
        except AssertionError:
            turned = conn.execute("SELECT (now() AT TIME ZONE %s)::date", (tz,)).fetchone()[0] != day
            if attempt == 2 or not turned:
                raise


def insert_raw(conn: psycopg.Connection, views: list[tuple]) -> None:
    """Views (..., age) at now() - age, the age shifted as a test's `age_shift` says (tests/ages.py),
    each with the search engine's name the web would store with it."""
    views = [(*view[:-1], search_engine(view[3], view[0]), ages.placed(view[-1])) for view in views]
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO page_views (site, path, source, referrer, visitor, medium, campaign, country,"
            " browser, os, device, search_engine, viewed_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now() - %s)",
            views,
        )


@pytest.mark.parametrize(
    ("seed", "tz"),
    [
        (1, "UTC"),
        (2, "UTC"),
        (3, "America/New_York"),
        (4, "Asia/Kathmandu"),  # +5:45
        (5, "Australia/Adelaide"),  # +9:30, +10:30 in summer
        (6, "America/St_Johns"),  # -3:30, -2:30 in summer
        (7, "Pacific/Kiritimati"),  # +14
    ],
)
def test_views_and_visitors_per_day_are_exact_across_rollups_and_the_tail(client, conn, seed, tz, age_shift):
    load_in_chunks(conn, random.Random(seed))
    on_one_day(conn, tz, lambda: check_every_window(client, conn, tz))


@pytest.mark.parametrize(
    ("ranked", "seed", "tz"), [(1, 21, "UTC"), (4, 22, "Asia/Kathmandu"), (12, 23, "UTC")]
)
def test_panels_are_exact_when_a_window_reads_only_each_dimensions_most_viewed_values(
    client, conn, monkeypatch, ranked, seed, tz, age_shift
):
    # A window reads its dimensions' first RANKED_VALUES + 1 values (tally/web/values.py):
    # with 15 paths and a few of the rest, fewer than there are. The tail's unread values, and
    # every value when those read cannot fill a panel, are looked up.
    monkeypatch.setattr("tally.web.values.RANKED_VALUES", ranked)
    load_in_chunks(conn, random.Random(seed), blogs=12)
    on_one_day(conn, tz, lambda: check_every_window(client, conn, tz))
    # A site whose reads are slow has its values read in four statements sent at once (all
    # are slow here), each within the statement timeout: the same answers.
    monkeypatch.setattr("tally.web.stats.SPLIT_AFTER_SECONDS", 0.0)
    statements = executed(monkeypatch, QUERIES["stats_rolled_up_dims"])
    # A late view five days old: every window's settled days change with the rollup (else only
    # the days after yesterday's would be read again, and those not ranked when they are few).
    insert_raw(
        conn,
        [("example.com", "/late", None, None, None, *(None for _ in AUDIENCES), datetime.timedelta(days=5))],
    )
    roll_up(conn)  # a new state: every window read again, the first of each site's in one
    on_one_day(conn, tz, lambda: check_every_window(client, conn, tz))
    ranked = [params["dims"] for params in statements if params["ranked"] is not None]  # no full read
    assert ["entry"] in ranked and ["exit"] in ranked and ["path"] in ranked  # split
    assert any(len(dims) > 3 for dims in ranked)  # and not: each site's first read


def executed(monkeypatch, *texts: str) -> list[dict]:
    """The parameters of each execution of any of `texts` from now on."""
    ran: list[dict] = []
    original = psycopg.Cursor.execute

    def execute(self, query, params=None, *args, **kwargs):
        if query in texts:
            ran.append(params)
        return original(self, query, params, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    return ran


def load_in_chunks(conn: psycopg.Connection, rng: random.Random, blogs: int = 0) -> None:
    """1,500 random views in six chunks, most of them rolled up after they arrive, the last the tail."""
    batches = arrivals(rng, random_visits(rng, 1500, blogs), chunks=6)
    for batch in batches[:-1]:
        insert_raw(conn, batch)
        if rng.random() < 0.7:
            roll_up(conn)
    insert_raw(conn, batches[-1])  # the tail: some of its visitors are in the rollups already


def check_every_window(client, conn: psycopg.Connection, tz: str) -> None:
    """Every figure of /api/stats and /api/export against the brute force, for windows of 1 to
    30 days, of every site and of one site at a time."""
    for days in (1, 3, 12, 30):
        for site in (None, "example.com", "shop.example.org"):
            query = {"days": str(days), "tz": tz, **({"site": site} if site else {})}
            body = client.get("/api/stats", query).json
            assert body["tz"] == tz
            expected = brute_force(conn, days, site, tz)
            daily = {day["day"]: (day["views"], day["visitors"]) for day in body["daily"] if day["views"]}
            assert daily == expected["daily"], (days, site)
            assert body["visitors"] == sum(visitors for _, visitors in expected["daily"].values())
            for key in PANELS.values():
                assert body[key] == expected[key], (days, site, key)
            assert_visits_exact(body, expected, (days, site))
            assert_recent_exact(conn, body, site, (days, site))
            exported = client.get("/api/export", query)
            assert exported.content_type == "text/csv"
            rows = list(csv.DictReader(io.StringIO(exported.text)))
            assert not rows or list(rows[0]) == ["day", "path", "views", "visitors"]
            per_path = {(row["day"], row["path"]): (int(row["views"]), int(row["visitors"])) for row in rows}
            assert per_path == expected["export"], (days, site)


FILTER_CASES = [
    {"country": "US"},
    {"browser": "Chrome"},
    {"path": "/p3"},
    {"referrer": "google.com"},  # google.de's views too
    {"referrer": "news.ycombinator.com"},
    {"source": "news", "device": "phone"},
    {"country": "DE", "os": "Linux"},
    {"medium": "email", "campaign": "spring"},
    {"campaign": "été"},
    {"campaign": "Ëvent", "country": "US"},
    {"country": "ZZ"},  # a value nobody has: an empty answer, not an error
]


@pytest.mark.parametrize(("seed", "tz"), [(11, "UTC"), (12, "Asia/Kathmandu"), (13, "America/St_Johns")])
def test_every_filter_and_pair_of_filters_is_exact(client, conn, seed, tz, age_shift):
    rng = random.Random(seed)
    batches = arrivals(rng, random_visits(rng, 1200), chunks=4)
    for batch in batches[:-1]:
        insert_raw(conn, batch)
        roll_up(conn)
    insert_raw(conn, batches[-1])

    def check() -> None:
        for filters in FILTER_CASES:
            for days, site in ((1, None), (12, None), (30, "example.com")):
                query = {"days": str(days), "tz": tz, **filters, **({"site": site} if site else {})}
                body = client.get("/api/stats", query).json
                expected = brute_force(conn, days, site, tz, filters)
                assert body["filters"] == filters
                daily = {day["day"]: (day["views"], day["visitors"]) for day in body["daily"] if day["views"]}
                assert daily == expected["daily"], (filters, days, site)
                for key in PANELS.values():
                    assert body[key] == expected[key], (filters, days, site, key)
                assert_visits_exact(body, expected, (filters, days, site))
                assert_recent_exact(conn, body, site, (filters, days, site), filters)
                rows = list(csv.DictReader(io.StringIO(client.get("/api/export", query).text)))
                per_path = {
                    (row["day"], row["path"]): (int(row["views"]), int(row["visitors"])) for row in rows
                }
                assert per_path == expected["export"], (filters, days, site)

    on_one_day(conn, tz, check)


@pytest.mark.parametrize(
    ("filters", "tz"),
    [
        ({}, "Asia/Kathmandu"),
        ({"country": "US"}, "Asia/Kathmandu"),
        ({}, "America/St_Johns"),
        ({"country": "US"}, "Pacific/Kiritimati"),
    ],
)
def test_compare_previous_adds_the_period_before_with_the_change(client, conn, filters, tz, age_shift):
    rng = random.Random(21)
    batches = arrivals(rng, random_visits(rng, 800), chunks=2)
    for batch in batches[:-1]:
        insert_raw(conn, batch)
        roll_up(conn)
    insert_raw(conn, batches[-1])  # the tail: the period before has views in it too
    zone = tz
    body = client.get("/api/stats", {"days": "5", "compare": "previous", "tz": zone, **filters}).json
    current = brute_force(conn, 5, None, zone, filters)
    first_day = datetime.date.fromisoformat(body["daily"][0]["day"])
    before = brute_force(conn, 5, None, zone, filters, last_day=first_day - datetime.timedelta(days=1))
    previous = body["previous"]
    assert [day["day"] for day in previous["daily"]] == [
        (first_day - datetime.timedelta(days=offset)).isoformat() for offset in range(5, 0, -1)
    ]
    counted = {day["day"]: (day["views"], day["visitors"]) for day in previous["daily"] if day["views"]}
    assert counted == before["daily"]
    # The period before is a past window: its visits take the views after its end too.
    for key in VISIT_KEYS[:4]:
        assert previous[key] == before[key], key
    assert {day["day"]: day["visits"] for day in previous["daily"] if day["visits"]} == before["daily_visits"]
    views_before = sum(views for views, _ in before["daily"].values())
    views_now = sum(views for views, _ in current["daily"].values())
    assert previous["total_views"] == views_before and body["total_views"] == views_now
    change = round(100 * (views_now - views_before) / views_before, 1)
    assert previous["change_percent"]["total_views"] == change
    assert "previous" not in client.get("/api/stats", {"days": "5"}).json


def test_the_filtered_reads_scan_page_views_themselves_not_a_function(conn):
    """tally_views_matching (migrations/0014) is inlined into each filtered query, so the
    planner sees page_views and its indexes, as if the filters were written out."""
    from tally.db import QUERIES

    params = {
        "start": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
        "end": datetime.datetime(2026, 2, 1, tzinfo=datetime.UTC),
        "tz": "UTC",
        "site": None,
        "now": datetime.datetime(2026, 2, 1, tzinfo=datetime.UTC),
        "since": datetime.datetime(2026, 1, 31, tzinfo=datetime.UTC),
        "five_minutes_ago": datetime.datetime(2026, 1, 31, 23, 55, tzinfo=datetime.UTC),
        "goals_from": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
        "goals_until": datetime.datetime(2026, 2, 1, tzinfo=datetime.UTC),
        **{name: None for name in (*DIMENSION_COLUMNS, "event", "goal_path")},
        **EVERY_VIEW,
        "buckets": False,
        "country": "DE",
        "panels": True,
        "goals_only": False,
    }
    params.update(filtered.utc_days(params["start"], params["end"]))
    names = ("filtered_answer", "recent_visitors", "filtered_export")
    alone = {"country": None, "goals_only": True}  # goals alone: their visitors' events count too
    for goals in ({}, {"event": "Signup"}, {"goal_path": "/thanks"}, {"event": "Signup", **alone}):
        for name in names:
            plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + QUERIES[name], {**params, **goals}))
            assert "Function Scan on tally_views_matching" not in plan, (name, goals, plan)
            assert " on page_views" in plan, (name, goals, plan)


def test_the_filtered_scan_may_run_in_parallel_workers(conn):
    """tally_views_matching and tally_visits_of are PARALLEL SAFE (migrations/0021): without it
    PostgreSQL never splits a filtered answer's scan between workers, however many views."""
    from tally.db import QUERIES

    conn.execute("INSERT INTO page_views (path, country) SELECT '/p', 'DE' FROM generate_series(1, 1000)")
    conn.execute("ANALYZE page_views")
    params = {
        "start": datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1),
        "end": datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1),
        "tz": "UTC",
        "site": None,
        "panels": True,
        **{name: None for name in (*DIMENSION_COLUMNS, "event", "goal_path")},
        **EVERY_VIEW,
        "buckets": False,
        "country": "DE",
        "goals_only": False,
    }
    params.update(filtered.utc_days(params["start"], params["end"]))
    with conn.transaction():  # the planner told that workers cost nothing, for this test only
        for setting in ("parallel_setup_cost", "parallel_tuple_cost", "min_parallel_table_scan_size"):
            conn.execute(f"SET LOCAL {setting} = 0")
        plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + QUERIES["filtered_answer"], params))
    assert "Gather" in plan, plan


def test_a_goal_filter_finds_its_visitors_once_however_many_day_partitions(conn):
    """As `(site, visitor) IN (subquery)` the goal filters were a hashed subplan built again
    for each partition the window reads: 30 reads of the events, or of the window's views
    for goal_path, in a 30-day window. A join finds them once (migrations/0021)."""
    from tally.db import QUERIES

    today = datetime.datetime.now(datetime.UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    params = {
        "start": today - datetime.timedelta(days=6),
        "end": today + datetime.timedelta(days=1),
        "tz": "UTC",
        "site": "example.com",
        "panels": True,
        **{name: None for name in (*DIMENSION_COLUMNS, "event", "goal_path")},
        **EVERY_VIEW,
        "buckets": False,
    }
    params.update(filtered.utc_days(params["start"], params["end"]))
    with conn.transaction() as held:  # the days' partitions go with it
        for back in range(1, 7):
            conn.execute(
                "SELECT tally_ensure_day_partition(%s)", ((today - datetime.timedelta(days=back)).date(),)
            )
        conn.execute(
            "INSERT INTO page_views (site, path, visitor, viewed_at)"
            " SELECT 'example.com', '/p' || n %% 3, n %% 5, %s - n * interval '1 hour'"
            "   FROM generate_series(0, 143) n",
            (today,),
        )
        conn.execute(
            "INSERT INTO events (site, name, path, visitor, occurred_at)"
            " SELECT 'example.com', 'Signup', '/p0', n, %s - n * interval '1 day'"
            "   FROM generate_series(0, 4) n",
            (today,),
        )
        for goals in ({"event": "Signup"}, {"goal_path": "/p1"}, {"event": "Signup", "goal_path": "/p1"}):
            for goals_only in (True, False):  # alone, or beside a filter on a view's values
                plan = "\n".join(
                    row[0]
                    for row in conn.execute(
                        "EXPLAIN ANALYZE " + QUERIES["filtered_answer"],
                        {**params, **goals, "goals_only": goals_only},
                    )
                )
                assert plan.count("page_views_p") >= 7, plan  # the window reads a partition a day
                assert "SubPlan" not in plan and "loops=7" not in plan, (goals, plan)
        raise psycopg.Rollback(held)


def test_bad_filters_are_a_400_and_unknown_values_an_empty_answer(client, conn):
    beacon(client, "https://example.com/a", status=201)
    for query, word in (
        ({"contry": "DE"}, "contry"),
        ({"country": ["DE", "FR"]}, "once"),
        ({"device": ["phone", ""]}, "once"),  # an empty copy too: it was taken as device=phone
        ({"compare": "yesterday"}, "compare"),
        ({"path": "/a\x00"}, "printable"),
    ):
        for route in ("/api/stats", "/api/export", "/"):
            if route == "/api/export" and "compare" in query:
                continue
            assert word in client.get(route, query, status=400).json["error"], (route, query)
    body = client.get("/api/stats", {"country": "ZZ", "path": "/nowhere"}).json
    assert body["total_views"] == 0 and body["top_paths"] == [] and body["current_visitors"] == 0


def test_a_country_or_device_filter_is_read_in_any_case(client, conn):
    """Codes and classes are stored in one case: `country=gb` counted nothing (all zeros, no
    error) while `GB` had the views."""
    conn.execute(
        "INSERT INTO page_views (path, country, device) VALUES ('/a', 'GB', 'phone'), ('/b', 'DE', 'phone')"
    )
    for query in ({"country": "gb"}, {"country": "Gb", "device": "PHONE"}):
        body = client.get("/api/stats", {"days": "1", **query}).json
        assert body["total_views"] == 1 and body["filters"]["country"] == "GB", query


@pytest.mark.parametrize("rolled_up", [False, True])
def test_an_empty_value_is_no_panel_row(client, conn, rolled_up):
    """An import's '' (no source) was listed as a blank row, whose click filtered nothing."""
    conn.execute(
        "INSERT INTO page_views (path, source, browser) SELECT '/a', '', '' FROM generate_series(1, 5)"
        " UNION ALL SELECT '/b', 'news', 'Firefox'"
    )
    if rolled_up:
        conn.execute("SELECT tally_rollup_page_views()")
    for query in ({}, {"path": "/a"}, {"device": ""}):
        body = client.get("/api/stats", {"days": "1", **query}).json
        assert "" not in [row["source"] for row in body["top_sources"]], query
        assert "" not in [row["browser"] for row in body["top_browsers"]], query
    assert client.get("/api/stats", {"days": "1"}).json["top_sources"] == [
        {"source": "news", "views": 1, "visitors": 0}
    ]


@pytest.mark.parametrize(
    ("seed", "tz"),
    [(11, "UTC"), (12, "America/New_York"), (13, "Asia/Kathmandu"), (14, "Pacific/Kiritimati")],
)
def test_a_window_ending_on_a_past_day_is_exact(pool, conn, seed, tz, age_shift):
    """StatsReader.stats_for_window(..., last_day=D): the window of whole days ending on D (the
    weekly and monthly reports' windows) against the brute-force count, the tail included."""
    from tally.search_engines import with_reported_domains
    from tally.web.stats import StatsReader

    rng = random.Random(seed)
    batches = arrivals(rng, random_visits(rng, 1500), chunks=4)
    for batch in batches[:-1]:
        insert_raw(conn, batch)
        roll_up(conn)
    insert_raw(conn, batches[-1])  # some of the past days' views are still in the tail
    reader = StatsReader(pool, retention_days=30)
    today = conn.execute("SELECT (now() AT TIME ZONE %s)::date", (tz,)).fetchone()[0]
    for days, back in ((1, 1), (7, 1), (7, 3), (3, 9), (30, 2)):
        last_day = today - datetime.timedelta(days=back)
        for site in (None, "example.com"):
            # As the API sends it, which the brute-force count names as it does.
            body = with_reported_domains(reader.stats_for_window(days, site, tz, last_day=last_day))
            expected = brute_force(conn, days, site, tz, last_day=last_day)
            assert [day["day"] for day in body["daily"]][-1] == last_day.isoformat()
            assert len(body["daily"]) == days and "views_last_24h" not in body
            daily = {day["day"]: (day["views"], day["visitors"]) for day in body["daily"] if day["views"]}
            assert daily == expected["daily"], (days, back, site)
            assert body["total_views"] == sum(views for views, _ in expected["daily"].values())
            for key in ("top_paths", "top_sources", "top_referrers"):
                assert body[key] == expected[key], (days, back, site, key)
            assert_visits_exact(body, expected, (days, back, site))
    # last_day today is the window of before, to the figure; a day ahead is refused.
    same = [reader.stats_for_window(7, None, tz, last_day=last) for last in (today, None)]
    for answer in same:
        del answer["generated_at"]
    assert same[0] == same[1]
    with pytest.raises(ValueError):
        reader.stats_for_window(7, None, tz, last_day=today + datetime.timedelta(days=1))


def test_a_tail_view_after_a_past_window_ends_moves_a_visit_that_started_inside_it(pool, conn):
    """A visit's first view rolled up 10 minutes before a past window's end (a local midnight in
    the UTC day), its second in the tail 5 minutes after it: the visit starts inside the window,
    so it is no bounce there. The tail's visits were read only when the tail had ids on the
    window's days (the test above failed so at 17:23 UTC, when its random visits met this)."""
    from tally.web.stats import StatsReader

    tz = "Asia/Kathmandu"  # +5:45: the local midnight falls at 18:15 UTC
    today = conn.execute("SELECT (now() AT TIME ZONE %s)::date", (tz,)).fetchone()[0]
    last_day = today - datetime.timedelta(days=2)
    end = conn.execute("SELECT %s::timestamp AT TIME ZONE %s", (last_day + datetime.timedelta(days=1), tz))
    end = end.fetchone()[0]
    insert = "INSERT INTO page_views (site, path, visitor, viewed_at) VALUES ('example.com', %s, 7, %s)"
    conn.execute(insert, ("/in", end - datetime.timedelta(minutes=10)))
    roll_up(conn)
    conn.execute(insert, ("/after", end + datetime.timedelta(minutes=5)))
    body = StatsReader(pool, retention_days=30).stats_for_window(1, None, tz, last_day=last_day)
    assert (body["total_views"], body["visits"], body["bounce_rate"]) == (1, 1, 0)
    assert body["views_per_visit"] == 2 and body["visit_duration_seconds"] == 900
    assert body["top_exit_pages"] == [{"path": "/after", "visits": 1}]


def test_days_are_counted_in_timezone_or_tz(database_url, pool, conn):
    # 23:50 UTC yesterday is today in Kathmandu (+5:45) and yesterday in New York.
    conn.execute(
        "INSERT INTO page_views (path, viewed_at) VALUES"
        " ('/late', date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' - interval '10 minutes')"
    )
    local = make_client(database_url, pool, owner=True, ADMIN_TOKEN=TOKEN, TIMEZONE="Asia/Kathmandu")
    today_in = {
        tz: conn.execute("SELECT (now() AT TIME ZONE %s)::date::text", (tz,)).fetchone()[0]
        for tz in ("Asia/Kathmandu", "America/New_York")
    }
    body = local.get("/api/stats?days=2").json
    assert body["tz"] == "Asia/Kathmandu" and body["daily"][-1]["day"] == today_in["Asia/Kathmandu"]
    days = {day["day"]: day["views"] for day in body["daily"] if day["views"]}
    expected = conn.execute(
        "SELECT (viewed_at AT TIME ZONE 'Asia/Kathmandu')::date::text FROM page_views"
    ).fetchone()[0]
    assert days == {expected: 1}
    body = local.get("/api/stats?days=2&tz=America/New_York").json
    assert body["tz"] == "America/New_York" and body["daily"][-1]["day"] == today_in["America/New_York"]
    for bad in ("Mars/Olympus", "UTC+5", "../etc/passwd", "EST5EDT,M3.2.0,M11.1.0"):
        assert "tz" in local.get("/api/stats", {"tz": bad}, status=400).json["error"]
    assert "(Asia/Kathmandu?)" in local.get("/api/stats", {"tz": "asia/kathmandu"}, status=400).json["error"]


def test_export_is_csv_with_a_header_and_one_row_per_day_and_path(client, conn):
    beacon(client, "https://example.com/a", status=201)
    beacon(client, "https://example.com/a", address=OTHER_ADDRESS, status=201)
    roll_up(conn)
    beacon(client, "https://example.com/a", status=201)  # the same visitor again, in the tail
    beacon(client, "https://example.com/b,c", status=201)
    response = client.get("/api/export?days=1&site=example.com", status=200)
    assert response.headers["Content-Disposition"] == 'attachment; filename="tally-example.com-1-days.csv"'
    rows = list(csv.reader(io.StringIO(response.text)))
    today = client.get("/api/stats?days=1").json["daily"][-1]["day"]
    assert rows == [["day", "path", "views", "visitors"], [today, "/a", "3", "2"], [today, "/b,c", "1", "1"]]
    assert client.get("/api/export?days=0", status=400).json["error"].startswith("days")
    assert list(csv.reader(io.StringIO(client.get("/api/export?site=none.example").text))) == [
        ["day", "path", "views", "visitors"]
    ]


@pytest.mark.parametrize("filters", [{}, {"country": "US"}])
def test_a_large_export_is_read_a_day_at_a_time_and_sent_from_a_file_in_order(
    client, conn, pool, monkeypatch, filters, age_shift
):
    # Days rolled up, days only in the tail, days with both; fetched 3 rows at a time and
    # written to a file on disk (past 64 bytes), the pool's connection back before it is sent.
    monkeypatch.setattr("tally.web.export.FETCH_ROWS", 3)
    monkeypatch.setattr("tally.web.export.SPOOL_BYTES", 64)
    rng = random.Random(31)

    def arrive_on(days: tuple[int, ...]) -> None:
        for day in days:
            views = [view for visit in random_visits(rng, 40) for view in visit]
            age = datetime.timedelta(days=day, minutes=rng.randrange(600))
            insert_raw(conn, [(*view[:-1], age) for view in views])

    arrive_on((9, 6, 5, 2, 1))
    roll_up(conn)
    arrive_on((8, 6, 3, 1, 0))  # the tail: 3 days ago (or 4) only there

    def check() -> None:
        query = {"days": "12", "site": "example.com", **filters}
        rows = list(csv.reader(io.StringIO(client.get("/api/export", query).text)))
        assert rows[0] == ["day", "path", "views", "visitors"]
        expected = brute_force(conn, 12, "example.com", filters=filters)["export"]
        ordered = sorted(expected.items(), key=lambda item: (item[0][0], -item[1][0], item[0][1]))
        assert rows[1:] == [[day, path, str(n), str(visitors)] for (day, path), (n, visitors) in ordered]

    on_one_day(conn, "UTC", check)
    spool = export.daily_paths(pool, 12, "example.com", "UTC", filters)
    assert spool._rolled  # past SPOOL_BYTES: on disk
    stats = pool.get_stats()
    assert stats["pool_available"] == stats["pool_size"]  # the connection went back before sending
    assert b"".join(export.chunks(spool)).decode().startswith("day,path,views,visitors\r\n")
    assert spool.closed


def test_a_zone_the_database_does_not_know_is_a_400(client, monkeypatch):
    import tally.web.params

    # Python's and PostgreSQL's zone databases are updated apart: one may know a name the other does not.
    monkeypatch.setattr(tally.web.params, "is_time_zone", lambda name: True)
    for path in ("/api/stats", "/api/export", "/"):
        response = client.get(path, {"tz": "Nowhere/Atlantis"}, status=400)
        assert "time zone" in response.json["error"]


def test_views_dated_after_today_count_on_their_own_day_not_in_todays_panels(client, conn):
    """A view dated past today's end in the request's zone (a clock far off, a backfill) is
    not today's: the totals, panels, filtered answers and export of a window ending today leave
    it out, rolled up or in the tail, at any time of day (two days ahead is past every zone's
    midnight). The windows are two days and more, so that a zone's midnight passing during the
    test keeps '/today' in them (CI once crossed Kathmandu's)."""
    conn.execute(
        "INSERT INTO page_views (path, country, visitor, viewed_at) VALUES"
        " ('/today', 'DE', 1, now() - interval '1 minute'), ('/ahead', 'DE', 2, now() + interval '2 days')"
    )
    roll_up(conn)
    conn.execute(
        "INSERT INTO page_views (path, country, visitor, viewed_at)"
        " VALUES ('/ahead-tail', 'DE', 3, now() + interval '2 days')"
    )
    for tz in ("UTC", "Asia/Kathmandu", "Pacific/Kiritimati", "Pacific/Pago_Pago"):
        for query in ({"days": "2"}, {"days": "7"}, {"days": "2", "country": "DE"}):
            query = {**query, "tz": tz}
            body = client.get("/api/stats", query).json
            assert [row["path"] for row in body["top_paths"]] == ["/today"], query
            assert (body["total_views"], body["visitors"], body["visits"]) == (1, 1, 1), query
            assert body["top_entry_pages"] == [{"path": "/today", "visits": 1}], query
            assert [row["views"] for row in body["top_countries"]] == [1], query
            exported = list(csv.DictReader(io.StringIO(client.get("/api/export", query).text)))
            assert [row["path"] for row in exported] == ["/today"], query


def test_an_id_on_two_sites_counts_once_for_each_filtered_or_not(client, conn):
    """Visitors add up per site (ids are keyed by site; an import may still share them): a
    filtered answer across every site counted an id shared by two sites once."""
    for site in ("a.example", "b.example"):
        conn.execute(
            "INSERT INTO page_views (site, path, country, visitor, viewed_at)"
            " VALUES (%s, '/', 'ZZ', 9, now()), (%s, '/', 'ZZ', NULL, now())",  # today's, at any hour
            (site, site),
        )
    for query in ({}, {"country": "ZZ"}, {"path": "/"}):
        body = client.get("/api/stats", {"days": "1", "tz": "UTC", **query}).json
        assert body["visitors"] == 2 and body["daily"][-1]["visitors"] == 2, query
        assert body["top_paths"] == [{"path": "/", "views": 4, "visitors": 2}], query
        assert body["current_visitors"] == 2, query
        rows = client.get("/api/export", {"days": "1", "tz": "UTC", **query}).text.splitlines()[1:]
        assert [row.split(",")[1:] for row in rows] == [["/", "4", "2"]], query


@pytest.mark.parametrize("rolled_up", [False, True])
def test_an_empty_value_has_its_visitors_before_and_after_the_rollup(client, conn, rolled_up):
    """An import may store '' (collect stores none): the tail's visitors of a '' source were
    read as the whole site's. The row itself is not shown (test_an_empty_value_is_no_panel_row)."""
    conn.execute(
        "INSERT INTO page_views (site, path, source, visitor, viewed_at)"
        " VALUES ('example.com', '/', '', 7, now())"  # today's, at any hour
    )
    if rolled_up:
        conn.execute("SELECT tally_rollup_page_views()")
    body = client.get("/api/stats", {"days": "1", "site": "example.com"}).json
    assert body["top_sources"] == []
    assert body["visitors"] == 1 and [day["visitors"] for day in body["daily"]] == [1]


def test_the_views_bound_of_a_first_count_reads_its_values_rows_alone(conn):
    """How many views a filtered answer can count (views_bound) reads the rollups' rows of the
    values it names and of the site. With the site's own row as an OR beside the list, it read
    every day row of the window: 70-130 ms for a first count at 1M views (PostgreSQL 18), 100-235
    ms on 15; a pair at a time through the index on (dim, value, day), 1-3 ms."""
    from tally.db import QUERIES

    conn.execute(
        "INSERT INTO page_view_day_values (site, dim, value, day, views, cells)"
        " SELECT 'example.com', 'path', '/p' || n % 2000, current_date - n / 2000, 1, '{{0,1,1,1}}'"
        "   FROM generate_series(0, 59999) AS n"
    )
    conn.execute("ANALYZE page_view_day_values")
    params = {
        "site": None,
        "from_day": datetime.date.today() - datetime.timedelta(days=29),
        "to_day": datetime.date.today() + datetime.timedelta(days=1),
        "dims": ["path"],
        "values": ["/p7"],
    }
    (plan,) = conn.execute("EXPLAIN (FORMAT JSON) " + QUERIES["filtered_views_bound"], params).fetchone()[0]
    scanned = [
        node["Node Type"] for node in plan_nodes(plan) if node.get("Relation Name") == "page_view_day_values"
    ]
    assert scanned and "Seq Scan" not in scanned, scanned
    assert conn.execute(QUERIES["filtered_views_bound"], params).fetchall() == [("path", "/p7", 30, 30)]
