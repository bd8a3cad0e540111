"""tally/web/rolled_up.py's KeptByState: a window's answer is kept for its last two rollup
states read, so the web holds two per window, not one per rollup; and read once at a state,
however many ask for it at once. And tally/web/values.py's `merged`: the settled days' values
and the others' rank as the whole."""

from __future__ import annotations

import collections
import contextlib
import datetime
import random
import threading
import time
from collections.abc import Callable

from tally.web import values
from tally.web.rolled_up import STATES_PER_FAMILY, KeptByState, RolledUp
from tally.web.values import Values
from tally.web.windows import Ranking


def reader(reads: list, value: object):
    return lambda: reads.append(value) or value


def test_a_window_keeps_its_last_states_alone():
    kept: KeptByState[str] = KeptByState(entries=16)
    reads: list = []
    for state in range(1, 21):  # twenty rollups, the same window asked after each
        assert kept.get(("a.example", "UTC", 30), (state,), reader(reads, f"at {state}")) == f"at {state}"
        assert kept.get(("a.example", "UTC", 30), (state,), reader(reads, "again")) == f"at {state}"
    assert reads == [f"at {state}" for state in range(1, 21)]
    # Not sixteen of the twenty, each holding every value of the window.
    assert len(kept._kept) == STATES_PER_FAMILY == 2


def test_the_state_before_a_rollup_is_still_kept():
    """Requests whose snapshots began before a rollup, or a replica behind the primary, ask for
    the state before it while others ask for the new one: neither is read again."""
    kept: KeptByState[str] = KeptByState(entries=16)
    reads: list = []
    for _ in range(3):
        assert kept.get(("w",), (4,), reader(reads, "old")) == "old"
        assert kept.get(("w",), (5,), reader(reads, "new")) == "new"
    assert reads == ["old", "new"]
    kept.get(("w",), (6,), reader(reads, "newer"))  # drops 4, the least recently asked
    assert kept.get(("w",), (5,), reader(reads, "again")) == "new"
    assert kept.get(("w",), (4,), reader(reads, "old, read again")) == "old, read again"


def test_windows_past_the_bound_are_dropped_least_recently_asked_first():
    kept: KeptByState[int] = KeptByState(entries=2)
    reads: list = []
    kept.get(("7 days",), (1,), reader(reads, 7))
    kept.get(("30 days",), (1,), reader(reads, 30))
    kept.get(("7 days",), (1,), reader(reads, -1))  # asked again: the most recent
    kept.get(("90 days",), (1,), reader(reads, 90))  # drops 30 days
    assert kept.get(("7 days",), (1,), reader(reads, -1)) == 7
    assert kept.get(("30 days",), (1,), reader(reads, 31)) == 31
    assert reads == [7, 30, 90, 31]


def test_a_read_in_progress_is_waited_for_not_made_again():
    kept: KeptByState[str] = KeptByState(entries=16)
    started, release = threading.Event(), threading.Event()
    reads: list[str] = []
    answers: list[str] = []

    def held_read(name: str, fails: bool = False) -> Callable[[], str]:
        def read() -> str:
            reads.append(name)
            started.set()
            assert release.wait(10)
            if fails:
                raise RuntimeError("the read failed")
            return name

        return read

    def ask(read: Callable[[], str]) -> None:
        with contextlib.suppress(RuntimeError):
            answers.append(kept.get(("window",), ("state",), read))

    for fails, expected_reads, expected_answers in (
        (False, ["first"], ["first", "first"]),
        (True, ["first", "second"], ["second"]),
    ):
        kept = KeptByState(entries=16)
        started.clear(), release.clear(), reads.clear(), answers.clear()
        first = threading.Thread(target=ask, args=(held_read("first", fails),))
        first.start()
        assert started.wait(10)
        second = threading.Thread(target=ask, args=(held_read("second"),))
        second.start()
        second.join(0.2)
        assert second.is_alive() and reads == ["first"]  # waiting for the first read, not reading
        release.set()
        first.join(10), second.join(10)
        assert reads == expected_reads and answers == expected_answers


def test_a_read_from_another_server_is_not_waited_for():
    """A replica frozen mid-read holds its read: the same window read from the primary (a read
    moved there) reads at once rather than wait for it (READ_WAIT_SECONDS, past the 2 s in which
    reads must move), and is kept for both."""
    kept: KeptByState[str] = KeptByState(entries=16)
    started, release = threading.Event(), threading.Event()

    def frozen() -> str:
        started.set()
        assert release.wait(10)
        return "from the replica"

    held = threading.Thread(target=kept.get, args=(("window",), ("state",), frozen, "replica"))
    held.start()
    try:
        assert started.wait(10)
        asked = time.monotonic()
        answer = kept.get(("window",), ("state",), lambda: "from the primary", "primary")
        assert answer == "from the primary" and time.monotonic() - asked < 1
        assert kept.get(("window",), ("state",), lambda: "read again", "replica") == "from the primary"
    finally:
        release.set()
        held.join(10)


MOMENT = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)


def test_the_settled_days_ranking_and_the_other_days_values_merged_rank_as_the_whole(monkeypatch):
    """`merged`: the settled days' most viewed values (a bound for the rest) and every value of
    the other days, or their most viewed too, added up, give the panel rows the whole ranking
    gives, whatever the tail."""
    rng = random.Random(53)
    fell_back = sum(merged_ranks_as_the_whole(rng, monkeypatch) for _ in range(2000))
    assert 0 < fell_back < 1000


def merged_ranks_as_the_whole(rng: random.Random, monkeypatch) -> bool:
    """One random case of the test above; whether every value was read."""
    lock = threading.Lock()
    names = [f"/p{n}" for n in range(rng.randrange(1, 40))]
    universe = [*names, "", *(f"/new{n}" for n in range(5))]
    settled_views = {name: rng.choice([0, 1, 1, 2, 3, 3, 5, 40]) for name in names}
    recent_views = {
        name: rng.choice([0, 1, 2, 9])
        for name in rng.sample(universe, rng.randrange(0, min(12, len(universe))))
    }
    moves_down = rng.random() < 0.3  # entries and exits: a tail may move views away
    tail = {
        rng.choice(universe): rng.randrange(-3 if moves_down else 0, 6) for _ in range(rng.randrange(0, 25))
    }
    read = rng.randrange(1, 30)
    first = sorted(settled_views, key=lambda name: (-settled_views[name], name))[: read + 1]
    last = (settled_views[first[-1]], first[-1]) if len(settled_views) > read + 1 else None
    # Each part's views of any name are known (no query); every value of a part is read
    # (again) when the values read cannot fill the rows. The other days' values are kept
    # bounded once merged, as if their first few alone had been read.
    parts = {"settled": settled_views, "recent": recent_views}
    known = {part: {("path", name): views.get(name, 0) for name in universe} for part, views in parts.items()}
    first_day = datetime.date(2026, 11, 30)
    settled = Values(
        MOMENT,
        MOMENT,
        None,
        None,
        first_day,
        {"path": Ranking.of({n: settled_views[n] for n in first}, last)},
        [],
        {},
        known["settled"],
    )
    # The other days' values: every one, or (a site whose paths carry ids) their most viewed.
    recent_ranking = Ranking.of(recent_views)
    if rng.random() < 0.5 and recent_views:
        ranked = rng.randrange(0, len(recent_views))
        kept = recent_ranking.ranked[: ranked + 1]
        recent_ranking = Ranking.of(
            {n: recent_views[n] for n in kept},
            (recent_views[kept[-1]], kept[-1]) if ranked + 1 < len(recent_views) else None,
        )
    recent = Values(MOMENT, MOMENT, None, first_day, None, {"path": recent_ranking}, [], {}, known["recent"])
    monkeypatch.setattr(
        values,
        "_read_values",
        lambda cur, bounds, *args: ({"path": dict(parts["recent" if bounds["from_day"] else "settled"])}, {}),
    )
    tops = values.merged(None, settled, recent, lock)
    kept = (settled, recent if recent_ranking.last else recent.bounded(rng.randrange(0, 4)))
    lookup = RolledUp(MOMENT, {}, {}, 0, tops, MOMENT, {}, kept, True).lookup(None, "path", lock)
    asked: list[list[str] | None] = []
    whole = collections.Counter(settled_views) + collections.Counter(recent_views)
    expected = Ranking.of({name: whole.get(name, 0) for name in {*settled_views, *recent_views}})
    # Sometimes with the window's ranking in one read to fall back on (`RolledUp.whole_ranking`).
    depth = rng.randrange(0, len(expected.ranked) + 1)
    first_whole = expected.ranked[: depth + 1]
    in_one = Ranking.of(
        {name: expected.views[name] for name in first_whole},
        (expected.views[first_whole[-1]], first_whole[-1]) if depth + 1 < len(expected.ranked) else None,
    )
    whole_ranking = (lambda: in_one) if rng.random() < 0.5 and first_whole else None
    got = tops["path"].top(tail, "path", lambda wanted: asked.append(wanted) or lookup(wanted), whole_ranking)
    assert got == expected.top(tail, "path", lambda wanted: {}), (settled_views, recent_views, tail, read)
    return None in asked


def test_a_value_left_unread_by_the_merge_ranks_after_the_settled_bound_by_name(monkeypatch):
    """`c` has the settled bound's one view there (after `b` by name, so left out) and two in
    the other days: too few to be looked up, the tenth row having four. An exit's tail then
    moves `d` down to three, beside `c`'s three, which comes first by name: the merged bound
    (three views, then names after `b`) must send the rows to read what they left out."""
    lock = threading.Lock()
    settled_views = {**{f"p{n:02}": 9 for n in range(9)}, "d": 4, "b": 1, "c": 1}
    recent_views = {"c": 2}
    first = sorted(settled_views, key=lambda name: (-settled_views[name], name))[:11]
    day = datetime.date(2026, 11, 30)
    known = {
        part: {("exit", name): views.get(name, 0) for name in settled_views}
        for part, views in (("settled", settled_views), ("recent", recent_views))
    }
    ranked = {"exit": Ranking.of({name: settled_views[name] for name in first}, (1, "b"))}
    settled = Values(MOMENT, MOMENT, None, None, day, ranked, [], {}, known["settled"])
    recent = Values(
        MOMENT, MOMENT, None, day, None, {"exit": Ranking.of(recent_views)}, [], {}, known["recent"]
    )
    parts = {"settled": settled_views, "recent": recent_views}
    monkeypatch.setattr(
        values,
        "_read_values",
        lambda cur, bounds, *args: ({"exit": dict(parts["recent" if bounds["from_day"] else "settled"])}, {}),
    )
    tops = values.merged(None, settled, recent, lock)
    assert "c" not in tops["exit"].views
    lookup = RolledUp(MOMENT, {}, {}, 0, tops, MOMENT, {}, (settled, recent), True).lookup(None, "exit", lock)
    rows = tops["exit"].top({"d": -1}, "path", lookup)
    assert [row["path"] for row in rows] == [*(f"p{n:02}" for n in range(9)), "c"]


def test_values_kept_bounded_keep_every_search_engine_read():
    """A search engine's name found in no ranking has no views (all its domains are read with
    the window): so the other days' values, kept bounded, keep every engine's."""
    views = {"news.example": 9, "blog.example": 7, "shop.example": 5, "Google": 1, "DuckDuckGo": 1}
    values = Values(MOMENT, MOMENT, None, None, None, {"referrer": Ranking.of(views)}, [], {}, {})
    kept = values.bounded(0).tops["referrer"]
    assert set(kept.views) == {"news.example", "Google", "DuckDuckGo"}
    assert kept.last == (9, "news.example")  # the rest has at most its views


def test_a_stats_read_from_another_server_does_not_wait_for_one_held(database_url, pool, conn, monkeypatch):
    """`StatsReader` keeps what it reads by the pool it reads from: a window's read held on one
    server (a frozen replica) holds no request that reads the same window from another."""
    from tally.config import from_env
    from tally.db import web_pool
    from tally.web import stats
    from tests.test_web import roll_up

    conn.execute("INSERT INTO page_views (site, path, viewed_at) VALUES ('example.com', '/', now())")
    roll_up(conn)
    started, release = threading.Event(), threading.Event()
    read_rolled_up = stats.read_rolled_up

    def held_on_the_first(cur, *args, **kwargs):
        if threading.current_thread().name == "frozen replica":
            started.set()
            assert release.wait(10)
        return read_rolled_up(cur, *args, **kwargs)

    monkeypatch.setattr(stats, "read_rolled_up", held_on_the_first)
    reader = stats.StatsReader(pool, retention_days=30)
    with web_pool(from_env({"DATABASE_URL": database_url}, process_type="web")) as other:
        held = threading.Thread(name="frozen replica", target=reader.stats_for_window, args=(7,))
        held.start()
        try:
            assert started.wait(10)
            asked = time.monotonic()
            assert reader.stats_for_window(7, pool=other)["total_views"] == 1
            assert time.monotonic() - asked < 2
        finally:
            release.set()
            held.join(10)
