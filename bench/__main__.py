"""`python -m bench` (`make bench`): every benchmark on every PostgreSQL build, one table, docs/BENCHMARKS.md.

The builds are the pip-installed PostgreSQL 18 (the local default, no JIT) and Debian's
PostgreSQL from /usr/lib/postgresql (JIT on, the build most users run); without Debian's
package only the first is measured, and the document says so. Each module makes its own
throwaway PostgreSQL of one build, loads its data with SQL, starts the real processes
and measures each figure beside its baseline in the same run, then does the same on the
next build, so the two columns of a figure are measured minutes apart. A module that
fails is reported and the others still run; the document is written only when all of
them ran on every build, and the exit status says whether they did (goals missed do not
fail it: benchmarks are not tests).

$ python -m bench                         # everything, ~110 min on 2 cores (returning_ids 15, events 13)
$ python -m bench pickup cleanup          # some modules; prints, leaves docs/BENCHMARKS.md alone
$ BENCH_BUILDS=pip python -m bench stats  # one build only
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable

from bench import (
    cleanup,
    collect,
    crawlers,
    events,
    filters,
    footprint,
    ingest,
    jobs_page,
    partitions,
    pickup,
    report,
    returning_ids,
    rollups,
    stats,
    stats_scale,
    throughput,
    wide_site,
)
from bench.harness import Build, builds, say, wrk_available

# In the order, which is the table's.
MODULES: dict[str, Callable[[Build], report.Result]] = {
    "stats": stats.measure,
    "filters": filters.measure,
    "ingest": ingest.measure,
    "pickup": pickup.measure,
    "throughput": throughput.measure,
    "cleanup": cleanup.measure,
    "footprint": footprint.measure,
    "jobs_page": jobs_page.measure,
    "crawlers": crawlers.measure,
    "collect": collect.measure,
    "events": events.measure,
    "partitions": partitions.measure,
    "rollups": rollups.measure,
    "returning_ids": returning_ids.measure,
    "stats_scale": stats_scale.measure,
    "wide_site": wide_site.measure,
}


def measure_on(name: str, build: Build) -> tuple[report.Result, bool]:
    """One module on one build, timed; a failure becomes a row saying so."""
    say(f"== {name} on {build.label}")
    began = time.monotonic()
    try:
        result, ok = MODULES[name](build), True
    except Exception as error:
        traceback.print_exc()
        result, ok = (
            report.Result(name, [report.Row(f"{name}: failed", f"{type(error).__name__}: {error}")]),
            False,
        )
    result.seconds = time.monotonic() - began
    say(f"{name} on {build.label} done in {result.seconds:.0f} s")
    return result, ok


def main(names: list[str]) -> int:
    unknown = [name for name in names if name not in MODULES]
    if unknown:
        print(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(MODULES)}", file=sys.stderr)
        return 2
    if not wrk_available():
        say("wrk is not installed (apt-get install -y wrk): HTTP throughput uses the Python load client")
    chosen = builds()
    labels = [build.label for build in chosen]
    about = report.machine(chosen)  # the load average before the benchmarks add theirs
    started = time.monotonic()
    modules: list[report.Measured] = []
    failed = []
    for name in names or list(MODULES):
        measured: report.Measured = {}
        for build in chosen:
            measured[build.label], ok = measure_on(name, build)
            if not ok:
                failed.append(f"{name} on {build.label}")
        modules.append(measured)
    total = time.monotonic() - started
    report.print_results(modules, labels)
    print(f"\n{total / 60:.1f} min on {about['CPU']} x {about['cores']} cores")
    if failed:
        say(f"failed: {', '.join(failed)}")
    elif not names and "BENCH_BUILDS" not in os.environ:
        report.write(modules, labels, about, total)
        say(f"wrote {report.DOCUMENT.relative_to(report.ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
