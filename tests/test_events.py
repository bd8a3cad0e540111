"""Custom events through POST /api/collect (issue 18, part 2; migrations/0016): stored with
their props and visitor, refused with a clear 400 and nothing stored past the limits, and a
careless prop's distinct values capped."""

from __future__ import annotations

import json

import pytest
from psycopg.types.json import Jsonb

from tests.test_web_collect import ADDRESS, BROWSER, beacon, sites_client


@pytest.fixture
def client(database_url, pool):
    return sites_client(database_url, pool)


def send(client, body: dict, status: int = 201):
    headers = {"User-Agent": BROWSER, "X-Forwarded-For": ADDRESS, "Origin": "https://example.com"}
    return client.post(
        "/api/collect",
        json.dumps(body),
        headers=headers,
        content_type="text/plain;charset=UTF-8",
        status=status,
    )


def stored(conn) -> list[tuple]:
    return conn.execute(
        "SELECT site, name, props, path, visitor IS NOT NULL FROM events ORDER BY id"
    ).fetchall()


def test_an_event_is_stored_with_its_props_page_and_visitor_and_is_no_view(client, conn):
    response = send(
        client,
        {
            "url": "https://example.com/pricing?x=1",
            "event": "Signup",
            "props": {"plan": "pro", "seats": 3, "trial": True},
        },
    )
    assert response.json == {"stored": 1, "event": "Signup"}
    assert stored(conn) == [
        ("example.com", "Signup", {"plan": "pro", "seats": 3, "trial": True}, "/pricing", True)
    ]
    send(client, {"url": "https://example.com/", "event": "Download"})
    assert stored(conn)[-1][1:3] == ("Download", {})
    assert conn.execute("SELECT count(*) FROM page_views").fetchone()[0] == 0  # an event is no view
    beacon(client, "https://example.com/")  # a view from the same browser
    view, event = (
        conn.execute(f"SELECT visitor FROM {table} ORDER BY id LIMIT 1").fetchone()[0]
        for table in ("page_views", "events")
    )
    assert view == event  # the same person, the same keyed hash


LIMITS = [
    ({"event": ""}, '"event" must be a name of 1 to 120'),
    ({"event": "x" * 121}, '"event" must be a name of 1 to 120'),
    ({"event": 7}, '"event" must be a string'),
    ({"props": {"plan": "pro"}}, '"props" belong to an event'),
    ({"event": "E", "props": ["pro"]}, '"props" must be an object'),
    ({"event": "E", "props": {f"k{n}": n for n in range(31)}}, "more than 30 keys"),
    ({"event": "E", "props": {"k" * 301: 1}}, "1 to 300 printable"),
    ({"event": "E", "props": {"": 1}}, "1 to 300 printable"),
    ({"event": "E", "props": {"plan": "x" * 2001}}, "longer than 2000"),
    ({"event": "E", "props": {"n": int("9" * 2001)}}, "longer than 2000"),  # a number's digits too
    ({"event": "E", "props": {"plan": {"nested": 1}}}, "not nested"),
    ({"event": "E", "props": {"plan": [1]}}, "not nested"),
    ({"event": "E", "props": {"plan": None}}, "not nested"),
    ({"event": "E\n", "props": {}}, "control character"),
]


@pytest.mark.parametrize(("fields", "says"), LIMITS)
def test_an_event_past_the_limits_is_a_400_and_nothing_is_stored(client, conn, fields, says):
    response = send(client, {"url": "https://example.com/", **fields}, status=400)
    assert says in response.json["error"]
    assert stored(conn) == [] and conn.execute("SELECT count(*) FROM page_views").fetchone()[0] == 0


def test_numbers_that_json_allows_but_postgresql_does_not_are_a_400(client, conn):
    for raw in ('{"plan": NaN}', '{"plan": Infinity}'):
        body = '{"url": "https://example.com/", "event": "E", "props": ' + raw + "}"
        headers = {"User-Agent": BROWSER, "X-Forwarded-For": ADDRESS}
        client.post("/api/collect", body, headers=headers, content_type="text/plain", status=400)
    assert stored(conn) == []


def test_the_limits_themselves_are_accepted(client, conn):
    props = {f"{n:0>300}": "v" * 2000 for n in range(30)}
    send(client, {"url": "https://example.com/", "event": "x" * 120, "props": props})
    assert len(stored(conn)[0][2]) == 30


def test_a_careless_props_distinct_values_are_capped(client, conn, monkeypatch):
    from tally.web import collect

    monkeypatch.setattr(collect, "MAX_PROP_VALUES", 3)
    for n in range(5):
        send(
            client,
            {
                "url": "https://example.com/",
                "event": "Signup",
                "props": {"email": f"p{n}@x.org", "plan": "pro"},
            },
        )
    send(client, {"url": "https://example.com/", "event": "Signup", "props": {"email": "p1@x.org"}})
    emails = [props.get("email") for _, _, props, _, _ in stored(conn)]
    assert emails == ["p0@x.org", "p1@x.org", "p2@x.org", "(other)", "(other)", "p1@x.org"]
    assert {props["plan"] for _, _, props, _, _ in stored(conn)[:5]} == {"pro"}  # another prop, its own cap


# --- events in stats ----------------------------------------------------------------------------


def insert_views(conn, rows) -> None:
    """(visitor, minutes after 10:00 UTC yesterday, path, referrer, country)"""
    for visitor, minutes, path, referrer, country in rows:
        conn.execute(
            "INSERT INTO page_views (site, path, referrer, country, visitor, viewed_at)"
            " VALUES ('example.com', %s, %s, %s, %s, date_trunc('day', now(), 'UTC') - interval '14 hours'"
            " + %s * interval '1 minute')",
            (path, referrer, country, visitor, minutes),
        )


def insert_events(conn, rows) -> None:
    """(visitor, minutes after 10:00 UTC yesterday, name, props)"""
    for visitor, minutes, name, props in rows:
        conn.execute(
            "INSERT INTO events (site, name, props, path, visitor, occurred_at)"
            " VALUES ('example.com', %s, %s, '/pricing', %s,"
            " date_trunc('day', now(), 'UTC') - interval '14 hours' + %s * interval '1 minute')",
            (name, Jsonb(props), visitor, minutes),
        )


VIEWS = [
    (1, 0, "/", "https://news.ycombinator.com/", "DE"),
    (1, 5, "/pricing", None, "DE"),
    (2, 0, "/", "https://www.google.com/", "US"),
    (3, 0, "/", "https://news.ycombinator.com/", "FR"),
    (4, 0, "/", "https://t.co/", "US"),
    (4, 60, "/thanks", None, "US"),
]
EVENTS = [
    (1, 6, "Signup", {"plan": "pro"}),
    (2, 20, "Signup", {"plan": "free"}),  # visitor 2's one view and this event: one visit, no bounce
    (2, 21, "Download", {}),
    (3, 1, "Download", {"file": "a.pdf"}),
]


@pytest.mark.parametrize("rolled_up", [True, False])
def test_top_events_with_conversion_rates_and_visits_that_events_keep_from_bouncing(client, conn, rolled_up):
    from tests.test_web import roll_up

    insert_views(conn, VIEWS)
    if rolled_up:
        roll_up(conn)
    insert_events(conn, EVENTS)  # in the tail, or rolled up too
    if rolled_up:
        roll_up(conn)
    body = client.get("/api/stats", {"days": "3", "tz": "UTC"}).json
    assert body["visitors"] == 4
    assert body["top_events"] == [
        {"event": "Download", "events": 2, "visitors": 2, "conversion_rate": 0.5},
        {"event": "Signup", "events": 2, "visitors": 2, "conversion_rate": 0.5},
    ]
    # Visits: 1 (/, /pricing, Signup), 2 (/, Signup, Download: 21 minutes), 3 (/, Download),
    # 4 (/) and 4 again (/thanks, 60 minutes later): two bounces of five.
    assert body["visits"] == 5 and body["bounce_rate"] == 0.4
    assert body["visit_duration_seconds"] == round((6 + 21 + 1) * 60 / 5, 1)


def site_visitors_by_brute_force(conn, tz: str) -> dict[str, int]:
    """Each local day's distinct ids of views and events together (DESIGN.md: a visitor is
    anyone who sent something that day)."""
    rows = conn.execute(
        "SELECT ((t AT TIME ZONE %s)::date)::text, count(DISTINCT (site, visitor))"
        "  FROM (SELECT site, visitor, viewed_at AS t FROM page_views"
        "        UNION ALL SELECT site, visitor, occurred_at FROM events) sent"
        " WHERE visitor IS NOT NULL GROUP BY 1",
        (tz,),
    )
    return dict(rows.fetchall())


# Ids that sent events and no view on their UTC day (a server's Purchase, a click just after
# the salt's midnight), and ids whose events lie before their first view or after their last,
# one across a local midnight east of UTC (23:50 UTC is 05:35 the next day in Kathmandu).
EVENT_ONLY = [
    (5, 0, "Signup", {"plan": "pro"}),
    (6, 600, "Purchase", {}),
    (6, 610, "Purchase", {}),
    (1, -45, "Signup", {"plan": "free"}),
    (4, 830, "Download", {}),
]


@pytest.mark.parametrize("fold", ["none", "views", "all"])
def test_visitors_count_the_ids_of_events_too_so_no_conversion_rate_passes_one(client, conn, fold):
    """A visit is a visitor's views and events; the site's visitors are the ids that sent
    either, every day in every zone, rolled up or in the tail (they counted views' ids alone:
    an id with only a Signup made a visit and a converting visitor, and no visitor)."""
    from tests.test_web import roll_up

    insert_views(conn, VIEWS)
    if fold != "none":
        roll_up(conn)
    insert_events(conn, EVENTS + EVENT_ONLY)
    if fold == "all":
        roll_up(conn)
    for tz in ("UTC", "Asia/Kathmandu", "America/St_Johns"):
        body = client.get("/api/stats", {"days": "3", "tz": tz}).json
        expected = site_visitors_by_brute_force(conn, tz)
        assert {day["day"]: day["visitors"] for day in body["daily"] if day["visitors"]} == expected, tz
        assert body["visitors"] == sum(expected.values())
        for row in body["top_events"]:
            assert row["conversion_rate"] == round(row["visitors"] / body["visitors"], 4) <= 1
    body = client.get("/api/stats", {"days": "3", "tz": "UTC"}).json
    assert body["visitors"] == 6  # 1-4 viewed; 5 and 6 only sent events
    assert body["top_events"][0] == {"event": "Signup", "events": 4, "visitors": 3, "conversion_rate": 0.5}
    assert body["total_views"] == 6 and body["top_paths"][0]["visitors"] == 4  # a panel row: its views' ids


def test_an_event_filter_narrows_every_panel_to_the_visitors_who_sent_it(client, conn):
    from tests.test_web import roll_up

    insert_views(conn, VIEWS)
    insert_events(conn, EVENTS)
    roll_up(conn)
    body = client.get("/api/stats", {"days": "3", "event": "Signup"}).json
    assert body["filters"] == {"event": "Signup"} and body["total_views"] == 3 and body["visitors"] == 2
    assert {row["referrer"] for row in body["top_referrers"]} == {"news.ycombinator.com", "Google"}
    assert {row["country"] for row in body["top_countries"]} == {"DE", "US"}
    assert body["top_events"][0] == {"event": "Signup", "events": 2, "visitors": 2, "conversion_rate": 1.0}
    assert body["event_props"] == [
        {"prop": "plan", "value": "free", "events": 1, "visitors": 1},
        {"prop": "plan", "value": "pro", "events": 1, "visitors": 1},
    ]
    # Their visits keep their events, as unfiltered ones do: visitor 2's one view and Signup is
    # no bounce (it was, once: a filtered visit was formed of the matching views alone).
    assert body["visits"] == 2 and body["bounce_rate"] == 0
    assert body["visit_duration_seconds"] == round((6 + 21) * 60 / 2, 1)
    body = client.get("/api/stats", {"days": "3", "country": "US"}).json
    # 2 (/, Signup, Download), 4 (/) and 4 again (/thanks): two bounces of three.
    assert body["visits"] == 3 and body["bounce_rate"] == 0.6667
    assert body["visit_duration_seconds"] == round(21 * 60 / 3, 1)
    body = client.get("/api/stats", {"days": "3", "path": "/pricing"}).json
    # Visitor 1's /pricing view and its Signup a minute later; not the / before: not a matching view.
    assert body["visits"] == 1 and body["bounce_rate"] == 0 and body["visit_duration_seconds"] == 60
    assert body["top_entry_pages"] == [{"path": "/pricing", "visits": 1}]
    body = client.get("/api/stats", {"days": "3", "goal_path": "/thanks"}).json
    assert body["total_views"] == 2 and [row["referrer"] for row in body["top_referrers"]] == ["t.co"]
    body = client.get("/api/stats", {"days": "3", "event": "Nobody"}).json
    assert body["total_views"] == 0 and body["top_events"] == [] and body["event_props"] == []
    csv_rows = client.get("/api/export", {"days": "3", "event": "Download"}).text.splitlines()[1:]
    assert [row.split(",")[1:] for row in csv_rows] == [["/", "2", "2"]]  # visitors 2 and 3


def test_event_props_break_down_the_filtered_visitors_events_as_top_events_counts_them(client, conn):
    """With another filter beside `event`, its props are those of the matching visitors' sends,
    the same events its `top_events` row counts (they were every sender's: a German filter
    listed the American's plan). An id with the event and no view is in neither."""
    from tests.test_web import roll_up

    insert_views(conn, VIEWS)
    insert_events(conn, EVENTS + EVENT_ONLY)
    roll_up(conn)
    body = client.get("/api/stats", {"days": "3", "event": "Signup", "country": "DE"}).json
    assert body["visitors"] == 1 and body["top_events"][0]["events"] == 2  # visitor 1: pro and free
    assert body["event_props"] == [
        {"prop": "plan", "value": "free", "events": 1, "visitors": 1},
        {"prop": "plan", "value": "pro", "events": 1, "visitors": 1},
    ]
    body = client.get("/api/stats", {"days": "3", "event": "Signup"}).json
    signup = next(row for row in body["top_events"] if row["event"] == "Signup")
    assert signup == {"event": "Signup", "events": 3, "visitors": 2, "conversion_rate": 1.0}
    assert sum(row["events"] for row in body["event_props"]) == signup["events"]  # id 5 sent one more
    body = client.get("/api/stats", {"days": "3", "event": "Signup", "country": "FR"}).json
    assert body["event_props"] == [] and body["top_events"] == []


def test_the_dashboard_lists_events_and_a_click_narrows_the_page_to_their_visitors(client, conn):
    import html
    import re

    from tests.test_web import roll_up

    insert_views(conn, VIEWS)
    insert_events(conn, EVENTS)
    roll_up(conn)
    page = client.get("/", {"days": "3"}).text
    row = re.search(r'<tr class="" data-value="Signup">.*?</tr>', page).group(0)
    assert '<td class="num events">2</td>' in row and '<td class="num conversion">50.0%</td>' in row
    href = html.unescape(re.search(r'href="([^"]+)"', row).group(1))
    assert "event=Signup" in href
    narrowed = client.get(href).text
    assert "Event: Signup" in narrowed and 'id="total-views">3<' in narrowed
    assert '<tr data-prop="plan" data-value="pro"><td class="value">plan = pro</td>' in narrowed
    assert 'id="visits">2<' in narrowed


def test_events_of_concurrent_requests_go_in_one_statement_each_with_its_own_props(pool, conn):
    from tally.web.collect import Event, insert_events

    batch = [
        Event("example.com", "Signup", {"plan": "pro"}, "/a", 1),
        Event("example.com", "Signup", {}, "/b", None),
        Event("shop.example.org", "Buy", {"plan": "pro", "n": 2, "gift": False}, "/c", 3),
    ]
    with pool.connection() as connection:
        insert_events(connection, batch)
    assert conn.execute("SELECT site, name, props, path, visitor FROM events ORDER BY id").fetchall() == [
        tuple(event) for event in batch
    ]


@pytest.mark.parametrize("rolled_up", [True, False])
def test_a_goal_reached_outside_the_window_does_not_narrow_it(client, conn, rolled_up):
    """The window (today, in UTC) reads the views of tomorrow's UTC day too, for visits; a goal
    dated tomorrow (a clock far off) once narrowed today's answer to its visitor."""
    from tests.test_web import roll_up

    today = "date_trunc('day', now(), 'UTC')"
    for visitor, path, when in ((77, "/", "1 hour"), (78, "/", "2 hours"), (78, "/thanks", "36 hours")):
        conn.execute(
            "INSERT INTO page_views (site, path, visitor, viewed_at)"
            f" VALUES ('example.com', %s, %s, {today} + %s::interval)",
            (path, visitor, when),
        )
    for visitor, when in ((77, "36 hours"), (79, "3 hours")):
        conn.execute(
            "INSERT INTO events (site, name, path, visitor, occurred_at)"
            f" VALUES ('example.com', 'Signup', '/', %s, {today} + %s::interval)",
            (visitor, when),
        )
    if rolled_up:
        roll_up(conn)
    for goal in ({"event": "Signup"}, {"goal_path": "/thanks"}):
        body = client.get("/api/stats", {"days": "1", "tz": "UTC", **goal}).json
        assert body["total_views"] == 0 and body["visitors"] == 0 and body["visits"] == 0, goal
        rows = client.get("/api/export", {"days": "1", "tz": "UTC", **goal}).text.splitlines()[1:]
        assert rows == [], goal
    conn.execute(
        "INSERT INTO events (site, name, path, visitor, occurred_at)"
        f" VALUES ('example.com', 'Signup', '/', 77, {today} + interval '90 minutes')"
    )
    body = client.get("/api/stats", {"days": "1", "tz": "UTC", "event": "Signup"}).json
    assert body["total_views"] == 1 and body["top_events"][0]["visitors"] == 1


def test_under_a_filter_an_events_visitors_are_of_the_days_its_senders_match(client, conn):
    """A filtered answer counts a visitor on the local days it has a matching view; an event's
    visitors were counted on every local day of its sends, so one GB visitor whose two Buys
    fell either side of New York's midnight read 2 of 1 visitors (rate 2.0, capped to 1.0)."""
    conn.execute(
        "INSERT INTO page_views (site, path, country, visitor, viewed_at) VALUES"
        " ('example.com', '/', 'GB', 555, date_trunc('day', now(), 'UTC') - interval '19 hours 10 minutes')"
    )
    conn.execute(
        "INSERT INTO events (site, name, path, visitor, occurred_at) SELECT 'example.com', 'Buy', '/', 555,"
        " date_trunc('day', now(), 'UTC') - interval '19 hours' + minutes * interval '1 minute'"
        " FROM (VALUES (-5), (5)) AS sends (minutes)"
    )
    for tz in ("America/New_York", "UTC"):
        body = client.get("/api/stats", {"days": "7", "tz": tz, "country": "GB", "event": "Buy"}).json
        assert body["visitors"] == 1, tz
        assert body["top_events"] == [{"event": "Buy", "events": 2, "visitors": 1, "conversion_rate": 1.0}], (
            tz
        )
        assert body["event_props"] == [], tz


@pytest.mark.parametrize("goal", [{"event": "Signup"}, {"goal_path": "/thanks"}])
def test_the_last_24_hours_under_a_goal_take_the_visitors_who_reached_it_in_the_window(client, conn, goal):
    """views_last_24h and current_visitors found their goal's visitors in the 24 hours (and any
    time after), not in the window: a visitor who signed up two days ago and came back an hour ago
    was one of today's views but none of the last 24 hours', and one whose goal was dated days
    ahead (a clock far off) was a visitor of now, not of the window."""
    for visitor, path, when in (
        (77, "/", "-1 hour"),
        (77, "/thanks", "-2 days"),
        (78, "/", "-2 minutes"),
        (78, "/thanks", "3 days"),
    ):
        conn.execute(
            "INSERT INTO page_views (site, path, visitor, viewed_at)"
            " VALUES ('example.com', %s, %s, now() + %s::interval)",
            (path, visitor, when),
        )
    for visitor, when in ((77, "-2 days"), (78, "3 days")):
        conn.execute(
            "INSERT INTO events (site, name, path, visitor, occurred_at)"
            " VALUES ('example.com', 'Signup', '/', %s, now() + %s::interval)",
            (visitor, when),
        )
    body = client.get("/api/stats", {"days": "7", "tz": "UTC", **goal}).json
    assert body["total_views"] == 2  # 77's two views; 78 reached the goal after the window
    assert body["views_last_24h"] == 1 and body["current_visitors"] == 0, body


def test_a_visitor_who_only_sent_an_event_just_now_is_a_current_visitor(client, conn):
    """`visitors` counts the ids that sent views or events; `current_visitors` counted views'
    ids only, so a server's Purchase a minute ago made a visitor of today but none of now."""
    conn.execute(
        "INSERT INTO page_views (site, path, visitor, viewed_at) VALUES ('example.com', '/', 1, now())"
    )
    conn.execute(
        "INSERT INTO events (site, name, path, visitor, occurred_at) VALUES"
        " ('example.com', 'Purchase', '/', 1, now()),"
        " ('example.com', 'Purchase', '/', 2, now() - interval '1 minute'),"
        " ('example.com', 'Purchase', '/', 3, now() - interval '10 minutes'),"
        " ('example.com', 'Purchase', '/', 4, now() + interval '1 hour')"
    )
    for site in ({}, {"site": "example.com"}):
        assert client.get("/api/stats", {"days": "1", **site}).json["current_visitors"] == 2, site
    assert client.get("/api/stats", {"days": "1", "site": "other.example"}).json["current_visitors"] == 0
