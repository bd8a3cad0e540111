"""One table for every figure on every PostgreSQL build, beside its baseline from the same run.

Each benchmark module measures one build at a time and returns a `Result`: rows of the
table and notes saying, with figures from the same run, how each figure is measured and
what bounds a goal that is not met. The table puts the builds side by side: for each
figure, its goal, then per build Tally's value beside its baseline and the ratio with
the verdict. docs/BENCHMARKS.md is that table, the machine and the notes.
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

from bench.harness import ROOT, Build, server_facts, system_build

DOCUMENT = ROOT / "docs" / "BENCHMARKS.md"
# Where the document's part written by hand begins: figures measured apart (one module alone, a
# session's script), each section dated. A full run rewrites what comes before it, never this.
KEPT_HEADING = "## Measured apart"
# One module's results, keyed by the build's label, in the order the builds ran.
Measured = dict[str, "Result"]


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


@dataclasses.dataclass
class Result:
    """What one benchmark module measured."""

    name: str
    rows: list[Row] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0


def times(ratio: float, goal: float | None = None) -> str:
    """A ratio as '1.23x'; with more decimals where it would print as its goal but is not it."""
    if ratio >= 10:
        return f"{ratio:,.0f}x"
    decimals = 2
    if goal is not None and ratio != goal:
        while decimals < 6 and f"{ratio:.{decimals}f}" == f"{goal:.{decimals}f}":
            decimals += 1
    return f"{ratio:.{decimals}f}x"


def _value(row: Row | None) -> str:
    if row is None:
        return "(not measured)"
    return row.tally if row.baseline == "-" else f"{row.tally} vs {row.baseline}"


def _verdict(row: Row | None) -> str:
    if row is None:
        return "-"
    verdict = {True: "yes", False: "**no**", None: ""}[row.met]
    return ", ".join(part for part in (row.ratio if row.ratio != "-" else "", verdict) if part) or "-"


def _figures(measured: Measured) -> list[str]:
    """Every figure of one module, in the first build's order, another build's extras after."""
    figures: list[str] = []
    for result in measured.values():
        figures += [row.figure for row in result.rows if row.figure not in figures]
    return figures


def table(modules: list[Measured], labels: list[str]) -> str:
    """A Markdown table, one line a figure, a pair of columns a build; padded for a terminal too."""
    heading = (
        "figure",
        "goal",
        *(cell for label in labels for cell in (f"{label}: Tally vs baseline", "ratio, met?")),
    )
    lines = [heading]
    for measured in modules:
        for figure in _figures(measured):
            rows = {
                label: next((row for row in result.rows if row.figure == figure), None)
                for label, result in measured.items()
            }
            goal = next((row.goal for row in rows.values() if row is not None and row.goal != "-"), "-")
            cells = [
                cell for label in labels for cell in (_value(rows.get(label)), _verdict(rows.get(label)))
            ]
            lines.append((figure, goal, *cells))
    widths = [max(len(line[index]) for line in lines) for index in range(len(heading))]

    def line(values: tuple[str, ...]) -> str:
        return (
            "| " + " | ".join(value.ljust(width) for value, width in zip(values, widths, strict=True)) + " |"
        )

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(lines[0]), rule, *(line(values) for values in lines[1:])])


def notes(measured: Measured) -> list[str]:
    """One module's notes: those every build shares once, the others under their build's name."""
    shared = set.intersection(*(set(result.notes) for result in measured.values()))
    lines: list[str] = []
    for label, result in measured.items():
        for note in result.notes:
            if note not in shared:
                lines.append(f"{label}: {note}")
            elif note not in lines:
                lines.append(note)
    return lines


def goals_met(modules: list[Measured], label: str) -> tuple[int, int]:
    rows = [row for measured in modules if label in measured for row in measured[label].rows]
    return sum(1 for row in rows if row.met), sum(1 for row in rows if row.met is not None)


def print_results(modules: list[Measured], labels: list[str]) -> None:
    """What a partial run prints: the table and the notes."""
    print(table(modules, labels))
    for measured in modules:
        for note in notes(measured):
            print(f"- {note}")


def run_alone(measure, builds: list[Build]) -> None:
    """`python -m bench.MODULE`: measure on every build, print the table and notes."""
    measured = {build.label: measure(build) for build in builds}
    print_results([measured], [build.label for build in builds])


def machine(builds: list[Build]) -> dict[str, str]:
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
    about = {
        "CPU": cpu,
        "cores": str(os.cpu_count()),
        "RAM": f"{memory_kb / 1024 / 1024:.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "load average at start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }
    for build in builds:
        about[build.label] = server_facts(build)
    about["JIT"] = (
        "Tally's connections set jit=off (libpq options), as does its rollup function; the naive"
        " baselines, pgbench (each build's own), COPY and procrastinate's stock worker run with each"
        " build's own setting."
    )
    if system_build() is None:
        about["Debian's PostgreSQL"] = (
            "not installed (apt-get install postgresql): only the pip-installed build was measured"
        )
    about |= {
        "Python": sys.version.split()[0],
        "load tool": wrk_version,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    return about


def markdown(modules: list[Measured], labels: list[str], about: dict[str, str], total_seconds: float) -> str:
    tallies = {label: goals_met(modules, label) for label in labels}
    goals = "; ".join(f"{label} {met} of {count}" for label, (met, count) in tallies.items())
    lines = [
        "# Benchmarks",
        "",
        "The table, the machine and the notes are written by `make bench` (`python -m bench`): do",
        'not edit them by hand; the sections from "Measured apart" on are written by hand and kept',
        "by it. Every figure stands beside its baseline, measured in the same run on the same",
        "machine, on each PostgreSQL build side by side: compare ratios across machines, not",
        "absolute figures. Benchmarks are not tests: `make test` times nothing.",
        "",
        f"Goals met: {goals}. Run time: {total_seconds / 60:.1f} min.",
        "",
        table(modules, labels),
        "",
        "## Machine",
        "",
        *(f"- {key}: {value}" for key, value in about.items()),
        "",
        "## Notes: how each figure is measured, what bounds the goals not met",
        "",
    ]
    for measured in modules:
        first = next(iter(measured.values()))
        took = ", ".join(f"{label} {result.seconds:.0f} s" for label, result in measured.items())
        lines += [f"### {first.name} ({took})", "", *(f"- {note}" for note in notes(measured)), ""]
    return "\n".join(lines)


def write(
    modules: list[Measured],
    labels: list[str],
    about: dict[str, str],
    total_seconds: float,
    path: Path = DOCUMENT,
) -> None:
    """The document anew, with its part written by hand (from KEPT_HEADING on) kept as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = markdown(modules, labels, about, total_seconds)
    kept = kept_part(path)
    path.write_text(document + ("\n" + kept if kept else ""), encoding="utf-8")


def kept_part(path: Path) -> str:
    """The document's sections from KEPT_HEADING to its end ('' without the heading or the file)."""
    if not path.exists():
        return ""
    text = path.read_text(encoding="utf-8")
    if text.startswith(KEPT_HEADING + "\n"):
        return text
    at = text.find("\n" + KEPT_HEADING + "\n")
    return text[at + 1 :] if at >= 0 else ""
