"""The settled days (migrations/0046): the rollup says which UTC days' rows of
page_view_day_values it left alone, every change to those moves `settled_by`, and the web reads
a window's values over them once while they stay settled (tally/web/rolled_up.py), its answers
exact throughout."""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable

import psycopg
import pytest

from tally.db import QUERIES
from tests.test_web import TOKEN, make_client, roll_up
from tests.test_web_exact import check_every_window, executed, insert_raw, on_one_day, random_visits

DAY = datetime.timedelta(days=1)


@pytest.fixture
def client(database_url, pool):
    return make_client(database_url, pool, owner=True, ADMIN_TOKEN=TOKEN, PUBLIC_DASHBOARD="false")


def settled(conn: psycopg.Connection) -> tuple:
    return conn.execute("SELECT settled_before, settled_by FROM page_view_rollup_state").fetchone()


def utc_today(conn: psycopg.Connection) -> datetime.date:
    return conn.execute("SELECT (now() AT TIME ZONE 'UTC')::date").fetchone()[0]


def view(age: datetime.timedelta, visitor: int | None, path: str = "/") -> tuple:
    """A view as tests/test_web_exact.py's insert_raw takes it."""
    return ("example.com", path, None, None, visitor, None, None, "US", "Firefox", "Linux", "desktop", age)


def test_only_a_write_to_the_days_before_yesterday_moves_settled_by(conn):
    insert_raw(conn, [view(5 * DAY, 1), view(datetime.timedelta(minutes=5), 2)])
    roll_up(conn)
    today = utc_today(conn)
    before, by = settled(conn)
    assert before == today - DAY and by is not None
    # Today's views, of an id seen today: its moves stay in today's and yesterday's rows.
    insert_raw(conn, [view(datetime.timedelta(minutes=2), 2, "/b"), view(datetime.timedelta(minutes=1), 3)])
    roll_up(conn)
    assert settled(conn) == (before, by)
    # A view of five days ago, late: its day's rows change.
    insert_raw(conn, [view(5 * DAY, 4, "/late")])
    roll_up(conn)
    assert settled(conn)[0] == before and settled(conn)[1] != by
    by = settled(conn)[1]
    # Deleting today's rows leaves the settled days as they were; deleting a settled day's does not.
    conn.execute("DELETE FROM page_view_day_values WHERE day >= %s", (before,))
    assert settled(conn) == (before, by)
    conn.execute("DELETE FROM page_view_day_values WHERE day = %s", (today - 5 * DAY,))
    assert settled(conn)[1] != by


def test_the_rollups_retention_and_a_rebuild_move_settled_by(conn):
    insert_raw(conn, [view(10 * DAY, 1), view(datetime.timedelta(minutes=5), 2)])
    roll_up(conn)
    today = utc_today(conn)
    _, by = settled(conn)
    conn.execute(QUERIES["delete_old_rollups"], {"cutoff_day": today - 20 * DAY})  # nothing that old
    assert settled(conn)[1] == by
    conn.execute(QUERIES["delete_old_rollups"], {"cutoff_day": today - 9 * DAY})
    assert settled(conn)[1] != by
    insert_raw(conn, [view(8 * DAY, 3)])
    roll_up(conn)
    _, by = settled(conn)
    with conn.transaction():  # as the rebuild_rollups job does (jobs/rebuild.py)
        conn.execute("SELECT * FROM tally_unfold_days(%s, %s)", (today - 2 * DAY, 30))
        assert settled(conn)[1] == by  # only today's rows were there to unfold
        conn.execute("SELECT * FROM tally_unfold_days(%s, %s)", (today - 8 * DAY, 30))
        assert settled(conn)[1] != by


def load_and_count(conn, monkeypatch, rng: random.Random) -> tuple[list[list[tuple]], Callable[[str], int]]:
    """1,200 random views over 12 days, rolled up, and a count of the window reads of each kind
    from now on (settled days, other days, whole), each dimension's first 4 values read."""
    visits = random_visits(rng, 1200, blogs=12)
    insert_raw(conn, [v for views in visits for v in views])
    roll_up(conn)
    # Few values read with each window (tally/web/values.py): the settled days' ranking is
    # then a bound, and the other days' values are looked up in it.
    monkeypatch.setattr("tally.web.values.RANKED_VALUES", 3)
    reads = executed(monkeypatch, QUERIES["stats_rolled_up_dims"], QUERIES["stats_rolled_up_wide_dims"])
    kinds = {
        "counted": lambda params: "most" in params,  # the other days' rows, before a read apart
        # A read of a window's most viewed values, not every value (a fallback, or the other days).
        "settled": lambda params: params.get("ranked") is not None and params["before_day"] is not None,
        "other": lambda params: "ranked" in params and params["from_day"] is not None,
        "other ranked": lambda params: params.get("ranked") is not None and params["from_day"] is not None,
        "whole": lambda params: (
            params.get("ranked") is not None and not (params["before_day"] or params["from_day"])
        ),
    }
    # A whole read of a window with settled days: one that might have been read apart (not one
    # dimension ranked in one read, where the two parts' rankings added up could not say).
    kinds["whole, settled days among them"] = lambda params: (
        kinds["whole"](params)
        and len(params["dims"]) > 1
        and params["start"].astimezone(datetime.UTC).date() < settled(conn)[0]
    )
    kinds["a dimension ranked in one read"] = lambda params: (
        kinds["whole"](params) and len(params["dims"]) == 1
    )
    return visits, lambda kind: sum(1 for params in reads if kinds[kind](params))


def views_of_today(conn, rng: random.Random, visits: list[list[tuple]]) -> list[tuple]:
    """Views of today: of new ids, and of ids with views in the last day."""
    since_midnight = conn.execute("SELECT now() - date_trunc('day', now(), 'UTC')").fetchone()[0]
    room = min(600.0, since_midnight.total_seconds())
    more = [v for views in random_visits(rng, 300, blogs=12) for v in views]
    more += [v for views in visits if views[0][-1] < DAY for v in views]
    return [(*v[:-1], datetime.timedelta(seconds=rng.uniform(0, room))) for v in more]


def test_a_windows_settled_days_are_read_once_while_no_rollup_writes_them(client, conn, monkeypatch):
    rng = random.Random(46)
    visits, reads = load_and_count(conn, monkeypatch, rng)
    on_one_day(conn, "UTC", lambda: check_every_window(client, conn, "UTC"))
    first = reads("settled")
    assert first and reads("other")
    # Views of today rolled up: the settled days' values are not read again, the others' are.
    insert_raw(conn, views_of_today(conn, rng, visits))
    others = reads("other")
    roll_up(conn)
    on_one_day(conn, "UTC", lambda: check_every_window(client, conn, "UTC"))
    assert reads("settled") == first and reads("other") > others
    # A late view of a settled day: read again, and counted.
    insert_raw(conn, [(*visits[0][0][:-1], 6 * DAY + datetime.timedelta(minutes=3))])
    roll_up(conn)
    on_one_day(conn, "UTC", lambda: check_every_window(client, conn, "UTC"))
    assert reads("settled") > first


def test_a_window_whose_other_days_hold_many_values_reads_their_most_viewed_too(client, conn, monkeypatch):
    # Other days with more rows a dimension than are read whole (a site whose paths carry ids):
    # ranked as the settled days are, the two rankings added up, exact; never read whole.
    monkeypatch.setattr("tally.web.values.MERGED_VALUES", 2)
    rng = random.Random(48)
    visits, reads = load_and_count(conn, monkeypatch, rng)
    on_one_day(conn, "UTC", lambda: check_every_window(client, conn, "UTC"))
    assert reads("other ranked") and not reads("whole, settled days among them")
    insert_raw(conn, views_of_today(conn, rng, visits))
    settled, ranked = reads("settled"), reads("other ranked")
    roll_up(conn)
    on_one_day(conn, "UTC", lambda: check_every_window(client, conn, "UTC"))
    assert reads("settled") == settled and reads("other ranked") > ranked
    assert not reads("whole, settled days among them") and reads("a dimension ranked in one read")


def test_a_window_whose_days_do_not_add_up_cheaply_is_read_whole_until_they_change(client, conn, monkeypatch):
    # More values to look up in the settled days than the bound.
    monkeypatch.setattr("tally.web.values.MERGED_LOOKUPS", 0)
    rng = random.Random(47)
    visits, reads = load_and_count(conn, monkeypatch, rng)
    on_one_day(conn, "UTC", lambda: check_every_window(client, conn, "UTC"))
    apart, whole = reads("counted"), reads("whole")  # each window read apart counted its other days once
    assert apart and whole
    insert_raw(conn, views_of_today(conn, rng, visits))
    settled = reads("settled")
    roll_up(conn)
    on_one_day(conn, "UTC", lambda: check_every_window(client, conn, "UTC"))
    # A window read whole at these settled days does not try its parts again.
    assert reads("settled") == settled and reads("whole") > whole
    assert reads("counted") - apart < apart
