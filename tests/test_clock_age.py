"""The clock's age in health and /metrics is that of the newest tick a clock deferred. A clock
whose system time ran ahead (a day, for 15 s) left a tick dated tomorrow: the age read
-86,390 s for a day, so an alert on it could not fire even with every clock stopped."""

from __future__ import annotations

from tally.db import QUERIES


def defer_tick(conn, seconds_from_now: int, task: str) -> None:
    conn.execute(
        "INSERT INTO procrastinate_periodic_defers (task_name, defer_timestamp, periodic_id)"
        " VALUES (%s, extract(epoch FROM now())::bigint + %s, 'clock')",
        (task, seconds_from_now),
    )


def test_a_tick_dated_in_the_future_by_a_clock_far_ahead_does_not_make_the_clock_look_alive(conn):
    defer_tick(conn, -300, "rollup_page_views")  # the real clocks' last tick, 5 minutes ago
    defer_tick(conn, 86_400, "retry_stalled_jobs")  # a clock a day ahead, since stopped
    age = conn.execute(QUERIES["last_periodic_defer"]).fetchone()[0]
    assert 299 <= age < 330


def test_the_age_of_the_newest_tick(conn):
    defer_tick(conn, -120, "rollup_page_views")
    defer_tick(conn, -20, "retry_stalled_jobs")
    age = conn.execute(QUERIES["last_periodic_defer"]).fetchone()[0]
    assert 19 <= age < 40


def test_a_clock_started_after_a_clock_far_ahead_ran_still_defers_its_ticks(start_process, conn):
    # A clock whose system time was a day ahead ran for a moment: its ticks are dated tomorrow.
    # A clock (re)started after it took the newest tick as where to resume, and deferred
    # nothing until tomorrow's time (no rollup, cleanup, salt rotation or stalled-job sweep).
    defer_tick(conn, 86_400, "retry_stalled_jobs")
    clock = start_process(["clock.py"], {"RETRY_STALLED_SCHEDULE": "* * * * * */2"})
    clock.wait_for_line("Periodic job retry_stalled_jobs", timeout=10)
