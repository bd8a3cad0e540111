"""Custom events through POST /api/collect (issue 18, part 2; migrations/0016): stored with
their props and visitor, refused with a clear 400 and nothing stored past the limits, and a
careless prop's distinct values capped."""

from __future__ import annotations

import collections
import datetime
import json
import zoneinfo

import pytest
from psycopg.types.json import Jsonb

from tests import ages
from tests.test_web_collect import ADDRESS, BROWSER, beacon, sites_client
from tests.test_web_exact import assert_visits_exact


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
    ({"event": "E", "props": {"plan": None}}, "not null"),
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


def test_line_breaks_in_a_props_value_are_folded_into_a_space(client, conn):
    """A `data-tally-prop-*` attribute of formatted HTML holds line breaks and indentation; such a
    value was refused (400: a control character) and the tracker, which sees no answer, lost the
    click. Tabs and line breaks (with the spaces around them) are one space now; other control
    characters are still refused."""
    props = {"plan": "\n      pro\n    ", "note": "two\r\nlines\tand a tab", "kept": "  as  sent "}
    send(client, {"url": "https://example.com/", "event": "Buy", "props": props})
    assert stored(conn)[-1][2] == {"plan": "pro", "note": "two lines and a tab", "kept": "  as  sent "}
    refused = send(client, {"url": "https://example.com/", "event": "Buy", "props": {"a": "x\x00"}}, 400)
    assert "control character" in refused.json["error"] and len(stored(conn)) == 1


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
    assert {row["referrer"] for row in body["top_referrers"]} == {"news.ycombinator.com", "google.com"}
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
    listed the American's plan). An id with the event and no view is in neither (it has no
    country); with `event` alone it is in both, as it is in the unfiltered row."""
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
    assert signup == {"event": "Signup", "events": 4, "visitors": 3, "conversion_rate": 1.0}  # 5's too
    assert sum(row["events"] for row in body["event_props"]) == signup["events"]
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
    # An Event's salt_day is no column: it dates the event.
    assert conn.execute("SELECT site, name, props, path, visitor FROM events ORDER BY id").fetchall() == [
        tuple(event)[:5] for event in batch
    ]


@pytest.mark.parametrize("rolled_up", [True, False])
def test_a_goal_reached_outside_the_window_does_not_narrow_it(client, conn, rolled_up):
    """The window (today, in UTC) reads the views of tomorrow's UTC day too, for visits; a goal
    dated tomorrow (a clock far off) once narrowed today's answer to its visitor. (79 sent the
    Signup today and no view: a visitor of `?event=Signup` with a visit of its event, no view.)"""
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
    for goal, senders in (({"event": "Signup"}, 1), ({"goal_path": "/thanks"}, 0)):
        body = client.get("/api/stats", {"days": "1", "tz": "UTC", **goal}).json
        assert body["total_views"] == 0 and body["visitors"] == senders and body["visits"] == senders, goal
        rows = client.get("/api/export", {"days": "1", "tz": "UTC", **goal}).text.splitlines()[1:]
        assert rows == [], goal
    conn.execute(
        "INSERT INTO events (site, name, path, visitor, occurred_at)"
        f" VALUES ('example.com', 'Signup', '/', 77, {today} + interval '90 minutes')"
    )
    body = client.get("/api/stats", {"days": "1", "tz": "UTC", "event": "Signup"}).json
    assert body["total_views"] == 1 and body["visitors"] == 2  # 77, and 79 that sent it alone
    assert body["top_events"] == [{"event": "Signup", "events": 2, "visitors": 2, "conversion_rate": 1.0}]


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


def test_a_server_that_sent_the_event_and_no_view_is_one_of_its_visitors_under_the_filter(client, conn):
    """Issue 18: `?event=Purchase` narrows every panel to the visitors who sent it. Unfiltered,
    Purchase has 2 visitors, a browser's and a server's (no view: a visitor as the ids of events
    are); under `?event=Purchase` the answer said 1 (the ids of the matching views). The view
    panels hold the browser's views alone; a filter on a view's values (country) counts the ids
    of its matching views, and an event has no country."""
    conn.execute(
        "INSERT INTO page_views (site, path, country, visitor, viewed_at) VALUES"
        " ('example.com', '/', 'US', 1, now() - interval '3 minutes'),"
        " ('example.com', '/cart', 'US', 1, now() - interval '2 minutes'),"
        " ('example.com', '/', 'DE', 3, now() - interval '2 minutes')"
    )
    conn.execute(
        "INSERT INTO events (site, name, props, path, visitor, occurred_at) VALUES"
        """ ('example.com', 'Purchase', '{"plan": "pro"}', '/cart', 1, now() - interval '1 minute'),"""
        """ ('example.com', 'Purchase', '{"plan": "team"}', '/checkout', 2, now() - interval '1 minute')"""
    )
    purchase = {"event": "Purchase", "events": 2, "visitors": 2}
    # Two days: rows minutes old are inside the window at any time, just after midnight too.
    unfiltered = client.get("/api/stats", {"days": "2"}).json
    assert {key: unfiltered["top_events"][0][key] for key in purchase} == purchase
    body = client.get("/api/stats", {"days": "2", "event": "Purchase"}).json
    assert body["visitors"] == 2 and body["current_visitors"] == 2
    assert body["top_events"] == [{**purchase, "conversion_rate": 1.0}]
    assert body["event_props"] == [
        {"prop": "plan", "value": "pro", "events": 1, "visitors": 1},
        {"prop": "plan", "value": "team", "events": 1, "visitors": 1},
    ]
    assert body["total_views"] == 2 and body["top_paths"] == [
        {"path": "/", "views": 1, "visitors": 1},
        {"path": "/cart", "views": 1, "visitors": 1},
    ]
    assert [row["country"] for row in body["top_countries"]] == ["US"]
    # The browser's visit (two views and the Purchase: no bounce) and the server's, of its event
    # alone, which enters and leaves at its page (as unfiltered).
    assert body["visits"] == 2 and body["bounce_rate"] == 0 and body["views_per_visit"] == 1
    assert body["top_entry_pages"] == [{"path": "/", "visits": 1}, {"path": "/checkout", "visits": 1}]
    assert unfiltered["visits"] == 3 and unfiltered["top_entry_pages"] == [
        {"path": "/", "visits": 2},
        {"path": "/checkout", "visits": 1},
    ]
    page = client.get("/", {"days": "2", "event": "Purchase"}).text
    assert 'id="total-visitors">2<' in page and 'id="total-views">2<' in page and 'id="visits">2<' in page
    assert '<td class="num events">2</td><td class="num visitors">2</td>' in page
    body = client.get("/api/stats", {"days": "2", "event": "Purchase", "country": "US"}).json
    assert body["visitors"] == 1 and body["current_visitors"] == 1 and body["visits"] == 1
    assert body["top_events"] == [{**purchase, "events": 1, "visitors": 1, "conversion_rate": 1.0}]


# --- goal filters, exact against a brute-force count ----------------------------------------------

GOAL_CASES = [
    {"event": "Purchase"},
    {"event": "Signup"},
    {"goal_path": "/thanks"},
    {"event": "Purchase", "goal_path": "/thanks"},
    {"event": "Signup", "country": "US"},
    {"event": "Purchase", "path": "/pricing"},
    {"goal_path": "/thanks", "country": "DE"},
]


MINUTE = datetime.timedelta(minutes=1)  # nothing dated after now: today's panels leave that out


def random_senders(rng, count: int) -> tuple[list[tuple], list[tuple]]:
    """Views (site, path, country, visitor, age) and events (site, name, props, path, visitor,
    age) of `count` ids: most view pages and some of them send events beside their views (before
    the first, after the last, over 30 minutes apart, on the next day); some send events alone
    (a server's Purchase, a click just after the salt's midnight)."""
    views, sent = [], []
    for _ in range(count):
        site = rng.choice(["example.com", "shop.example.org"])
        visitor = rng.getrandbits(63) - 2**62
        start = datetime.timedelta(days=rng.randrange(0, 5), minutes=rng.randrange(0, 24 * 60))
        kind = rng.random()
        if kind < 0.7:
            country = rng.choice([None, "DE", "US", "FR"])
            for _ in range(rng.randrange(1, 5)):
                age = max(start - datetime.timedelta(minutes=rng.randrange(0, 25)), MINUTE)
                views.append((site, rng.choice(["/", "/pricing", "/thanks", "/blog"]), country, visitor, age))
        if kind >= 0.5:
            shift = datetime.timedelta(hours=rng.choice([0, 0, 0, -20]))  # -20 h: a later day
            for _ in range(rng.randrange(1, 4)):
                name = rng.choice(["Purchase", "Purchase", "Signup", "Download"])
                props = (
                    {"plan": rng.choice(["pro", "free"])} if name != "Download" else {"n": rng.randrange(3)}
                )
                age = max(start + shift + datetime.timedelta(minutes=rng.randrange(-40, 50)), MINUTE)
                sent.append((site, name, Jsonb(props), rng.choice(["/pricing", "/checkout"]), visitor, age))
    return views, sent


def goals_by_brute_force(conn, days: int, tz: str, filters: dict[str, str]) -> dict:
    """What a goal-filtered answer holds, straight from page_views and events (DESIGN.md, "Visits and
    events"). A goal (event, goal_path) narrows the answer to the ids that reached it in the window;
    a filter on a view's own values (path, country) to their matching views. With goals alone the
    answer is those ids' as unfiltered: their events count, and an id with events and no view is
    a visitor (and its events a visit) as unfiltered; with a view filter, an event has none of a
    view's values, so the ids count on the days they have a matching view, their events beside."""
    zone = zoneinfo.ZoneInfo(tz)
    now = conn.execute("SELECT now()").fetchone()[0]
    last_day = now.astimezone(zone).date()
    start = datetime.datetime.combine(last_day - datetime.timedelta(days=days - 1), datetime.time(), zone)
    end = datetime.datetime.combine(last_day + datetime.timedelta(days=1), datetime.time(), zone)
    utc_start, utc_end = (
        datetime.datetime.combine(t.astimezone(datetime.UTC).date(), datetime.time(), datetime.UTC)
        for t in (start, end)
    )
    utc_end += datetime.timedelta(days=1)
    views = conn.execute(
        "SELECT id, site, visitor, path, country, viewed_at FROM page_views"
        " WHERE viewed_at >= %s AND viewed_at < %s",
        (utc_start, utc_end),
    ).fetchall()
    sent = conn.execute(
        "SELECT id, site, visitor, name, props, path, occurred_at FROM events"
        " WHERE occurred_at >= %s AND occurred_at < %s",
        (utc_start, utc_end),
    ).fetchall()

    def inside(t):
        return start <= t < end

    def day(t):
        return t.astimezone(zone).date().isoformat()

    reached = None
    if "event" in filters:
        reached = {(s, v) for _, s, v, name, _, _, t in sent if name == filters["event"] and inside(t) and v}
    if "goal_path" in filters:
        viewed = {(s, v) for _, s, v, path, _, t in views if path == filters["goal_path"] and inside(t) and v}
        reached = viewed if reached is None else reached & viewed
    own = {dim: value for dim, value in filters.items() if dim in ("path", "country")}
    matching = [
        (view_id, s, v, path, country, t)
        for view_id, s, v, path, country, t in views
        if (s, v) in reached
        and all({"path": path, "country": country}[dim] == value for dim, value in own.items())
    ]
    goals_only = not own
    senders = {(s, v) for _, s, v, *_ in matching} | (reached if goals_only else set())
    theirs = [row for row in sent if (row[1], row[2]) in senders]
    present = {(day(t), s, v) for _, s, v, _, _, t in matching if inside(t)}
    if goals_only:
        present |= {(day(t), s, v) for _, s, v, *_, t in theirs if inside(t)}
    counted = {(s, v) for _, s, v in present}
    daily_views, panels = collections.Counter(), {"path": {}, "country": {}}
    for _, s, v, path, country, t in matching:
        if inside(t):
            daily_views[day(t)] += 1
            for dim, value in (("path", path), ("country", country)):
                if value is not None:
                    views_of, who = panels[dim].setdefault(value, [0, set()])
                    panels[dim][value] = [views_of + 1, who | {(day(t), s, v)}]
    daily_visitors = collections.Counter(d for d, _, _ in present)
    visitors = sum(daily_visitors.values())
    names, props = {}, {}
    for _, s, v, name, sent_props, _, t in theirs:
        if not inside(t) or (s, v) not in counted:
            continue
        who = {(day(t), s, v)} & present
        count, ids = names.get(name, (0, set()))
        names[name] = (count + 1, ids | who)
        if name == filters.get("event"):
            for key, value in sent_props.items():
                count, ids = props.get((key, str(value)), (0, set()))
                props[(key, str(value))] = (count + 1, ids | who)
    by_id_day = collections.defaultdict(list)
    for view_id, s, v, path, _, t in matching:
        if v is not None:
            by_id_day[(s, v, t.astimezone(datetime.UTC).date())].append((t, False, view_id, path))
    for event_id, s, v, _, _, path, t in theirs:
        by_id_day[(s, v, t.astimezone(datetime.UTC).date())].append((t, True, event_id, path))
    visits = collections.Counter()
    bounces, visit_views, duration_us, entries, exits = 0, 0, 0, collections.Counter(), collections.Counter()
    for seen in by_id_day.values():
        seen.sort()
        runs = [[seen[0]]]
        for item in seen[1:]:
            if item[0] - runs[-1][-1][0] > datetime.timedelta(minutes=30):
                runs.append([])
            runs[-1].append(item)
        for run in runs:
            seen_views = [item for item in run if not item[1]]
            if not inside(run[0][0]) or not (seen_views or goals_only):
                continue
            visits[day(run[0][0])] += 1
            bounces += len(seen_views) == 1 and len(run) == 1
            visit_views += len(seen_views)
            duration_us += (run[-1][0] - run[0][0]) // datetime.timedelta(microseconds=1)
            entries[(seen_views or run)[0][3]] += 1
            exits[(seen_views or run)[-1][3]] += 1
    total = sum(visits.values())

    def ranked(counts, key):
        order = sorted(counts, key=lambda name: (-counts[name][0], name))[:10]
        return [{key: name, "views": counts[name][0], "visitors": len(counts[name][1])} for name in order]

    def pages(counts):
        return [
            {"path": p, "visits": n} for p, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        ]

    return {
        "daily": {d: (daily_views[d], daily_visitors[d]) for d in {*daily_views, *daily_visitors}},
        "total_views": sum(daily_views.values()),
        "visitors": visitors,
        "top_paths": ranked(panels["path"], "path"),
        "top_countries": ranked(panels["country"], "country"),
        "top_events": [
            {
                "event": row["event"],
                "events": row["views"],
                "visitors": row["visitors"],
                "conversion_rate": round(min(row["visitors"] / visitors, 1), 4) if visitors else 0,
            }
            for row in ranked(names, "event")
        ],
        "event_props": sorted(
            (
                {"prop": key, "value": value, "events": n, "visitors": len(ids)}
                for (key, value), (n, ids) in props.items()
            ),
            key=lambda row: (-row["events"], row["prop"], row["value"]),
        ),
        "visits": total,
        "daily_visits": dict(visits),
        "bounce_rate": round(bounces / total, 4) if total else 0,
        "visit_duration_seconds": round(duration_us / total / 1e6, 1) if total else 0,
        "views_per_visit": round(visit_views / total, 2) if total else 0,
        "top_entry_pages": pages(entries)[:10],
        "top_exit_pages": pages(exits)[:10],
    }


def events_row(body: dict, name: str) -> tuple[int, int] | None:
    return next(
        ((row["events"], row["visitors"]) for row in body["top_events"] if row["event"] == name), None
    )


@pytest.mark.parametrize(("seed", "tz"), [(31, "UTC"), (32, "Asia/Kathmandu"), (33, "America/St_Johns")])
def test_a_goal_filter_counts_every_visitor_who_reached_it_exact_against_a_brute_force_count(
    client, conn, seed, tz, age_shift
):
    """`?event=Purchase` narrows every panel to the visitors who sent it: an id that sent it and no
    view (a server's Purchase) is one of them, as it is of the unfiltered Purchase row, so the
    filtered answer's Purchase row is the unfiltered one (it was short of those ids: the answer
    counted the ids of the matching views only, 1 visitor of the unfiltered 2)."""
    import random

    from tests.test_web import roll_up
    from tests.test_web_exact import on_one_day

    rng = random.Random(seed)
    views, sent = random_senders(rng, 300)
    half, sent_half = len(views) // 2, len(sent) // 2
    halves = ((views[:half], sent[:sent_half]), (views[half:], sent[sent_half:]))
    for index, (chosen_views, chosen_events) in enumerate(halves):
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO page_views (site, path, country, visitor, viewed_at)"
                " VALUES (%s, %s, %s, %s, now() - %s)",
                [(*row[:-1], ages.placed(row[-1])) for row in chosen_views],
            )
            cur.executemany(
                "INSERT INTO events (site, name, props, path, visitor, occurred_at)"
                " VALUES (%s, %s, %s, %s, %s, now() - %s)",
                [(*row[:-1], ages.placed(row[-1])) for row in chosen_events],
            )
        if index == 0:
            roll_up(conn)  # the first half rolled up, the second in the tail

    def check() -> None:
        for days in (1, 3, 7):
            unfiltered = client.get("/api/stats", {"days": str(days), "tz": tz}).json
            for filters in GOAL_CASES:
                body = client.get("/api/stats", {"days": str(days), "tz": tz, **filters}).json
                expected = goals_by_brute_force(conn, days, tz, filters)
                context = (filters, days)
                daily = {
                    day["day"]: (day["views"], day["visitors"])
                    for day in body["daily"]
                    if day["views"] or day["visitors"]
                }
                assert daily == expected["daily"], context
                panels = ("top_paths", "top_countries", "top_events", "event_props")
                for key in ("total_views", "visitors", *panels):
                    if key in body or key != "event_props":
                        assert body[key] == expected[key], (context, key)
                assert_visits_exact(body, expected, context)
                if set(filters) == {"event"}:  # the event's own row is the unfiltered one
                    own = events_row(body, filters["event"])
                    assert own == events_row(unfiltered, filters["event"]), context

    on_one_day(conn, tz, check)


def test_under_a_goal_alone_a_visitor_who_only_sent_events_just_now_is_a_current_visitor(client, conn):
    """Under `?event=Purchase` the visitors who bought are the answer's, views or not: one that sent
    events and no view in the 5 minutes is a current visitor there as unfiltered (it was not: the
    filter counted the ids of views). A view filter beside it counts the ids of matching views."""
    conn.execute(
        "INSERT INTO page_views (site, path, country, visitor, viewed_at) VALUES"
        " ('example.com', '/', 'US', 1, now()),"
        " ('example.com', '/thanks', 'US', 5, now() - interval '1 minute')"
    )
    conn.execute(
        "INSERT INTO events (site, name, path, visitor, occurred_at) VALUES"
        " ('example.com', 'Purchase', '/', 1, now()),"
        " ('example.com', 'Purchase', '/', 2, now() - interval '1 minute'),"  # a server's: no view
        " ('example.com', 'Purchase', '/', 3, now() - interval '10 minutes'),"
        " ('example.com', 'Download', '/', 3, now() - interval '1 minute'),"  # bought before, no view now
        " ('example.com', 'Download', '/', 4, now() - interval '1 minute'),"  # never bought
        " ('example.com', 'Purchase', '/', 5, now() - interval '2 minutes')"
    )
    current = {
        "": 5,
        "event=Purchase": 4,
        "event=Purchase&site=example.com": 4,
        "event=Purchase&site=other.example": 0,
        "event=Purchase&goal_path=/thanks": 1,
        "goal_path=/thanks": 1,
        "event=Purchase&country=US": 2,
        "event=Download": 2,
    }
    for query, expected in current.items():  # two days: minutes-old rows inside at any time
        body = client.get(f"/api/stats?days=2&{query}").json
        assert body["current_visitors"] == expected, query


@pytest.mark.parametrize("rolled_up", [True, False])
def test_events_dated_ahead_or_at_a_midnight_count_on_their_own_day(client, conn, rolled_up):
    """An event dated days ahead (a clock far off) is of no window that ends today: not in
    today's top events, visitors or visits; one at a local midnight is of the day it starts."""
    from tests.test_web import roll_up

    conn.execute(
        "INSERT INTO events (site, name, path, visitor, occurred_at) VALUES"
        " ('example.com', 'Ahead', '/', 1, now() + interval '2 days'),"
        " ('example.com', 'Midnight', '/', 2, date_trunc('day', now(), 'Asia/Kathmandu')),"
        " ('example.com', 'Before', '/', 3,"
        "  date_trunc('day', now(), 'Asia/Kathmandu') - interval '1 microsecond')"
    )
    if rolled_up:
        roll_up(conn)
    for tz, days in (("Asia/Kathmandu", "1"), ("UTC", "1"), ("Pacific/Kiritimati", "7")):
        body = client.get("/api/stats", {"days": days, "tz": tz}).json
        expected = {
            name
            for name, day in conn.execute(
                "SELECT name, (occurred_at AT TIME ZONE %s)::date FROM events", (tz,)
            ).fetchall()
            if body["first_day"] <= day.isoformat() <= body["last_day"]
        }
        assert {row["event"] for row in body["top_events"]} == expected, tz
        assert body["visitors"] == len(expected) and body["visits"] == len(expected), tz
