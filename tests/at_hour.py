"""Run tests as if each one began at a given time of day (UTC), without waiting for it.

    .venv/bin/python -m tests.at_hour 00:00:15 tests/test_web_exact.py -k visitors

Before each test the wall clock of every process is set to the nearest such time: the
tests, the processes they start (web.py, worker.py, clock.py) and the PostgreSQL server,
whose `now()` a test's views are dated by. Timeouts and sleeps keep the real pace (monotonic
clocks are not moved). A test that dates its data `now() - age` and counts it in a window of
days finds out here whether it assumed the age and now share a day: CI runs at any hour,
and once ran in the first minutes of a UTC day, where seven such tests failed. The whole
suite at 00:00:15 is an exploration of about 15 minutes a build that `make test` does not
run (it runs only tests/test_at_hour.py's own tests this way).

Between two tests the clock goes back by the first one's length. PostgreSQL times its own
intervals by the wall clock, so a server kept across tests may be late by that much: a
standby's status to its primary is (tests/test_replica_states.py, the silent link: lagging
after 8.5 s, not 2-4, in its module; alone under this tool it passes).

It needs a C compiler (`apt-get install gcc`): tests/clock_shift.c is built into the venv
and loaded with LD_PRELOAD, which tests/conftest.py passes on to the processes it starts.
Imported by pytest (`-p tests.at_hour`, which the command adds), it is the plugin that moves
the clock.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE = Path(__file__).with_name("clock_shift.c")
LIBRARY = ROOT / ".venv" / "clock_shift.so"
SHIFT_FILE = "TIME_SHIFT_FILE"
AT = "TALLY_TESTS_AT"


def seconds_of_day(text: str) -> int:
    """'HH:MM' or 'HH:MM:SS' as seconds past midnight."""
    if not re.fullmatch(r"\d{2}:\d{2}(:\d{2})?", text):
        raise ValueError(f"a time of day is HH:MM or HH:MM:SS (UTC), not {text!r}")
    parts = [int(part) for part in text.split(":")] + [0]
    hours, minutes, seconds = parts[:3]
    if hours > 23 or minutes > 59 or seconds > 59:
        raise ValueError(f"no such time of day: {text!r}")
    return hours * 3600 + minutes * 60 + seconds


def shift_to_nearest(at: int, shifted_now: float, shift: int) -> int:
    """The shift that puts the clock at the `at` (seconds past a UTC midnight) nearest the real
    time, the clock being `shifted_now` as `shift` moved it. Nearest, not next: moved a day on
    for each test, the clock left the days the database's partitions were made for behind.

    >>> shift_to_nearest(15, 86400 * 3 + 50, 0)  # 00:00:50 on day 3: back to its 00:00:15
    -35
    """
    real = shifted_now - shift
    day = (int(real) // 86400) * 86400
    target = min((day + offset + at for offset in (-86400, 0, 86400)), key=lambda moment: abs(moment - real))
    return math.ceil(target - real)  # whole seconds, and never before `at`


def _read_shift(path: str) -> int:
    with open(path, "rb") as file:
        return struct.unpack("q", file.read(8))[0]


def _write_shift(path: str, shift: int) -> None:
    with open(path, "r+b") as file:
        file.write(struct.pack("q", shift))


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item):
    """Move every clock to the chosen time (the nearest) before the test's fixtures run."""
    path, at = os.environ.get(SHIFT_FILE), os.environ.get(AT)
    if path and at:
        now = datetime.datetime.now(datetime.UTC).timestamp()
        _write_shift(path, shift_to_nearest(seconds_of_day(at), now, _read_shift(path)))
    yield


def build_library() -> Path:
    """tests/clock_shift.c built into the venv, again when the source is newer."""
    if LIBRARY.exists() and LIBRARY.stat().st_mtime >= SOURCE.stat().st_mtime:
        return LIBRARY
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("tests.at_hour needs a C compiler to build tests/clock_shift.c: apt-get install gcc")
    # Built under a name of its own, then renamed: `make test` runs this in several parts at once.
    built = LIBRARY.with_name(f"clock_shift.{os.getpid()}.so")
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(built), str(SOURCE), "-ldl"], check=True)
    os.replace(built, LIBRARY)
    return LIBRARY


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    try:
        seconds_of_day(argv[0])
    except ValueError as error:
        print(f"tests.at_hour: {error}", file=sys.stderr)
        return 2
    if os.environ.get("TEST_DATABASE_URL"):
        print(
            "tests.at_hour: TEST_DATABASE_URL names a server whose clock it cannot move; unset it",
            file=sys.stderr,
        )
        return 2
    library = build_library()
    with tempfile.NamedTemporaryFile(prefix="tally-clock-shift-") as shift:
        shift.write(struct.pack("q", 0))
        shift.flush()
        os.chmod(shift.name, 0o644)  # the server runs as another user (pgserver, postgres)
        preload = " ".join(filter(None, [str(library), os.environ.get("LD_PRELOAD")]))
        env = {**os.environ, "LD_PRELOAD": preload, SHIFT_FILE: shift.name, AT: argv[0]}
        command = [sys.executable, "-m", "pytest", "-p", "tests.at_hour", *argv[1:]]
        return subprocess.run(command, cwd=ROOT, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
