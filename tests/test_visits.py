"""Visits (issue 18, part 1; migrations/0017): views of known visitors at known times give the
visits, bounce rate, duration, views per visit, entry and exit pages worked out by hand,
rolled up or in the tail, filtered, compared and on the dashboard. (tests/test_web_exact.py and
tests/test_visitor_days.py check them against a brute-force count on random data.)"""

from __future__ import annotations

import re

import pytest

from tests.test_web import roll_up
from tests.test_web_exact import sites_client

# (visitor, minutes after 10:00 UTC two days ago, path). Visitor 1: two views 10 minutes apart,
# then one 40 minutes later (a new visit); 2: one view; 3: one view before midnight and one after
# (two UTC days: two visits); 4: three views 30 minutes apart each (exactly 30: one visit) and a
# fourth at the same instant as the third (stored after it: the exit).
VIEWS = [
    (1, 0, "/a"),
    (1, 10, "/b"),
    (1, 50, "/c"),
    (2, 60, "/a"),
    (3, 13 * 60 + 50, "/x"),
    (3, 14 * 60 + 5, "/y"),
    (4, 120, "/a"),
    (4, 150, "/b"),
    (4, 180, "/c"),
    (4, 180, "/d"),
]
EXPECTED = {
    "visits": 6,
    "bounce_rate": round(4 / 6, 4),
    "visit_duration_seconds": round((600 + 3600) / 6, 1),
    "views_per_visit": round(10 / 6, 2),
    "top_entry_pages": [
        {"path": "/a", "visits": 3},
        {"path": "/c", "visits": 1},
        {"path": "/x", "visits": 1},
        {"path": "/y", "visits": 1},
    ],
    "top_exit_pages": [
        {"path": "/a", "visits": 1},
        {"path": "/b", "visits": 1},
        {"path": "/c", "visits": 1},
        {"path": "/d", "visits": 1},
        {"path": "/x", "visits": 1},
        {"path": "/y", "visits": 1},
    ],
}


@pytest.fixture
def client(database_url, pool):
    return sites_client(database_url, pool)


def insert(conn, views) -> None:
    for visitor, minutes, path in views:
        conn.execute(
            "INSERT INTO page_views (site, path, visitor, viewed_at) VALUES ('example.com', %s, %s,"
            " date_trunc('day', now(), 'UTC') - interval '2 days' + interval '10 hours'"
            " + %s * interval '1 minute')",
            (path, visitor, minutes),
        )


def visit_figures(body: dict) -> dict:
    return {key: body[key] for key in EXPECTED}


@pytest.mark.parametrize("cut", [len(VIEWS), 7, 1, 0])
def test_visits_of_known_views_are_worked_out_by_hand(client, conn, cut):
    """The views before `cut` rolled up, the others in the tail: visits the tail grows or splits."""
    insert(conn, VIEWS[:cut])
    roll_up(conn)
    insert(conn, VIEWS[cut:])
    body = client.get("/api/stats", {"days": "7", "tz": "UTC", "site": "example.com"}).json
    assert visit_figures(body) == EXPECTED
    per_day = [day["visits"] for day in body["daily"]]
    assert per_day[-3:] == [5, 1, 0]  # visitor 3's second visit starts the next day
    roll_up(conn)
    assert visit_figures(client.get("/api/stats", {"days": "7", "tz": "UTC"}).json) == EXPECTED


@pytest.mark.parametrize("cut", [7, 0])
def test_a_view_after_its_days_visits_left_the_rollups_keeps_them_exact(client, conn, cut):
    """A view of an (id, UTC day) whose visits the rollups stopped keeping (3 days after they
    last changed: an import run again, a backfill) takes back the visits its day counted, formed
    from the views they folded; they were counted twice (7 visits where there were 6)."""
    insert(conn, VIEWS[:cut] or VIEWS)
    roll_up(conn)
    conn.execute("UPDATE page_view_visit_days SET folded_on = folded_on - 5")
    roll_up(conn)  # deletes them: nothing changed for more than 3 days
    assert conn.execute("SELECT count(*) FROM page_view_visit_days").fetchone()[0] == 0
    if cut:
        insert(conn, VIEWS[cut:])  # visitor 4's last two views: the tail, then folded
    else:
        insert(conn, [(1, 5, "/b2")])  # inside visitor 1's first visit
    expected = dict(EXPECTED)
    if not cut:
        expected.update(views_per_visit=round(11 / 6, 2))
    for _ in range(2):  # the tail, then rolled up
        body = client.get("/api/stats", {"days": "7", "tz": "UTC", "site": "example.com"}).json
        assert {key: body[key] for key in expected} == expected
        roll_up(conn)


def test_visits_under_a_filter_are_made_of_the_matching_views(client, conn):
    insert(conn, VIEWS)
    roll_up(conn)
    body = client.get("/api/stats", {"days": "7", "path": "/a"}).json
    assert body["visits"] == 3 and body["bounce_rate"] == 1 and body["visit_duration_seconds"] == 0
    assert body["top_entry_pages"] == [{"path": "/a", "visits": 3}]


@pytest.mark.parametrize("filters", [{}, {"path": "/p"}])
def test_the_change_of_a_figure_per_visit_is_worked_out_from_its_unrounded_value(client, conn, filters):
    """Yesterday 1 visit of 3 views over 20 s; today 3 visits of 5 views, 110 s in all: views
    per visit 3 -> 1.667 is -44.4% (the rounded 1.67 gave -44.3%), the duration 20 -> 36.667 s
    is +83.3% (the rounded 36.7 gave +83.5%)."""
    today = "date_trunc('day', now(), 'UTC') + interval '1 minute'"
    yesterday = f"{today} - interval '1 day'"
    for visitor, when in (
        (1, yesterday),
        (1, f"{yesterday} + interval '10 seconds'"),
        (1, f"{yesterday} + interval '20 seconds'"),
        (2, today),
        (2, f"{today} + interval '100 seconds'"),
        (3, today),
        (3, f"{today} + interval '10 seconds'"),
        (4, today),
    ):
        conn.execute(
            "INSERT INTO page_views (site, path, visitor, viewed_at)"
            f" VALUES ('example.com', '/p', %s, {when})",
            (visitor,),
        )
    body = client.get("/api/stats", {"days": "1", "tz": "UTC", "compare": "previous", **filters}).json
    assert (body["visits"], body["views_per_visit"], body["visit_duration_seconds"]) == (3, 1.67, 36.7)
    change = body["previous"]["change_percent"]
    assert (change["views_per_visit"], change["visit_duration_seconds"]) == (-44.4, 83.3)
    assert "visit_figures_unrounded" not in body and "visit_figures_unrounded" not in body["previous"]


def test_the_period_before_and_the_dashboard_show_visits(client, conn):
    insert(conn, VIEWS)
    roll_up(conn)
    body = client.get("/api/stats", {"days": "1", "compare": "previous"}).json
    assert body["visits"] == 0 and body["previous"]["visits"] == 1  # visitor 3's /y, yesterday
    assert body["previous"]["change_percent"]["visits"] == -100.0
    # no visit now: no bounce rate, duration or views per visit to have fallen by 100%
    assert body["previous"]["bounce_rate"] == 1 and body["bounce_rate"] == 0
    for key in ("bounce_rate", "visit_duration_seconds", "views_per_visit"):
        assert body["previous"]["change_percent"][key] is None, key
    body = client.get("/api/stats", {"days": "3", "compare": "previous"}).json
    assert body["previous"]["visits"] == 0 and body["previous"]["change_percent"]["visits"] is None
    page = client.get("/", {"days": "7"}).text
    assert 'id="visits">6<' in page and 'id="bounce-rate">67%<' in page
    assert 'id="visit-duration-seconds">700 s<' in page
    entry = page[page.index('<table id="top-entry-pages"') :]
    assert re.search(
        r'<tr class="" data-value="/a"><td class="value"><a [^>]*>/a</a></td><td class="num visits">3</td>',
        entry,
    )
