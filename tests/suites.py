"""`make test`: the suite on both PostgreSQL builds, each in two halves, all four at once.

One run of the suite alone kept a third of two cores busy for 16.5 minutes: almost half of its
time is the process-level tests (marked `slow`) waiting on processes, timers and grace
periods, while the rest computes (SQL over scenarios in several zones). So each build's run is
split there (the browser tests, which wait on Chromium, go with the slow ones: the halves
then end closer together), and the four halves run side by side, each with its own throwaway server,
ports (tests/conftest.py, `free_port`) and network namespaces. The computing halves run
under `nice`, so the slow halves' timed waits keep their bounds on a busy machine. Each
half's report is printed whole once all have ended, in a fixed order; the exit status is
0 only when all passed.

    python -m tests.suites            # what `make test` runs
    python -m tests.suites -x -k web  # arguments go to every pytest

The pip-installed PostgreSQL 18 always runs; the system's package (`SYSTEM_POSTGRES_BIN`,
Debian's, JIT on) when it is installed, else its halves are skipped with a line saying so,
unless `REQUIRE_SYSTEM_POSTGRES` is set (CI), which makes that a failure. Every half starts
its own server: a `TEST_DATABASE_URL` would be one database emptied under the other halves'
tests (run `pytest` itself to use one).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / ".venv"
WAITING = "slow or browser"  # the half that mostly waits; the other is `not (...)` of it
REST_NICENESS = 10  # the computing half's, so the waiting half's timed waits keep their bounds


@dataclasses.dataclass
class Half:
    build: str
    bin_dir: str  # "" for the pip-installed PostgreSQL
    waiting: bool  # the slow and browser tests; else the rest, under nice
    process: subprocess.Popen | None = None
    started: float = 0.0
    took: float = 0.0

    @property
    def marker(self) -> str:
        return WAITING if self.waiting else f"not ({WAITING})"

    @property
    def name(self) -> str:
        return f"{self.build}, {'slow and browser' if self.waiting else 'the rest'}"

    @property
    def log(self) -> Path:
        return LOGS / f"test-{self.build}-{'slow' if self.waiting else 'rest'}.log"

    def start(self, args: list[str]) -> None:
        env = {**os.environ, "TEST_DATABASE_URL": "", "TEST_POSTGRES_BIN": self.bin_dir}
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", self.marker, *args]
        self.started = time.monotonic()
        with self.log.open("w") as log:  # the child keeps its own copy of the file
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=None if self.waiting else (lambda: os.nice(REST_NICENESS)),
            )


def system_bin_dir() -> str | None:
    """The system package's binaries (its newest major version), or None when not installed."""
    given = os.environ.get("SYSTEM_POSTGRES_BIN")
    found = [given] if given else glob.glob("/usr/lib/postgresql/*/bin")
    found = sorted(
        found, key=lambda path: [int(part) for part in Path(path).parent.name.split(".") if part.isdigit()]
    )
    return found[-1] if found and Path(found[-1], "postgres").exists() else None


def halves(system: str | None) -> list[Half]:
    builds = [("pip", "")] + ([("system", system)] if system else [])
    return [Half(build, bin_dir, waiting) for build, bin_dir in builds for waiting in (True, False)]


# pytest's exit status when the arguments deselected every test of a half (`-k` given by hand).
NO_TESTS_COLLECTED = 5


def outcome(half: Half) -> str:
    code = half.process.returncode
    return {0: "passed", NO_TESTS_COLLECTED: "nothing selected"}.get(code, f"FAILED (exit {code})")


def main(args: list[str]) -> int:
    system = system_bin_dir()
    if system is None and os.environ.get("REQUIRE_SYSTEM_POSTGRES"):
        print("no system PostgreSQL in /usr/lib/postgresql (apt-get install postgresql)")
        return 1
    runs = halves(system)
    LOGS.mkdir(exist_ok=True)
    for half in runs:
        half.start(args)
    print(
        f"== {len(runs)} runs at once" + (f"; the system's PostgreSQL: {system}" if system else ""),
        flush=True,
    )
    try:
        while running := [half for half in runs if not half.took]:
            for half in running:
                if half.process.poll() is not None:
                    half.took = time.monotonic() - half.started
            time.sleep(0.2)
    except KeyboardInterrupt:  # Ctrl-C reached every run too (one process group): let them end
        for half in runs:
            half.process.wait()
        raise
    for half in runs:
        print(f"\n== {half.name}: {outcome(half)} ({half.log})\n", flush=True)
        sys.stdout.write(half.log.read_text())
    if system is None:
        print("\n== skipped: the suite on the system PostgreSQL (apt-get install postgresql to run it)")
    print()
    for half in runs:
        print(f"== {half.name}: {outcome(half)} in {half.took:.0f} s")
    return 0 if all(half.process.returncode in (0, NO_TESTS_COLLECTED) for half in runs) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
