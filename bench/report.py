"""One table for every figure, beside its baseline from the same run, and docs/BENCHMARKS.md.

Each benchmark module returns a `Result`: rows of the table and notes saying, with
figures from the same run, what bounds a goal that is not met and what would lift it.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from bench.harness import ROOT, postgres_version

DOCUMENT = ROOT / "docs" / "BENCHMARKS.md"
COLUMNS = ("figure", "Tally", "baseline (same run)", "ratio", "goal", "met?")


@dataclasses.dataclass(frozen=True)
class Row:
    """One figure: Tally's value, its baseline, how they compare, the goal and whether it holds.

    `met` is None for a figure with no goal of its own (shown for context).
    """

    figure: str
    tally: str
    baseline: str = "-"
    ratio: str = "-"
    goal: str = "-"
    met: bool | None = None

    def cells(self) -> tuple[str, ...]:
        verdict = {True: "yes", False: "**no**", None: "-"}[self.met]
        return (self.figure, self.tally, self.baseline, self.ratio, self.goal, verdict)


@dataclasses.dataclass
class Result:
    """What one benchmark module measured."""

    name: str
    rows: list[Row] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0


def times(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:,.0f}x"


def table(rows: list[Row]) -> str:
    """A Markdown table, padded so it also reads well in a terminal."""
    cells = [COLUMNS, *(row.cells() for row in rows)]
    widths = [max(len(line[index]) for line in cells) for index in range(len(COLUMNS))]

    def line(values: tuple[str, ...]) -> str:
        return (
            "| " + " | ".join(value.ljust(width) for value, width in zip(values, widths, strict=True)) + " |"
        )

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(cells[0]), rule, *(line(values) for values in cells[1:])])


def print_result(result: Result) -> None:
    """What a module run alone prints: its rows and notes."""
    print(table(result.rows))
    for note in result.notes:
        print(f"- {note}")


def machine() -> dict[str, str]:
    """What the figures depend on: the machine, its load at the start, the software."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    memory_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    wrk = shutil.which("wrk")
    wrk_version = (
        subprocess.run([wrk, "--version"], capture_output=True, text=True).stdout.split("\n")[0].strip()
        if wrk
        else "not installed (Python load client used)"
    )
    return {
        "CPU": cpu,
        "cores": str(os.cpu_count()),
        "RAM": f"{memory_kb / 1024 / 1024:.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "PostgreSQL": postgres_version(),
        "Python": sys.version.split()[0],
        "load tool": wrk_version,
        "load average at start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def markdown(results: list[Result], about: dict[str, str], total_seconds: float) -> str:
    rows = [row for result in results for row in result.rows]
    met = sum(1 for row in rows if row.met)
    goals = sum(1 for row in rows if row.met is not None)
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench`); do not edit by hand. Every figure stands",
        "beside its baseline, measured in the same run on the same machine: compare ratios",
        "across machines, not absolute figures. Benchmarks are not tests: `make test` times nothing.",
        "",
        f"Goals met: {met} of {goals}. Run time: {total_seconds / 60:.1f} min.",
        "",
        table(rows),
        "",
        "## Machine",
        "",
        *(f"- {key}: {value}" for key, value in about.items()),
        "",
        "## Notes: how each figure is measured, what bounds the goals not met",
        "",
    ]
    for result in results:
        if result.notes:
            lines += [
                f"### {result.name} ({result.seconds:.0f} s)",
                "",
                *(f"- {note}" for note in result.notes),
                "",
            ]
    return "\n".join(lines)


def write(results: list[Result], about: dict[str, str], total_seconds: float, path: Path = DOCUMENT) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(results, about, total_seconds), encoding="utf-8")
