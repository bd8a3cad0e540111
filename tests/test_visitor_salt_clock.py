"""A visitor id and the day its view is dated on follow one clock, the database's.

An id from /api/collect is the HMAC of its UTC day's salt (tally/web/visitors.py), and a view
is dated by the database (`now()` at its INSERT). The web took the salt's day from its own
clock: a web a minute off the database's made the ids of views around midnight with the salt
of one day while they were dated on the other (a visitor split in two, or an id across two
days). Here the web's clocks are set off the database's, as a test cannot move PostgreSQL's,
and every stored view and event must carry the HMAC of the salt of its own UTC day.
"""

from __future__ import annotations

import datetime
import json
import time
import types

import psycopg
import pytest

from tally.web import visitors
from tally.web.collect import Event, insert_events
from tally.web.view_writer import View, ViewWriter
from tests.test_web_collect import ADDRESS, BROWSER, beacon, sites_client

UTC = datetime.UTC


@pytest.fixture
def client(database_url, pool):
    return sites_client(database_url, pool)


def database_now(conn: psycopg.Connection) -> datetime.datetime:
    return conn.execute("SELECT now()").fetchone()[0]


def next_midnight(at: datetime.datetime) -> datetime.datetime:
    return datetime.datetime.combine(
        at.astimezone(UTC).date() + datetime.timedelta(days=1), datetime.time(), UTC
    )


def event(client, name: str) -> None:
    headers = {"User-Agent": BROWSER, "X-Forwarded-For": ADDRESS, "Origin": "https://example.com"}
    body = json.dumps({"url": "https://example.com/e", "referrer": "", "event": name})
    client.post("/api/collect", body, headers=headers, content_type="text/plain;charset=UTF-8", status=201)


def ids_and_their_days(conn: psycopg.Connection) -> list[tuple[str, int, int | None]]:
    """Each stored view's and event's id beside the HMAC of the salt of its own UTC day (None
    when that day has no salt: the id was made with another day's)."""
    salts = {day: bytes(salt) for day, salt in conn.execute("SELECT day, salt FROM visitor_salts")}
    found = conn.execute(
        "SELECT path, site, visitor, viewed_at FROM page_views"
        " UNION ALL SELECT name, site, visitor, occurred_at FROM events ORDER BY 4"
    ).fetchall()
    assert found and all(visitor is not None for _what, _site, visitor, _at in found)
    return [
        (
            what,
            visitor,
            visitors.hashed(salt, site, ADDRESS, BROWSER)
            if (salt := salts.get(at.astimezone(UTC).date())) is not None
            else None,
        )
        for what, site, visitor, at in found
    ]


def assert_each_id_is_of_its_day(conn: psycopg.Connection) -> None:
    for what, stored, of_its_day in ids_and_their_days(conn):
        assert stored == of_its_day, f"{what}: its id is not of the salt of the day it is dated on"


class WebClock(datetime.datetime):
    """The web's system time, `offset` off the database's."""

    offset = datetime.timedelta()

    @classmethod
    def now(cls, tz: datetime.tzinfo | None = None) -> datetime.datetime:  # type: ignore[override]
        return datetime.datetime.now(tz) + cls.offset


@pytest.mark.parametrize("web_at", [-0.01, 0.01, 30.0, -86_400.0 - 0.01])
def test_a_webs_clock_off_the_databases_makes_ids_of_the_day_views_are_dated_on(
    client, conn, monkeypatch, web_at
):
    """The web's clock reads `web_at` seconds from the UTC midnight after the database's now:
    10 ms before it, 10 ms after it (a web ahead by the time left to midnight: the day after's
    salt, for views dated today), 30 s after, and 10 ms before the midnight before (a web behind
    by a day)."""
    now = database_now(conn)
    clock = type(
        "ShiftedClock", (WebClock,), {"offset": next_midnight(now) - now + datetime.timedelta(seconds=web_at)}
    )
    monkeypatch.setattr(visitors, "datetime", types.SimpleNamespace(**{**vars(datetime), "datetime": clock}))
    beacon(client, "https://example.com/a", status=201)
    event(client, "Signup")
    beacon(client, "https://example.com/b", status=201)
    assert_each_id_is_of_its_day(conn)
    assert len({stored for _what, stored, _of_day in ids_and_their_days(conn)}) == 1  # one visitor


def test_a_count_that_passes_midnight_before_the_database_reads_its_clock_again(client, conn, monkeypatch):
    """The web counts on from its reading of the database's clock with its monotonic clock; one
    that runs fast (here: jumps) brings the estimate to midnight before the database's clock
    gets there. A second before it the web keeps the day's salt; 5 ms after it the web reads
    the database's clock again, which is still on the same day: that day's salt, not the
    next's; and again RELEARN_SECONDS later."""
    jump = [0.0]
    monotonic = types.SimpleNamespace(monotonic=lambda: time.monotonic() + jump[0])
    monkeypatch.setattr(visitors, "time", monotonic, raising=False)
    readings: list[str] = []
    learn = visitors.VisitorIds._learn
    monkeypatch.setattr(visitors.VisitorIds, "_learn", lambda self: readings.append("read") or learn(self))
    beacon(client, "https://example.com/learn", status=201)  # reads the database's clock
    now = database_now(conn)
    to_midnight = (next_midnight(now) - now).total_seconds()
    for seconds in (to_midnight - 1, to_midnight + 0.005, to_midnight + 0.005 + visitors.RELEARN_SECONDS + 1):
        jump[0] = seconds
        beacon(client, f"https://example.com/{seconds}", status=201)
        event(client, f"at {seconds}")
    assert_each_id_is_of_its_day(conn)
    assert len(readings) == 3  # the first beacon, the count past midnight, RELEARN_SECONDS later
    days = conn.execute("SELECT DISTINCT (viewed_at AT TIME ZONE 'UTC')::date FROM page_views").fetchall()
    assert days == [(now.astimezone(UTC).date(),)]
    assert conn.execute("SELECT count(*) FROM visitor_salts").fetchone()[0] == 1  # none for the next day


def test_a_view_whose_id_is_of_another_day_is_dated_on_that_day(pool, conn):
    """What makes an id and its day agree always: the id made 5 ms before midnight by the web's
    estimate, its view inserted after (a group commit's wait, the estimate's error), is dated on
    its salt's day, at the nearest instant: the last microsecond of that day, or the first of
    the next. Without a salt's day (server-side senders) a view is dated now()."""
    now = database_now(conn)
    today = now.astimezone(UTC).date()
    yesterday, tomorrow = today - datetime.timedelta(days=1), today + datetime.timedelta(days=1)
    ViewWriter(pool).write(
        [
            View("/yesterday", None, "example.com", 1, salt_day=yesterday.isoformat()),
            View("/today", None, "example.com", 2, salt_day=today.isoformat()),
            View("/tomorrow", None, "example.com", 3, salt_day=tomorrow.isoformat()),
            View("/server"),
        ]
    )
    with pool.connection() as connection:
        insert_events(
            connection,
            [
                Event("example.com", "yesterday", {}, "/", 1, yesterday.isoformat()),
                Event("example.com", "tomorrow", {}, "/", 3, tomorrow.isoformat()),
                Event("example.com", "now", {}, "/", None),
            ],
        )
    after = database_now(conn)
    dated = dict(
        conn.execute("SELECT path, viewed_at FROM page_views UNION ALL SELECT name, occurred_at FROM events")
    )
    last_of_yesterday = datetime.datetime.combine(today, datetime.time(), UTC) - datetime.timedelta(
        microseconds=1
    )
    first_of_tomorrow = datetime.datetime.combine(tomorrow, datetime.time(), UTC)
    assert dated["/yesterday"] == dated["yesterday"] == last_of_yesterday
    assert dated["/tomorrow"] == dated["tomorrow"] == first_of_tomorrow
    assert all(now <= dated[what] <= after for what in ("/today", "/server", "now"))
