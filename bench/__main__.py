"""`python -m bench` (`make bench`): every benchmark, one table, docs/BENCHMARKS.md.

Each module makes its own throwaway PostgreSQL, loads its data with SQL, starts the
real processes and measures each figure beside its baseline in the same run. A module
that fails is reported and the others still run; the document is written only when all
of them ran, and the exit status says whether they did (goals missed do not fail it:
benchmarks are not tests).

$ python -m bench                  # everything, about 10 minutes on 2 cores
$ python -m bench pickup cleanup   # some modules; prints, leaves docs/BENCHMARKS.md alone
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable

from bench import cleanup, footprint, ingest, pickup, report, stats, throughput
from bench.harness import say, wrk_available

# In the order, which is the table's.
MODULES: dict[str, Callable[[], report.Result]] = {
    "stats": stats.measure,
    "ingest": ingest.measure,
    "pickup": pickup.measure,
    "throughput": throughput.measure,
    "cleanup": cleanup.measure,
    "footprint": footprint.measure,
}


def main(names: list[str]) -> int:
    unknown = [name for name in names if name not in MODULES]
    if unknown:
        print(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(MODULES)}", file=sys.stderr)
        return 2
    if not wrk_available():
        say("wrk is not installed (apt-get install -y wrk): HTTP throughput uses the Python load client")
    about = report.machine()  # the load average before the benchmarks add theirs
    started = time.monotonic()
    results, failed = [], []
    for name in names or list(MODULES):
        began = time.monotonic()
        try:
            result = MODULES[name]()
        except Exception as error:
            traceback.print_exc()
            failed.append(name)
            result = report.Result(name, [report.Row(f"{name}: failed", f"{type(error).__name__}: {error}")])
        result.seconds = time.monotonic() - began
        say(f"{name} done in {result.seconds:.0f} s")
        results.append(result)
    total = time.monotonic() - started
    print(report.table([row for result in results for row in result.rows]))
    for result in results:
        for note in result.notes:
            print(f"- {result.name}: {note}")
    print(f"\n{total / 60:.1f} min on {about['CPU']} x {about['cores']} cores")
    if not names and not failed:
        report.write(results, about, total)
        say(f"wrote {report.DOCUMENT.relative_to(report.ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
