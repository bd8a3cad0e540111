"""Filtered answers carried forward (tally/web/carried.py): a kept answer brought up to date by
the ids that changed gives what a full count gives, whatever arrived, and is not used once raw
rows went or changed, or by a request that sees less than the kept answer saw."""

from __future__ import annotations

import datetime
import logging
import random
from collections.abc import Callable

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tally.db import QUERIES
from tally.web import carried, filtered
from tally.web.stats import StatsReader
from tally.web.windows import Window
from tests.conftest import record_carried, request_bounds
from tests.test_web import roll_up
from tests.test_web_exact import FILTER_CASES, arrivals, insert_raw, random_visits

GOAL_CASES = [
    {"event": "Signup"},
    {"goal_path": "/p1"},
    {"event": "Signup", "country": "US"},
    {"event": "Signup", "goal_path": "/p2"},
]


@pytest.fixture
def kept_uses(monkeypatch) -> list[bool]:
    """Each time a kept answer was found: whether it was carried forward (False: counted afresh)."""
    return record_carried(monkeypatch, carried.CarriedAnswers, "_carried")


@pytest.fixture
def executed(monkeypatch) -> list[tuple[str, dict | None]]:
    """Every statement run from here on, with its parameters."""
    statements: list[tuple[str, dict | None]] = []
    original = psycopg.Cursor.execute

    def execute(self, query, params=None, *args, **kwargs):
        statements.append((query, params))
        return original(self, query, params, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    return statements


def chunks_cancelled(monkeypatch, cancel: Callable[[int, int], bool]) -> list[tuple[int, int]]:
    """Every chunk of a full count from here on, as (chunks, chunk); those `cancel` names pass
    the statement timeout (the SET LOCAL is rolled back with the savepoint the chunk runs in)."""
    tried: list[tuple[int, int]] = []
    original = psycopg.Cursor.execute

    def execute(self, query, params=None, *args, **kwargs):
        if query == QUERIES["filtered_answer"] and params["of_visitors"] is None:
            tried.append((params["chunks"] or 1, params["chunk"]))
            if cancel(*tried[-1]):
                original(self, "SET LOCAL statement_timeout = '1ms'")
                original(self, "SELECT pg_sleep(0.01)")
        return original(self, query, params, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    return tried


def us_view(visitor: int | None, age: datetime.timedelta, path: str = "/a") -> tuple:
    """A view as insert_raw takes it: from the US, on Chrome, Linux and a phone, `age` ago."""
    return ("example.com", path, None, None, visitor, None, None, "US", "Chrome", "Linux", "phone", age)


def answers(reader: StatsReader, cases: list[dict], tz: str) -> list[dict]:
    found = []
    for filters in cases:
        for days, site, compare in ((1, None, False), (5, "example.com", True), (12, None, False)):
            answer = reader.stats_for_window(days, site=site, tz=tz, filters=filters, compare=compare)
            answer.pop("generated_at")
            answer.get("previous", {}).pop("generated_at", None)
            found.append(answer)
    return found


def send_events(conn: psycopg.Connection, rng: random.Random, count: int) -> None:
    """Events of ids that have views (a Signup that makes an id a goal's visitor after its
    views were counted), of ids with none, and dated on other days than their sender's views."""
    known = [
        row
        for row in conn.execute("SELECT site, visitor, viewed_at FROM page_views WHERE visitor IS NOT NULL")
    ]
    rows = []
    for _ in range(count):
        site, visitor, at = rng.choice(known)
        if rng.random() < 0.2:
            visitor = rng.getrandbits(62)
        at += datetime.timedelta(minutes=rng.choice([-50, -5, 3, 40, 60 * 20]))
        rows.append(
            (site, rng.choice(["Signup", "Signup", "Download"]), f"/p{rng.randrange(3)}", visitor, at)
        )
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO events (site, name, path, visitor, props, occurred_at)"
            ' VALUES (%s, %s, %s, %s, \'{"plan": "pro"}\', least(%s, now()))',
            rows,
        )


def added_one_key_at_a_time(into: dict, part: dict, sign: int) -> dict:
    """What `carried.add_counts` does, the plain way: every key's counts added as numbers."""
    out = dict(into)
    for key, counts in part.items():
        if isinstance(counts, int):
            total: object = out.get(key, 0) + sign * counts
            zero = total == 0
        else:
            had = out.get(key) or (0,) * len(counts)
            total = tuple(a + sign * b for a, b in zip(had, counts, strict=True))
            zero = not any(total)
        if zero:
            out.pop(key, None)
        else:
            out[key] = total
    return out


_KEYS = st.sampled_from("abcdef")
_NUMBERS = st.integers(-3, 3)


@given(
    st.one_of(
        st.tuples(st.dictionaries(_KEYS, _NUMBERS), st.dictionaries(_KEYS, _NUMBERS)),
        st.tuples(
            st.dictionaries(_KEYS, st.tuples(_NUMBERS, _NUMBERS)),
            st.dictionaries(_KEYS, st.tuples(_NUMBERS, _NUMBERS)),
        ),
    ),
    st.sampled_from([1, -1]),
)
def test_counts_added_key_by_key_drop_what_comes_to_nothing(dicts, sign):
    """A part's keys that the counts lack (most of a chunk's values) are taken as they are, times
    the sign, unless they are all zero; the others added up, dropped at zero."""
    into, part = dicts
    into = {key: n for key, n in into.items() if (n if isinstance(n, int) else any(n))}  # as kept
    added = dict(into)
    carried.add_counts(added, part, sign)
    assert added == added_one_key_at_a_time(into, part, sign)


@pytest.mark.parametrize(("seed", "tz"), [(31, "UTC"), (32, "Asia/Kathmandu"), (33, "America/St_Johns")])
def test_a_kept_answer_carried_forward_is_the_full_count_whatever_arrives(pool, conn, kept_uses, seed, tz):
    rng = random.Random(seed)
    batches = arrivals(rng, random_visits(rng, 900), chunks=4)
    reader = StatsReader(pool, retention_days=30)  # keeps its answers from one batch to the next
    cases = [*FILTER_CASES, *GOAL_CASES]
    reader._carried = carried.CarriedAnswers(entries=len(cases) * 4)  # every window of every case
    insert_raw(conn, batches[0])
    answers(reader, cases, tz)
    for number, batch in enumerate(batches[1:]):
        insert_raw(conn, batch)
        insert_raw(conn, [(*view[:4], None, *view[5:]) for view in batch[:5]])  # views without an id
        send_events(conn, rng, 15)
        if number % 2:
            roll_up(conn)
        kept_uses.clear()
        day = conn.execute("SELECT (now() AT TIME ZONE %s)::date", (tz,)).fetchone()[0]
        found = answers(reader, cases, tz)
        counted = answers(StatsReader(pool, retention_days=30), cases, tz)  # nothing kept: counted whole
        if conn.execute("SELECT (now() AT TIME ZONE %s)::date", (tz,)).fetchone()[0] != day:
            continue  # the zone's day turned between the two: windows of different days
        for case, (kept, whole) in enumerate(zip(found, counted, strict=True)):
            assert kept == whole, (number, cases[case // 3])
        assert kept_uses and all(kept_uses), "every answer was carried forward, none counted again"


@pytest.mark.parametrize("tz", ["UTC", "Asia/Kathmandu"])
def test_a_slice_counted_in_chunks_of_ids_is_the_whole_count(pool, conn, monkeypatch, executed, tz):
    """A slice the rollups put past CHUNK_VIEWS is counted in chunks of ids that add up to it;
    here every filter is counted in 2 to 40 chunks, against one count of each."""
    rng = random.Random(41)
    batches = arrivals(rng, random_visits(rng, 700), chunks=1)
    insert_raw(conn, batches[0])
    roll_up(conn)
    insert_raw(conn, batches[1])
    insert_raw(conn, [(*view[:4], None, *view[5:]) for view in batches[1][:5]])  # views without an id
    send_events(conn, rng, 20)
    cases = [*FILTER_CASES, *GOAL_CASES]
    whole = answers(StatsReader(pool, retention_days=30), cases, tz)
    executed.clear()
    monkeypatch.setattr(filtered, "CHUNK_VIEWS", 10)
    chunked = answers(StatsReader(pool, retention_days=30), cases, tz)
    assert chunked == whole
    chunks = [params["chunks"] or 1 for query, params in executed if query == QUERIES["filtered_answer"]]
    assert max(chunks) >= 10


def test_nothing_recorded_since_reads_no_answer_again(pool, conn, executed):
    view = us_view(7, datetime.timedelta(hours=1))
    insert_raw(conn, [view])
    reader = StatsReader(pool, retention_days=30)
    first = reader.stats_for_window(3, filters={"country": "US"})
    executed.clear()
    again = reader.stats_for_window(3, filters={"country": "US"})
    statements = [query for query, _ in executed]
    assert QUERIES["filtered_answer"] not in statements
    assert QUERIES["filtered_changed_ids"] in statements
    first.pop("generated_at"), again.pop("generated_at")
    assert again == first


def test_removed_or_changed_rows_make_a_kept_answer_count_again(pool, conn, kept_uses):
    """A DELETE on page_views or events, a rebuild's UPDATE, retention's delete from the default
    partition and its detach of a day all count as changes (migrations/0033): the next answer
    counts everything again, and is the full count."""
    views = [us_view(n % 5, datetime.timedelta(days=n % 3, minutes=n), path=f"/p{n % 3}") for n in range(30)]
    insert_raw(conn, views)
    conn.execute(
        "INSERT INTO events (site, name, path, visitor, occurred_at)"
        " VALUES ('example.com', 'Signup', '/p0', 1, now())"
    )
    reader = StatsReader(pool, retention_days=30)

    def same_as_counted_whole() -> None:
        for filters in ({"country": "US"}, {"event": "Signup"}):
            kept = reader.stats_for_window(5, filters=filters)
            whole = StatsReader(pool, retention_days=30).stats_for_window(5, filters=filters)
            kept.pop("generated_at"), whole.pop("generated_at")
            assert kept == whole, filters

    same_as_counted_whole()
    changes = [
        "DELETE FROM page_views WHERE path = '/p1'",
        "DELETE FROM events WHERE name = 'Signup'",
        "UPDATE page_views SET recorded_xid = pg_current_xact_id() WHERE path = '/p2'",
    ]
    for change in changes:
        kept_uses.clear()
        conn.execute(change)
        same_as_counted_whole()
        assert kept_uses == [], change  # the kept answers were not used
    # Retention: a view in the default partition (no day of its own: other tests' day partitions
    # persist, so today's recent days may have theirs), then a day detached.
    insert_raw(conn, [us_view(9, datetime.timedelta(days=3000))])
    roll_up(conn)
    state = conn.execute("SELECT watermark, in_progress FROM page_view_rollup_state").fetchone()
    before = conn.execute("SELECT changes FROM tally_raw_changes").fetchone()[0]
    conn.execute(
        QUERIES["delete_expired_page_views_batch"],
        {
            "cutoff": datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1, hours=12),
            "watermark": state[0],
            "in_progress": state[1],
            "batch_size": 1000,
        },
    )
    assert conn.execute("SELECT changes FROM tally_raw_changes").fetchone()[0] == before + 1
    kept_uses.clear()
    same_as_counted_whole()
    assert kept_uses == []
    yesterday = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)).date()
    name = conn.execute("SELECT tally_ensure_day_partition(%s)", (yesterday,)).fetchone()[0]
    same_as_counted_whole()  # moving views into their day changes nothing: kept answers stay
    roll_up(conn)
    state = conn.execute("SELECT watermark, in_progress FROM page_view_rollup_state").fetchone()
    kept_uses.clear()
    detached = conn.execute(
        QUERIES["detach_rolled_up_partitions"],
        {"names": [name], "watermark": state[0], "in_progress": state[1]},
    ).fetchone()
    assert detached[1] == [name]
    same_as_counted_whole()
    assert kept_uses == []
    conn.execute(QUERIES["drop_detached_days"])  # as retention would: the next test may make the day again


def test_a_request_that_sees_less_than_the_kept_answer_counts_its_own(
    pool, conn, database_url, ages_on_one_utc_day
):
    """A request whose snapshot began before the one an answer was kept in does not see what
    that answer counted: it counts afresh, and its answer is its snapshot's."""
    view = us_view(1, datetime.timedelta(minutes=5))
    insert_raw(conn, [view])
    reader = StatsReader(pool, retention_days=30)
    with psycopg.connect(database_url) as older:
        older.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with older.transaction(), older.cursor() as cur:
            cur.execute("SELECT 1")  # its snapshot: one view
            insert_raw(conn, [(*view[:4], 2, *view[5:])])
            assert reader.stats_for_window(2, filters={"country": "US"})["total_views"] == 2  # kept
            bounds, today = request_bounds(cur)
            window = Window.ending(bounds["now"], today, 2, today)
            params = filtered.parameters(cur, {"country": "US"}, bounds)
            answer, _ = filtered.stats(cur, window, params, 30, carried=reader._carried)
            assert answer["total_views"] == 1


def test_views_of_a_transaction_running_when_an_answer_was_kept_are_counted_once_it_commits(
    pool, conn, database_url, kept_uses
):
    """A transaction that ran when an answer was kept commits later, with an xid below the
    snapshots that follow: its views (with an id, and without) are found through the kept
    snapshot's list of running transactions, not lost and not counted twice."""
    view = us_view(3, datetime.timedelta(minutes=30))
    insert_raw(conn, [view])
    reader = StatsReader(pool, retention_days=30)
    with psycopg.connect(database_url) as running:
        insert_raw(running, [(*view[:4], 4, *view[5:]), (*view[:4], None, *view[5:])])  # not committed
        kept = reader.stats_for_window(2, filters={"country": "US"})
        insert_raw(conn, [(*view[:4], 5, *view[5:])])
        carried_before = reader.stats_for_window(2, filters={"country": "US"})
        running.commit()
    carried_after = reader.stats_for_window(2, filters={"country": "US"})
    whole = StatsReader(pool, retention_days=30).stats_for_window(2, filters={"country": "US"})
    assert [kept["total_views"], carried_before["total_views"], carried_after["total_views"]] == [1, 2, 4]
    assert (carried_after["visitors"], carried_after["views_last_24h"]) == (whole["visitors"], 4) == (3, 4)
    assert kept_uses == [True, True]


def test_a_chunk_past_the_statement_timeout_is_counted_again_in_halves_in_the_same_snapshot(
    pool, conn, monkeypatch
):
    """The chunks are a guess from the rollups: a chunk that still passes the web's statement
    timeout (a slower machine) is undone alone (a savepoint: the snapshot and the chunks counted
    stay) and counted again in two halves. Here the server cancels every count in fewer than 4."""
    rng = random.Random(43)
    insert_raw(conn, arrivals(rng, random_visits(rng, 300), chunks=1)[0])
    whole = StatsReader(pool, retention_days=30).stats_for_window(5, filters={"country": "US"})
    tried = chunks_cancelled(monkeypatch, lambda chunks, chunk: chunks < 4)
    answer = StatsReader(pool, retention_days=30).stats_for_window(5, filters={"country": "US"})
    whole.pop("generated_at"), answer.pop("generated_at")
    assert answer == whole
    assert [chunks for chunks, _ in tried] == [1, 2, 2, 4, 4, 4, 4]  # the whole, its halves, theirs


def test_changed_ids_past_the_statement_timeout_count_the_answer_afresh(pool, conn, monkeypatch):
    """A kept answer's changed ids are counted in one statement each way (as the kept snapshot
    saw them, and now), with no chunks to fall back on: one that passes the web's statement
    timeout (a burst of ids on a large site) is undone alone, in a savepoint, and the answer is
    counted afresh in the same snapshot, in chunks that each end within it. Before, the request
    failed with the timeout's 503."""
    rng = random.Random(44)
    first, later = arrivals(rng, random_visits(rng, 300), chunks=1)
    insert_raw(conn, first)
    reader = StatsReader(pool, retention_days=30)
    reader.stats_for_window(5, filters={"country": "US"})  # kept
    insert_raw(conn, later)
    whole = StatsReader(pool, retention_days=30).stats_for_window(5, filters={"country": "US"})
    narrowed: list[bool] = []
    original = psycopg.Cursor.execute

    def execute(self, query, params=None, *args, **kwargs):
        if query == QUERIES["filtered_answer"] and params["of_visitors"] is not None:
            narrowed.append(True)
            original(self, "SET LOCAL statement_timeout = '1ms'")
            original(self, "SELECT pg_sleep(0.01)")
        return original(self, query, params, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    answer = reader.stats_for_window(5, filters={"country": "US"})
    whole.pop("generated_at"), answer.pop("generated_at")
    assert narrowed == [True]  # the first of the two passed the timeout: the answer counted afresh
    assert answer == whole


@pytest.mark.parametrize(("seconds_per_id", "carried_forward"), [(1.0, False), (0.0, True)])
def test_a_burst_of_changed_ids_is_carried_only_while_cheaper_than_a_fresh_count(
    pool, conn, kept_uses, caplog, seconds_per_id, carried_forward
):
    """Past CARRIED_WITHOUT_ASKING changed ids, an answer is carried forward only while its ids
    at the process's measured cost per id take less than the answer's last fresh count took: a
    burst of 10,000 ids on a slice of 4,000 views took 1.45 s carried, 0.36 s afresh. The cost
    per id is held here (a second an id: afresh; nothing: carried), not left to the machine."""
    caplog.set_level(logging.DEBUG, logger="tally.web.carried")
    insert_raw(conn, [us_view(visitor, datetime.timedelta(hours=2)) for visitor in range(40)])
    reader = StatsReader(pool, retention_days=30)
    reader.stats_for_window(3, filters={"country": "US"})  # kept, with its count's time
    (kept,) = reader._carried._kept._kept.values()
    assert kept.fresh_seconds > 0
    burst = carried.CARRIED_WITHOUT_ASKING + 1
    insert_raw(conn, [us_view(1_000 + visitor, datetime.timedelta(minutes=1)) for visitor in range(burst)])
    reader._carried.seconds_per_id = seconds_per_id
    answer = reader.stats_for_window(3, filters={"country": "US"})
    whole = StatsReader(pool, retention_days=30).stats_for_window(3, filters={"country": "US"})
    answer.pop("generated_at"), whole.pop("generated_at")
    assert answer == whole and answer["visitors"] == 40 + burst
    assert kept_uses == [carried_forward]
    afresh = [record.getMessage() for record in caplog.records if "counted afresh" in record.getMessage()]
    assert bool(afresh) is not carried_forward, afresh
    if carried_forward:  # measured: the cost per id of this count, averaged with the one before
        assert reader._carried.seconds_per_id > 0
    else:
        assert f"its {burst} changed ids would take about {burst:.2f} s" in afresh[0]
        (kept,) = reader._carried._kept._kept.values()
        assert kept.fresh_seconds > 0 and reader._carried.seconds_per_id == seconds_per_id
