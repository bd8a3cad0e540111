"""tests/at_hour.py, the tool that runs tests as if at another time of day: its arithmetic,
and the tool itself, whose clocks (this process's, a started process's, PostgreSQL's) must
all read the chosen hour."""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys

import pytest

from tests import at_hour
from tests.conftest import ROOT, process_environment, wait_until

UNDER_THE_TOOL = pytest.mark.skipif(
    not os.environ.get(at_hour.AT), reason="runs under tests.at_hour (a test below starts it)"
)
WITH_A_COMPILER = pytest.mark.skipif(
    not (shutil.which("cc") or shutil.which("gcc")), reason="needs a C compiler (apt-get install gcc)"
)


def run_at(at: str, test: str) -> None:
    """Run one test of this file under tests.at_hour at `at`, with a server of its own."""
    if os.environ.get(at_hour.AT):
        pytest.skip("already under tests.at_hour")
    env = {
        name: value for name, value in os.environ.items() if name not in ("DATABASE_URL", "TEST_DATABASE_URL")
    }
    command = ["-m", "tests.at_hour", at, "-q", "-p", "no:cacheprovider", f"tests/test_at_hour.py::{test}"]
    run = subprocess.run(
        [sys.executable, *command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout + run.stderr


@pytest.mark.parametrize(
    ("at", "now", "shift", "expected"),
    [
        ("00:00:15", 86400 * 3 + 50, 0, -35),  # just past it: back to it
        ("00:00:15", 86400 * 3 + 10, 0, 5),  # just before it: on to it
        ("00:00:15", 86400 * 3 - 10, 0, 25),  # 23:59:50: on to the next day's
        ("23:59:50", 86400 * 3 + 100, 0, -110),  # 00:01:40: back to the day before's
        ("12:00", 86400 * 3 + 6 * 3600, 0, 6 * 3600),
        ("00:00:15", 86400 * 3 + 20, 3600, 3595),  # moved an hour already: from the real time
    ],
)
def test_the_shift_reaches_the_chosen_time_nearest_the_real_one(at, now, shift, expected):
    moved = at_hour.shift_to_nearest(at_hour.seconds_of_day(at), now, shift)
    assert moved == expected
    assert (now - shift + moved) % 86400 == at_hour.seconds_of_day(at)
    assert abs(moved) <= 43200


@pytest.mark.parametrize("text", ["24:00", "12:60", "7:00", "noon", "12:00:00:00", ""])
def test_a_time_that_is_no_time_of_day_is_refused(text):
    with pytest.raises(ValueError, match=r"time of day|no such time"):
        at_hour.seconds_of_day(text)


@UNDER_THE_TOOL
def test_every_clock_reads_the_chosen_time(conn):
    at = at_hour.seconds_of_day(os.environ[at_hour.AT])

    def past(moment: datetime.datetime) -> float:
        moment = moment.astimezone(datetime.UTC)
        of_day = (moment - moment.replace(hour=0, minute=0, second=0, microsecond=0)).total_seconds()
        return (of_day - at) % 86400  # 23:59:57 and then 00:00:01 are 4 s past it

    assert past(datetime.datetime.now(datetime.UTC)) < 30
    assert past(conn.execute("SELECT clock_timestamp()").fetchone()[0]) < 30
    started = subprocess.run(
        [sys.executable, "-c", "import datetime; print(datetime.datetime.now(datetime.UTC).isoformat())"],
        env=process_environment(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert past(datetime.datetime.fromisoformat(started.stdout.strip())) < 30


@WITH_A_COMPILER
def test_the_tool_moves_every_clock_to_the_chosen_time():
    run_at("00:00:15", "test_every_clock_reads_the_chosen_time")


@pytest.mark.parametrize(
    ("argument", "env", "named"),
    [
        ("00:00:15", {"TEST_DATABASE_URL": "postgresql:///elsewhere"}, "TEST_DATABASE_URL"),
        ("25:00", {}, "25:00"),
    ],
)
def test_a_bad_time_or_a_shared_server_is_refused_with_a_line(argument, env, named):
    run = subprocess.run(
        [sys.executable, "-m", "tests.at_hour", argument],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2 and named in run.stderr


# --- across a midnight: what a reader keeps from one day is not the next day's ----------------


def _answers(reader, tz: str) -> list[dict]:
    found = []
    queries = [
        {"days": 1},
        {"days": 2, "compare": True},
        {"days": 1, "filters": {"country": "US"}},
        {"days": 2, "filters": {"path": "/a"}},
    ]
    for query in [*({**query, "tz": tz} for query in queries), {"days": 1, "tz": "Pacific/Kiritimati"}]:
        answer = reader.stats_for_window(**query)
        answer.pop("generated_at")
        answer.get("previous", {}).pop("generated_at", None)
        found.append(answer)
    return found


@UNDER_THE_TOOL
@pytest.mark.parametrize("tz", ["UTC", "Asia/Kathmandu"])
def test_a_reader_that_kept_the_day_before_answers_as_a_fresh_one_after_midnight(pool, conn, tz):
    from tally.web.stats import StatsReader

    def view(visitor: int, path: str) -> None:
        conn.execute(
            "INSERT INTO page_views (site, path, country, visitor) VALUES ('example.com', %s, 'US', %s)",
            (path, visitor),
        )

    def day() -> datetime.date:
        return conn.execute("SELECT (now() AT TIME ZONE %s)::date", (tz,)).fetchone()[0]

    seconds_to_midnight = conn.execute(
        "SELECT extract(epoch FROM date_trunc('day', now(), %s) + interval '1 day' - now())", (tz,)
    ).fetchone()[0]
    if not 0 < seconds_to_midnight < 20:
        pytest.skip(f"runs seconds before {tz}'s midnight, as the test below starts it")
    before_midnight = day()
    view(1, "/a")
    conn.execute("SELECT tally_rollup_page_views()")
    view(2, "/b")  # a tail
    reader = StatsReader(pool, retention_days=30)
    kept = _answers(reader, tz)
    assert day() == before_midnight, "started too late to keep the day before"
    assert kept[0]["total_views"] == 2 and kept[0]["visitors"] == 2
    wait_until(lambda: day() != before_midnight, 30, 0.05, "midnight")
    view(1, "/a")  # the same id on the new day: a visitor of each day
    found, fresh = _answers(reader, tz), _answers(StatsReader(pool, retention_days=30), tz)
    assert found == fresh
    assert [row["views"] for row in found[1]["daily"]] == [2, 1]
    assert found[1]["visitors"] == 3 and found[0]["total_views"] == 1
    conn.execute("SELECT tally_rollup_page_views()")
    view(3, "/a")
    assert _answers(reader, tz) == _answers(StatsReader(pool, retention_days=30), tz)


@pytest.mark.slow
@WITH_A_COMPILER
@pytest.mark.parametrize(("at", "tz"), [("23:59:50", "UTC"), ("18:14:50", "Asia/Kathmandu")])
def test_answers_kept_before_midnight_are_not_served_after_it(at, tz):
    """The test above, run as if ten seconds before a midnight (UTC's, and +5:45's; time enough
    for its first answers on a loaded machine): a reader's kept parts (rolled up, tail, carried,
    filtered) of one day, asked again on the next."""
    run_at(at, f"test_a_reader_that_kept_the_day_before_answers_as_a_fresh_one_after_midnight[{tz}]")
