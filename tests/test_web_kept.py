"""What the web keeps with a snapshot (tally/web/kept.py): which later snapshots may carry it
forward, and how much of it is kept."""

from __future__ import annotations

import psycopg

from tally.web.carried import KEPT_VALUES, CarriedAnswers, Counts
from tally.web.kept import KeptStore, Snapshot

SNAPSHOT = Snapshot.parse("10:10:")


def test_a_snapshot_sees_what_an_earlier_one_saw(database_url, conn):
    def current(connection) -> Snapshot:
        return Snapshot.parse(connection.execute("SELECT pg_current_snapshot()::text").fetchone()[0])

    with psycopg.connect(database_url) as running:
        running.execute("INSERT INTO events (site, name, occurred_at) VALUES ('example.com', 'x', now())")
        first = current(conn)  # the insert runs
        running.commit()
        later = current(conn)  # it has ended
    assert first.seen_by(later) and not later.seen_by(first)
    assert first.seen_by(first)


def test_the_store_drops_the_least_recently_asked_past_its_entries_or_its_budget():
    def kept(store: KeptStore, keys: str) -> list[bool]:
        return [store.usable((key,), SNAPSHOT, 0) is not None for key in keys]

    by_entries: KeptStore[list[int]] = KeptStore(3)
    for key in "abcd":
        by_entries.keep((key,), [0], SNAPSHOT, 0)
    assert kept(by_entries, "abcd") == [False, True, True, True]
    by_budget: KeptStore[list[int]] = KeptStore(10, len, budget=10)
    for key, size in (("a", 4), ("b", 4), ("c", 1)):
        by_budget.keep((key,), [0] * size, SNAPSHOT, 0)
    by_budget.keep(("a",), [0] * 4, SNAPSHOT, 0)  # asked again: "b" is now the least recent
    by_budget.keep(("d",), [0] * 2, SNAPSHOT, 0)  # 4 + 4 + 1 + 2 past 10: "b" goes
    assert kept(by_budget, "abcd") == [True, False, True, True]
    by_budget.keep(("e",), [0] * 11, SNAPSHOT, 0)  # past the budget alone: not kept, nothing dropped
    assert kept(by_budget, "acde") == [True, True, True, False]


def test_filtered_answers_are_weighed_by_every_entry_they_hold():
    values = {"path": {f"/p{n}": (1, 1) for n in range(KEPT_VALUES)}}
    too_large = Counts(days={}, values=values, pages={"entry": {"/": 1}})
    assert too_large.size() == KEPT_VALUES + 1
    answers = CarriedAnswers()
    answers._kept.keep(("large",), too_large, SNAPSHOT, 0)
    answers._kept.keep(("small",), Counts(values={"path": {"/": (1, 1)}}), SNAPSHOT, 0)
    assert answers._kept.usable(("large",), SNAPSHOT, 0) is None
    assert answers._kept.usable(("small",), SNAPSHOT, 0) is not None
