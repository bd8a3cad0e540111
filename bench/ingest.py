"""POST /api/pageviews: one view per request at 4, 16 and 64 connections, 1,000 per request against COPY.

Tally is `python web.py` with its defaults (WEB_THREADS 16 on WEB_POOL_SIZE 4
connections, group commit, tally.web.serving's waitress). Its baselines, all in the same run:

- the HTTP ceiling (bench/ceiling.py): constant JSON served exactly as web.py serves
  Tally, so the ratio says what storing a view costs over serving HTTP at all;
- web.py at 4 connections, for how throughput holds up as connections grow;
- pgbench inserting the same row, at 16 connections, the web's 4 and 1: what the
  database alone allows;
- what each change of the web buys, each measured beside the default: web.py without
  group commit, without group commit's commit delay, and on plain `waitress.serve`
  (bench/web_variant.py), web.py at WEB_THREADS=4 (a thread per connection), and the
  ceiling on plain `waitress.serve`.

wrk shares the 2 cores with waitress and PostgreSQL, and waitress's throughput on them
varies from run to run (at times by half, on plain waitress): each figure is the median
of RUNS runs after a warm-up, and the notes list every run.

$ python -m bench.ingest           # needs wrk (apt-get install -y wrk), else a slower Python client
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import psycopg

from bench.harness import (
    WRK_THREADS,
    Build,
    Load,
    builds,
    busy_since,
    cpu_seconds,
    free_port,
    http_load,
    machine_ticks,
    main_thread_cpu_seconds,
    ms,
    pgbench,
    process,
    say,
    throwaway_database,
)
from bench.report import Result, Row, run_alone, times
from tally.config import DEFAULT_WEB_POOL_SIZE, DEFAULT_WEB_THREADS

LEVELS = (4, 16, 64)  # wrk connections, one view per request
CEILING_LEVEL = 16
RUNS = 3  # runs per figure, the median reported
RUN_SECONDS = 5
WARM_UP_SECONDS = 3
# Batches: one request per database connection of the web's pool, as many COPY clients.
BATCH_CONNECTIONS = DEFAULT_WEB_POOL_SIZE
BATCH_ROWS = 1000
BATCH_SECONDS = 10
FEWER_THREADS = DEFAULT_WEB_POOL_SIZE  # WEB_THREADS as before group commit: one per connection
VIEW = {"path": "/pricing", "referrer": "https://example.com/"}
INSERT_SQL = "INSERT INTO page_views (path, referrer) VALUES ('/pricing', 'https://example.com/');\n"
COPY_SQL = "COPY page_views (path, referrer) FROM STDIN"
# Views stored since `id`, and the transactions (autocommitted INSERTs) that stored them.
INSERTS_SQL = "SELECT count(*), count(DISTINCT recorded_xid) FROM page_views WHERE id > %s"
WEB = ["web.py"]
UNGROUPED = ["-m", "bench.web_variant", "--no-group-commit"]
UNDELAYED = ["-m", "bench.web_variant", "--no-commit-delay"]
PLAIN_WEB = ["-m", "bench.web_variant", "--plain-waitress"]
CEILING = ["-m", "bench.ceiling"]
PLAIN_CEILING = ["-m", "bench.ceiling", "--plain"]

GOAL_SINGLE = 0.6  # req/s at 16 connections, of the HTTP ceiling at 16
GOAL_SCALING = 0.8  # req/s at 64 connections, of req/s at 4
GOAL_BATCH = 0.3  # of COPY


@dataclasses.dataclass(frozen=True)
class Level:
    """One server at one number of connections: the median run, and what it cost the server."""

    load: Load  # the run with the median req/s
    rates: list[float]  # req/s of every run
    cpu_per_request: float  # seconds of the serving process's CPU
    main_cpu_per_request: float  # of which waitress's main thread (reads, parses, queues)
    busy: float  # share of the machine's cores busy
    views_per_insert: float | None  # None when nothing was stored

    @property
    def rate(self) -> float:
        return self.load.requests_per_second

    def spread(self) -> str:
        return " / ".join(f"{rate:,.0f}" for rate in self.rates)


def batch_views() -> list[dict[str, str]]:
    return [
        {"path": f"/page/{index % 50}", "referrer": "https://example.com/"} for index in range(BATCH_ROWS)
    ]


def serve_and_load(
    entry: list[str],
    url: str,
    body: bytes,
    levels: tuple[int, ...],
    extra_env: dict[str, str] | None = None,
    runs: int = RUNS,
    seconds: float = RUN_SECONDS,
) -> dict[int, Level]:
    """Serve `entry` once; at each number of connections, warm up, then `runs` wrk runs."""
    port = free_port()
    env = {"DATABASE_URL": url, "PORT": str(port), **(extra_env or {})}
    measured = {}
    with process(entry, env, ready="Serving on") as server, psycopg.connect(url, autocommit=True) as conn:
        for connections in levels:
            http_load(port, "/api/pageviews", body, connections, WARM_UP_SECONDS)
            last_id = conn.execute("SELECT coalesce(max(id), 0) FROM page_views").fetchone()[0]
            cpu_before, ticks_before = cpu_seconds(server.pid), machine_ticks()
            main_before = main_thread_cpu_seconds(server.pid)
            loads = [http_load(port, "/api/pageviews", body, connections, seconds) for _ in range(runs)]
            busy = busy_since(ticks_before)
            cpu = cpu_seconds(server.pid) - cpu_before
            main_cpu = main_thread_cpu_seconds(server.pid) - main_before
            views, inserts = conn.execute(INSERTS_SQL, (last_id,)).fetchone()
            failures = sum(load.failures for load in loads)
            if failures:
                raise RuntimeError(f"{entry}: {failures} requests failed at {connections} connections")
            requests = sum(load.requests_per_second * seconds for load in loads)
            by_rate = sorted(loads, key=lambda load: load.requests_per_second)
            measured[connections] = Level(
                by_rate[len(by_rate) // 2],
                [load.requests_per_second for load in loads],
                cpu / max(requests, 1),
                main_cpu / max(requests, 1),
                busy,
                views / inserts if inserts else None,
            )
            say(f"ingest: {' '.join(entry)} at {connections}: {measured[connections].spread()} req/s")
    return measured


def copy_rows_per_second(url: str, rows: list[dict[str, str]], connections: int, seconds: float) -> float:
    """COPY the same rows, one COPY and commit per batch, from `connections` threads for `seconds`."""
    data = "".join(f"{row['path']}\t{row['referrer']}\n" for row in rows).encode()
    copied = [0] * connections
    stop_at = time.monotonic() + seconds

    def client(index: int) -> None:
        with psycopg.connect(url) as conn:
            while time.monotonic() < stop_at:
                with conn.cursor() as cur, cur.copy(COPY_SQL) as copy:
                    copy.write(data)
                conn.commit()
                copied[index] += len(rows)

    threads = [threading.Thread(target=client, args=(index,)) for index in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(copied) / seconds


def latency(level: Level) -> str:
    return f"{level.rate:,.0f} req/s ({ms(level.load.p50)} / {ms(level.load.p99)})"


def gain(better: Level, worse: Level) -> str:
    return times(better.rate / worse.rate)


def cpu_ms(level: Level) -> str:
    """CPU a request in the serving process, and the share of waitress's main thread."""
    return f"{level.cpu_per_request * 1000:.2f} ms ({level.main_cpu_per_request * 1000:.2f} main thread)"


def measure(build: Build) -> Result:
    result = Result("POST /api/pageviews")
    one = json.dumps(VIEW).encode()
    batch = json.dumps(batch_views()).encode()
    low, mid, high = LEVELS
    with throwaway_database(build) as url:
        say(f"ingest: the HTTP ceiling (bench/ceiling.py) at {low}, {CEILING_LEVEL} and {high} connections")
        ceiling = serve_and_load(CEILING, url, one, (low, CEILING_LEVEL, high))
        say(f"ingest: python web.py, one view per request, at {', '.join(map(str, LEVELS))} connections")
        tally = serve_and_load(WEB, url, one, LEVELS)
        say(
            "ingest: what each change buys: no group commit, no commit delay, plain waitress,"
            " one thread a connection"
        )
        ungrouped = serve_and_load(UNGROUPED, url, one, (mid, high))
        undelayed = serve_and_load(UNDELAYED, url, one, LEVELS)
        plain_web = serve_and_load(PLAIN_WEB, url, one, LEVELS)
        fewer = serve_and_load(WEB, url, one, (mid,), {"WEB_THREADS": str(FEWER_THREADS)})
        plain = serve_and_load(PLAIN_CEILING, url, one, (mid, high))
        say(f"ingest: pgbench, the same row, {mid}, {DEFAULT_WEB_POOL_SIZE} and 1 connections")
        bench_same = pgbench(build, url, INSERT_SQL, mid, RUN_SECONDS)
        bench_pool = pgbench(build, url, INSERT_SQL, DEFAULT_WEB_POOL_SIZE, RUN_SECONDS)
        bench_one = pgbench(build, url, INSERT_SQL, 1, RUN_SECONDS)
        say(f"ingest: {BATCH_ROWS:,} views per request, {BATCH_CONNECTIONS} connections, and COPY")
        batched = serve_and_load(WEB, url, batch, (BATCH_CONNECTIONS,), runs=1, seconds=BATCH_SECONDS)
        copy_rate = copy_rows_per_second(url, batch_views(), BATCH_CONNECTIONS, BATCH_SECONDS)

    single_ratio = tally[mid].rate / ceiling[CEILING_LEVEL].rate
    scaling = tally[high].rate / tally[low].rate
    batch_rate = batched[BATCH_CONNECTIONS].rate * BATCH_ROWS
    batch_ratio = batch_rate / copy_rate
    result.rows += [
        Row(
            f"POST 1 view, {low} connections (p50 / p99)",
            latency(tally[low]),
            f"ceiling {ceiling[low].rate:,.0f} req/s",
            times(tally[low].rate / ceiling[low].rate),
        ),
        Row(
            f"POST 1 view, {mid} connections (p50 / p99)",
            latency(tally[mid]),
            f"ceiling {ceiling[CEILING_LEVEL].rate:,.0f} req/s",
            times(single_ratio, GOAL_SINGLE),
            f">= {GOAL_SINGLE}x ceiling",
            single_ratio >= GOAL_SINGLE,
        ),
        Row(
            f"POST 1 view, {high} connections (p50 / p99)",
            latency(tally[high]),
            f"{low} connections {tally[low].rate:,.0f} req/s",
            times(scaling, GOAL_SCALING),
            f">= {GOAL_SCALING}x at {low}",
            scaling >= GOAL_SCALING,
        ),
        Row(
            f"  views per INSERT at {low} / {mid} / {high} connections (group commit)",
            " / ".join(f"{tally[level].views_per_insert:.1f}" for level in LEVELS),
            "without group commit 1.0",
        ),
        Row(
            f"  without group commit (bench/web_variant.py), {mid} / {high} connections",
            f"{ungrouped[mid].rate:,.0f} / {ungrouped[high].rate:,.0f} req/s",
            f"group commit {tally[mid].rate:,.0f} / {tally[high].rate:,.0f} req/s",
            f"{gain(tally[mid], ungrouped[mid])} / {gain(tally[high], ungrouped[high])} for group commit",
        ),
        Row(
            f"  without the commit delay, {low} / {mid} / {high} connections (views per INSERT)",
            " / ".join(f"{undelayed[level].rate:,.0f}" for level in LEVELS)
            + " req/s ("
            + " / ".join(f"{undelayed[level].views_per_insert:.1f}" for level in LEVELS)
            + ")",
            "with it " + " / ".join(f"{tally[level].rate:,.0f}" for level in LEVELS) + " req/s",
            " / ".join(gain(tally[level], undelayed[level]) for level in LEVELS) + " for the delay",
        ),
        Row(
            f"  on plain waitress.serve, {low} / {mid} / {high} connections",
            " / ".join(f"{plain_web[level].rate:,.0f}" for level in LEVELS) + " req/s",
            "tally.web.serving " + " / ".join(f"{tally[level].rate:,.0f}" for level in LEVELS) + " req/s",
            " / ".join(gain(tally[level], plain_web[level]) for level in LEVELS) + " for the GIL hand-off",
        ),
        Row(
            f"  at WEB_THREADS={FEWER_THREADS} (a thread a connection), {mid} connections",
            f"{fewer[mid].rate:,.0f} req/s",
            f"WEB_THREADS={DEFAULT_WEB_THREADS} {tally[mid].rate:,.0f} req/s",
            f"{times(tally[mid].rate / fewer[mid].rate)} for {DEFAULT_WEB_THREADS} threads",
        ),
        Row(
            f"  the ceiling on plain waitress.serve, {mid} / {high} connections",
            f"{plain[mid].rate:,.0f} / {plain[high].rate:,.0f} req/s",
            f"tally.web.serving {ceiling[mid].rate:,.0f} / {ceiling[high].rate:,.0f} req/s",
            f"{gain(ceiling[mid], plain[mid])} / {gain(ceiling[high], plain[high])} for the GIL hand-off",
        ),
        Row(
            f"  pgbench same row, {mid} / {DEFAULT_WEB_POOL_SIZE} (the web's pool) / 1 connections",
            "-",
            f"{bench_same.transactions_per_second:,.0f} / {bench_pool.transactions_per_second:,.0f}"
            f" / {bench_one.transactions_per_second:,.0f}/s ({ms(bench_one.latency)} a commit)",
        ),
        Row(
            f"batch ingest, {BATCH_ROWS:,} views per request, {BATCH_CONNECTIONS} connections",
            f"{batch_rate:,.0f} rows/s ({ms(batched[BATCH_CONNECTIONS].load.p50)} a request)",
            f"COPY {copy_rate:,.0f} rows/s",
            times(batch_ratio, GOAL_BATCH),
            f">= {GOAL_BATCH}x COPY",
            batch_ratio >= GOAL_BATCH,
        ),
    ]
    result.notes += [
        f"Load: {tally[mid].load.tool}, {WRK_THREADS} threads, keep-alive connections, on the same 2 cores as"
        f" waitress and PostgreSQL; {WARM_UP_SECONDS} s of warm-up at each number of connections, then"
        f" {RUNS} runs of {RUN_SECONDS} s, the median shown. pgbench:"
        f" {RUN_SECONDS} s, one INSERT per transaction, {WRK_THREADS} threads. Batches and COPY:"
        f" {BATCH_CONNECTIONS} connections for {BATCH_SECONDS} s, one COPY of {BATCH_ROWS:,} rows and a"
        " commit per batch. Views per INSERT: the views stored during the runs over the distinct"
        " transaction ids that stored them (each INSERT autocommits).",
        "Every run, req/s: "
        + "; ".join(
            f"{name} at {level}: {levels[level].spread()}"
            for name, levels in (
                ("web.py", tally),
                ("the ceiling", ceiling),
                ("without group commit", ungrouped),
                ("without the commit delay", undelayed),
                ("web.py on plain waitress", plain_web),
                (f"WEB_THREADS={FEWER_THREADS}", fewer),
                ("the ceiling on plain waitress", plain),
            )
            for level in levels
        )
        + ".",
        "CPU a request in the serving process, of which waitress's main thread: Tally "
        + ", ".join(f"at {level} {cpu_ms(tally[level])}" for level in LEVELS)
        + f"; at {mid}: on plain waitress {cpu_ms(plain_web[mid])}, without group commit"
        f" {cpu_ms(ungrouped[mid])}, without the commit delay {cpu_ms(undelayed[mid])},"
        f" the ceiling {cpu_ms(ceiling[CEILING_LEVEL])} (on plain waitress"
        f" {cpu_ms(plain[mid])}). Machine busy at {mid}: {tally[mid].busy:.0%} under Tally's load,"
        f" {ceiling[CEILING_LEVEL].busy:.0%} under the ceiling's.",
    ]
    if single_ratio < GOAL_SINGLE:
        web, top = tally[mid], ceiling[CEILING_LEVEL]
        result.notes.append(
            f"What bounds one view per request at {mid} connections: CPU in the one web process, not the"
            f" database. The web used {web.cpu_per_request * web.rate:.2f} cores and the ceiling"
            f" {top.cpu_per_request * top.rate:.2f}, about what one Python process gets here (its threads run"
            f" Python one at a time, on one GIL); at that, req/s is set by the CPU a request, Tally's"
            f" {web.cpu_per_request * 1000:.2f} ms against the ceiling's {top.cpu_per_request * 1000:.2f}"
            f" ({web.cpu_per_request / top.cpu_per_request:.1f}x; waitress's main thread"
            f" {web.main_cpu_per_request * 1000:.2f} ms of it, the ceiling's"
            f" {top.main_cpu_per_request * 1000:.2f}). The database had room: {web.views_per_insert:.1f}"
            f" views per INSERT meant {web.rate / web.views_per_insert:,.0f} INSERTs a second, where pgbench"
            f" commits {bench_pool.transactions_per_second:,.0f} a second on the web's"
            f" {DEFAULT_WEB_POOL_SIZE} connections. What would lift it: less Python a request (the request"
            " thread's parsing, validating and hand-offs; waitress's main thread), or more web processes,"
            " each its own GIL."
        )
    if scaling < GOAL_SCALING:
        result.notes.append(
            f"At {high} connections: {tally[high].rate:,.0f} req/s against {tally[low].rate:,.0f} at {low},"
            f" p99 {ms(tally[high].load.p99)}; the ceiling at {high} answered {ceiling[high].rate:,.0f}"
            f" req/s (plain waitress {plain[high].rate:,.0f})."
        )
    return result


if __name__ == "__main__":
    run_alone(measure, builds())
