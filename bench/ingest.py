"""POST /api/pageviews: one view per request against the HTTP ceiling, 1,000 per request against COPY.

The ceiling is bench/ceiling.py: a Bottle route answering constant JSON on the same
waitress settings, so the ratio says what storing a view costs over serving HTTP at
all. pgbench inserting the same row at the same concurrency stands beside it, and at
the web's own 4 connections, to show what the database alone allows.

$ python -m bench.ingest           # needs wrk (apt-get install -y wrk), else a slower Python client
"""

from __future__ import annotations

import json
import threading
import time

import psycopg

from bench.harness import (
    WRK_THREADS,
    Load,
    busy_since,
    cpu_seconds,
    free_port,
    http_load,
    machine_ticks,
    ms,
    pgbench,
    process,
    say,
    throwaway_database,
)
from bench.report import Result, Row, print_result, times
from tally.config import DEFAULT_WEB_THREADS

CONNECTIONS = 16
SECONDS = 10
WARM_UP_SECONDS = 2
# One request per waitress thread at a time: more connections would only queue.
BATCH_CONNECTIONS = DEFAULT_WEB_THREADS
BATCH_ROWS = 1000
# An alternative worth a row: more waitress threads, and so more database connections.
MORE_THREADS = 16
VIEW = {"path": "/pricing", "referrer": "https://example.com/"}
INSERT_SQL = "INSERT INTO page_views (path, referrer) VALUES ('/pricing', 'https://example.com/');\n"
COPY_SQL = "COPY page_views (path, referrer) FROM STDIN"

GOAL_SINGLE = 0.6  # of the HTTP ceiling
GOAL_BATCH = 0.3  # of COPY


def batch_views() -> list[dict[str, str]]:
    return [
        {"path": f"/page/{index % 50}", "referrer": "https://example.com/"} for index in range(BATCH_ROWS)
    ]


def serve_and_load(
    entry: list[str], url: str, body: bytes, connections: int, extra_env: dict[str, str] | None = None
) -> tuple[Load, float, float]:
    """Serve, warm up, load: the load, the server's CPU per request, the machine's busy share."""
    port = free_port()
    env = {"DATABASE_URL": url, "PORT": str(port), **(extra_env or {})}
    with process(entry, env, ready="Serving on") as server:
        http_load(port, "/api/pageviews", body, connections, WARM_UP_SECONDS)
        cpu_before, ticks_before = cpu_seconds(server.pid), machine_ticks()
        load = http_load(port, "/api/pageviews", body, connections, SECONDS)
        busy = busy_since(ticks_before)
        cpu_per_request = (cpu_seconds(server.pid) - cpu_before) / max(load.requests_per_second * SECONDS, 1)
    if load.failures:
        raise RuntimeError(f"{entry}: {load.failures} requests failed under load")
    return load, cpu_per_request, busy


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


def measure() -> Result:
    result = Result("POST /api/pageviews")
    one = json.dumps(VIEW).encode()
    batch = json.dumps(batch_views()).encode()
    with throwaway_database() as url:
        say(f"ingest: HTTP ceiling (bench/ceiling.py), {CONNECTIONS} connections")
        ceiling, ceiling_cpu, ceiling_busy = serve_and_load(["-m", "bench.ceiling"], url, one, CONNECTIONS)
        say("ingest: Tally, one view per request")
        single, single_cpu, single_busy = serve_and_load(["web.py"], url, one, CONNECTIONS)
        say(f"ingest: pgbench, the same row, {CONNECTIONS} and {DEFAULT_WEB_THREADS} connections and 1")
        bench_same = pgbench(url, INSERT_SQL, CONNECTIONS, SECONDS)
        bench_pool = pgbench(url, INSERT_SQL, DEFAULT_WEB_THREADS, SECONDS)
        bench_one = pgbench(url, INSERT_SQL, 1, SECONDS / 2)
        say(f"ingest: ceiling and Tally at WEB_THREADS={MORE_THREADS}")
        threads_env = {"WEB_THREADS": str(MORE_THREADS)}
        ceiling_more, _, _ = serve_and_load(["-m", "bench.ceiling"], url, one, CONNECTIONS, threads_env)
        single_more, single_more_cpu, _ = serve_and_load(["web.py"], url, one, CONNECTIONS, threads_env)
        say(f"ingest: Tally, {BATCH_ROWS:,} views per request, {BATCH_CONNECTIONS} connections")
        batched, _, _ = serve_and_load(["web.py"], url, batch, BATCH_CONNECTIONS)
        say(f"ingest: COPY of the same rows, {BATCH_CONNECTIONS} connections")
        copy_rate = copy_rows_per_second(url, batch_views(), BATCH_CONNECTIONS, SECONDS)

    single_ratio = single.requests_per_second / ceiling.requests_per_second
    more_ratio = single_more.requests_per_second / ceiling_more.requests_per_second
    batch_rate = batched.requests_per_second * BATCH_ROWS
    batch_ratio = batch_rate / copy_rate
    result.rows += [
        Row(
            f"POST /api/pageviews, 1 view, {CONNECTIONS} connections (p50 / p99)",
            f"{single.requests_per_second:,.0f} req/s ({ms(single.p50)} / {ms(single.p99)})",
            f"ceiling {ceiling.requests_per_second:,.0f} req/s;"
            f" pgbench same row {bench_same.transactions_per_second:,.0f}/s",
            times(single_ratio),
            f">= {GOAL_SINGLE}x ceiling",
            single_ratio >= GOAL_SINGLE,
        ),
        Row(
            f"  the same at WEB_THREADS={MORE_THREADS} (not the default)",
            f"{single_more.requests_per_second:,.0f} req/s ({ms(single_more.p50)} / {ms(single_more.p99)})",
            f"ceiling {ceiling_more.requests_per_second:,.0f} req/s",
            times(more_ratio),
        ),
        Row(
            f"  pgbench same row, {DEFAULT_WEB_THREADS} connections (the web's pool) / 1",
            "-",
            f"{bench_pool.transactions_per_second:,.0f}/s / {bench_one.transactions_per_second:,.0f}/s"
            f" ({ms(bench_one.latency)} a commit)",
        ),
        Row(
            f"batch ingest, {BATCH_ROWS:,} views per request, {BATCH_CONNECTIONS} connections",
            f"{batch_rate:,.0f} rows/s ({ms(batched.p50)} a request)",
            f"COPY {copy_rate:,.0f} rows/s",
            times(batch_ratio),
            f">= {GOAL_BATCH}x COPY",
            batch_ratio >= GOAL_BATCH,
        ),
    ]
    result.notes += [
        f"Load: {single.tool}, {WRK_THREADS} threads, {CONNECTIONS} keep-alive connections, {SECONDS} s"
        f" after {WARM_UP_SECONDS} s of warm-up, on the same 2 cores as waitress and PostgreSQL."
        f" pgbench: {CONNECTIONS} clients, 2 threads, one INSERT per transaction. COPY: {BATCH_CONNECTIONS}"
        f" threads, one COPY of {BATCH_ROWS:,} rows and a commit per batch.",
        f"CPU per request in the serving process: Tally {single_cpu * 1000:.2f} ms, ceiling"
        f" {ceiling_cpu * 1000:.2f} ms (at WEB_THREADS={MORE_THREADS}: {single_more_cpu * 1000:.2f} ms);"
        f" machine busy {single_busy:.0%} under Tally's load, {ceiling_busy:.0%} under the ceiling's.",
    ]
    if single_ratio < GOAL_SINGLE:
        web_cores = single_cpu * single.requests_per_second
        ceiling_cores = ceiling_cpu * ceiling.requests_per_second
        result.notes.append(
            "What bounds one view per request: the one web process, not PostgreSQL. It used"
            f" {web_cores:.2f} cores ({single_cpu * 1000:.2f} ms of CPU a request,"
            f" {single_cpu / max(ceiling_cpu, 1e-9):.1f}x the ceiling's), as much as one Python process"
            f" with one GIL gets here (the ceiling's used {ceiling_cores:.2f}), while pgbench inserts the"
            f" same row {bench_same.transactions_per_second:,.0f}/s on {CONNECTIONS} connections and"
            f" {bench_pool.transactions_per_second:,.0f}/s on the web's {DEFAULT_WEB_THREADS}"
            f" ({ms(bench_one.latency)} a lone commit). Each view costs the web two round trips of"
            " psycopg on its connection (the pool's check on checkout, then the autocommitted"
            " INSERT), each taking the GIL back from waitress's main thread, which itself spins"
            f" while requests queue for the {DEFAULT_WEB_THREADS} threads: the ceiling with"
            f" {MORE_THREADS} threads serves"
            f" {ceiling_more.requests_per_second / ceiling.requests_per_second:.1f}x as many."
            " What would lift it: no pool check on every checkout (one round trip, not two, at the"
            " price of one 503 per stale connection after a database restart), one INSERT for the"
            " views of concurrent requests (a writer thread that batches them and answers each"
            " request after the shared commit), and more web processes (each is one GIL): scale web"
            " dynos, not WEB_THREADS, which costs a database"
            " connection each."
        )
    return result


if __name__ == "__main__":
    print_result(measure())
