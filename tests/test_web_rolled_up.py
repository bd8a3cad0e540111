"""tally/web/rolled_up.py's KeptByState: a window's answer is kept for its newest rollup state
alone, so the web holds one per window, not one per rollup."""

from __future__ import annotations

from tally.web.rolled_up import KeptByState, state_order


def reader(reads: list, value: object):
    return lambda: reads.append(value) or value


def test_a_window_keeps_its_newest_state_alone():
    kept: KeptByState[str] = KeptByState(entries=16)
    reads: list = []
    for state in range(1, 21):  # twenty rollups, the same window asked after each
        assert kept.get(("a.example", "UTC", 30), (state,), reader(reads, f"at {state}")) == f"at {state}"
        assert kept.get(("a.example", "UTC", 30), (state,), reader(reads, "again")) == f"at {state}"
    assert reads == [f"at {state}" for state in range(1, 21)]
    assert len(kept._kept) == 1  # not sixteen of the twenty, each holding every value of the window


def test_an_older_state_is_read_again_and_does_not_replace_the_newer():
    """A request whose snapshot began before a rollup asks for the state before it."""
    kept: KeptByState[str] = KeptByState(entries=16)
    reads: list = []
    kept.get(("w",), (5,), reader(reads, "new"))
    assert kept.get(("w",), (4,), reader(reads, "old")) == "old"
    assert kept.get(("w",), (5,), reader(reads, "unread")) == "new"
    assert reads == ["new", "old"]


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


def test_states_are_ordered_by_the_watermarks_number_not_its_text():
    """psycopg reads an xid8 as text: '10' sorts before '9'."""
    assert state_order(("10", ())) > state_order(("9", ()))
    assert state_order(("10", ("12",))) > state_order(("10", ()))
