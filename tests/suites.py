"""`make test`: the suite on both PostgreSQL builds, each in three parts, all six at once.

One run of the suite alone kept a third of two cores busy for 16.5 minutes: almost half of its
time is tests waiting on processes, timers and grace periods, while the rest computes (SQL
over scenarios in several zones). So each build's run is split three ways, and the six parts
run side by side, each with its own throwaway server, ports (tests/conftest.py,
`free_port`) and network namespaces:
- the slow process-level tests (marked `slow`) with the browser tests, which wait on Chromium;
- the other tests that mostly wait (marked `waits`: every test that starts Tally's processes,
  and those on timers or servers of their own);
- the rest, which computes, under `nice`, so the waiting parts' timed waits keep their bounds
  on a busy machine. The waiting tests were once in this part: under `nice` their processes
  waited for the CPU too (one test took 73 s in CI against 16 s alone).
Each part's report is printed whole once all have ended, in a fixed order; the exit status is
0 only when all passed. Ctrl-C or SIGTERM (to this process or its whole group) stops every part,
each stopping its tests' processes and its server first.

    python -m tests.suites            # what `make test` runs
    python -m tests.suites -x -k web  # arguments go to every pytest

The pip-installed PostgreSQL 18 always runs; the system's package (`SYSTEM_POSTGRES_BIN`,
Debian's, JIT on) when it is installed, else its parts are skipped with a line saying so,
unless `REQUIRE_SYSTEM_POSTGRES` is set (CI), which makes that a failure. Every part starts
its own server: a `TEST_DATABASE_URL` would be one database emptied under the other parts'
tests (run `pytest` itself to use one).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / ".venv"
REST_NICENESS = 10  # the computing part's, so the waiting parts' timed waits keep their bounds


@dataclasses.dataclass(frozen=True)
class Group:
    name: str
    log: str  # the part of its log file's name
    marker: str  # pytest's -m
    niceness: int


GROUPS = [
    Group("slow and browser", "slow", "slow or browser", 0),
    Group("waiting", "waits", "waits and not (slow or browser)", 0),
    Group("the rest", "rest", "not (slow or browser or waits)", REST_NICENESS),
]


@dataclasses.dataclass
class Part:
    build: str
    bin_dir: str  # "" for the pip-installed PostgreSQL
    group: Group
    process: subprocess.Popen | None = None
    started: float = 0.0
    took: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.build}, {self.group.name}"

    @property
    def log(self) -> Path:
        return LOGS / f"test-{self.build}-{self.group.log}.log"

    def start(self, args: list[str]) -> None:
        env = {**os.environ, "TEST_DATABASE_URL": "", "TEST_POSTGRES_BIN": self.bin_dir}
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", self.group.marker, *args]
        self.started = time.monotonic()
        with self.log.open("w") as log:  # the child keeps its own copy of the file
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=(lambda: os.nice(self.group.niceness)) if self.group.niceness else None,
            )


def system_bin_dir() -> str | None:
    """The system package's binaries (its newest major version), or None when not installed."""
    given = os.environ.get("SYSTEM_POSTGRES_BIN")
    found = [given] if given else glob.glob("/usr/lib/postgresql/*/bin")
    found = sorted(
        found, key=lambda path: [int(part) for part in Path(path).parent.name.split(".") if part.isdigit()]
    )
    return found[-1] if found and Path(found[-1], "postgres").exists() else None


def parts(system: str | None) -> list[Part]:
    builds = [("pip", "")] + ([("system", system)] if system else [])
    return [Part(build, bin_dir, group) for build, bin_dir in builds for group in GROUPS]


# pytest's exit status when the arguments deselected every test of a part (`-k` given by hand).
NO_TESTS_COLLECTED = 5


def outcome(part: Part) -> str:
    code = part.process.returncode
    return {0: "passed", NO_TESTS_COLLECTED: "nothing selected"}.get(code, f"FAILED (exit {code})")


def main(args: list[str]) -> int:
    system = system_bin_dir()
    if system is None and os.environ.get("REQUIRE_SYSTEM_POSTGRES"):
        print("no system PostgreSQL in /usr/lib/postgresql (apt-get install postgresql)")
        return 1
    runs = parts(system)
    LOGS.mkdir(exist_ok=True)
    for part in runs:
        part.start(args)
    print(
        f"== {len(runs)} runs at once" + (f"; the system's PostgreSQL: {system}" if system else ""),
        flush=True,
    )
    # SIGTERM to this process alone (a CI job's timeout) reaches the parts as well, each of which
    # then stops its tests and its server (tests/conftest.py); without it they ran on, unowned.
    signal.signal(signal.SIGTERM, lambda signum, frame: _stop(runs, signum))
    try:
        while running := [part for part in runs if not part.took]:
            for part in running:
                if part.process.poll() is not None:
                    part.took = time.monotonic() - part.started
            time.sleep(0.2)
    except KeyboardInterrupt:  # Ctrl-C reached every part too (one process group): let them end
        for part in runs:
            part.process.wait()
        raise
    for part in runs:
        print(f"\n== {part.name}: {outcome(part)} ({part.log})\n", flush=True)
        sys.stdout.write(part.log.read_text())
    if system is None:
        print("\n== skipped: the suite on the system PostgreSQL (apt-get install postgresql to run it)")
    print()
    for part in runs:
        print(f"== {part.name}: {outcome(part)} in {part.took:.0f} s")
    return 0 if all(part.process.returncode in (0, NO_TESTS_COLLECTED) for part in runs) else 1


# How long a part has, once signalled, to stop its tests' processes and its server.
STOP_SECONDS = 60


def _stop(runs: list[Part], signum: int) -> None:
    for part in runs:
        if part.process.poll() is None:
            part.process.send_signal(signum)
    deadline = time.monotonic() + STOP_SECONDS
    for part in runs:
        try:
            part.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            part.process.kill()
    sys.exit(128 + signum)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
