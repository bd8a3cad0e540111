"""The clock's sleep after a slow defer: it wakes at the next tick, not a whole interval after
the defer ended (jobs/schedule.py, `defer_forever`)."""

from __future__ import annotations

import asyncio

import pytest

from jobs import schedule


class SlowDeferrer:
    """A deferrer with a tick every minute whose defer takes `takes` seconds of the fake clock."""

    def __init__(self, clock: list[float], takes: float):
        self.clock, self.takes = clock, takes
        self.last_defers: dict = {("task", "clock"): 0}

    def get_previous_tasks(self, at: float) -> list:
        return []

    async def defer_jobs(self, jobs_to_defer) -> None:
        self.clock[0] += self.takes  # the database answered late (a hung primary, a lock wait)

    def get_next_tick(self, at: float) -> float:
        return 60 - at % 60


@pytest.mark.parametrize("takes", [0.0, 6.0, 59.0, 65.0])
def test_the_clock_wakes_at_the_next_tick_after_a_slow_defer(monkeypatch, takes):
    clock = [1_796_480_760.5]  # half a second after a minute's tick
    started = clock[0]
    pauses: list[float] = []
    monkeypatch.setattr(schedule.time, "time", lambda: clock[0])

    async def fake_wait_for(awaitable, timeout):
        pauses.append(timeout)
        stopping.set()
        awaitable.close()
        raise TimeoutError

    async def resumed(*args) -> None:
        pass  # no database here: the schedule starts from the deferrer's memory

    monkeypatch.setattr(schedule.asyncio, "wait_for", fake_wait_for)
    monkeypatch.setattr(schedule, "resume_after_last_defers", resumed)
    stopping = asyncio.Event()
    asyncio.run(schedule.defer_forever(SlowDeferrer(clock, takes), stopping))
    # The next tick is at started + 59.5 s; the clock wakes 0.5 s after it, or at once if the
    # defer ran past it. A 6 s defer slept 60 s more: each tick after it came 6 s late.
    assert pauses == [pytest.approx(max(0.0, started + 59.5 + 0.5 - clock[0]))]
