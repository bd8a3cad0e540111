"""tally/web/rolled_up.py's KeptByState: a window's answer is kept for its last two rollup
states read, so the web holds two per window, not one per rollup; and read once at a state,
however many ask for it at once."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

from tally.web.rolled_up import STATES_PER_FAMILY, KeptByState


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
