"""Daily partitions (migrations/0019): a live table converted by the release step, and ingest on
partitions against the unpartitioned table.

(a) A database at migration 0018 holding CONVERT_VIEWS views over 40 days, while
    `python web.py` takes INGEST_RATE single views/s: the release step (`python -m
    migrations`) applies 0019. Figures: each step's time (the switch is the one that stops
    ingest), the longest request meanwhile against the same load before, views sent and
    stored.
(b) POST /api/pageviews at INGEST_CONNECTIONS connections, as fast as answered (wrk), against
    two `python web.py` on one server: one on a database at 0018 (one table), one on a
    database at 0019 (daily partitions), ROUNDS rounds alternating, medians compared.
(The bytes per view and the rollup's rate: bench/rollups.py.)

$ python -m bench.partitions
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time

import psycopg

import migrations
from bench.harness import (
    Build,
    builds,
    free_port,
    http_load,
    median,
    ms,
    paced_load,
    percentile,
    process,
    say,
    throwaway_server,
)
from bench.report import Result, Row, run_alone, times
from migrations import apply_pending

CONVERT_VIEWS = 5_000_000
INGEST_RATE = 100  # requests/s during the conversion
LOAD_CONNECTIONS = 4
IDLE_SECONDS = 10
INGEST_CONNECTIONS = 16
ROUNDS = 3
ROUND_SECONDS = 10
VIEW = json.dumps({"path": "/pricing", "referrer": "https://example.com/"}).encode()
LOAD_SQL = (
    "INSERT INTO page_views (path, referrer, viewed_at, site, visitor)"
    " SELECT '/page/' || floor(500 * power(random(), 2))::int, 'https://example.com/',"
    "        now() - interval '40 days' + (n + random()) * (interval '40 days' / %(rows)s),"
    "        'default', n %% 20000"
    " FROM generate_series(0, %(rows)s - 1) AS n"
)
STEP_LINE = re.compile(r"migration 0019_page_view_partitions\.sql: (.+) \(attempt (\d+), ([\d.]+) s\)")

DATABASES = ("converted", "one_table", "partitioned")

GOAL_LONGEST_SECONDS = 2.0  # no lock on page_views held longer (issue 19)
GOAL_INGEST = 0.9  # of the unpartitioned table's throughput


def migrate_to(url: str, last: str) -> None:
    """Apply the migrations up to and including `last` (a file name's first four characters)."""
    original = migrations.tally_files
    migrations.tally_files = lambda: [p for p in original() if p.name[:4] <= last]
    try:
        apply_pending(url)
    finally:
        migrations.tally_files = original


class StepLog(logging.Handler):
    """The release's step lines: (title, attempts, seconds) per step."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[tuple[str, int, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = STEP_LINE.search(record.getMessage())
        if found:
            self.steps.append((found.group(1), int(found.group(2)), float(found.group(3))))


def convert_live(url: str) -> dict:
    """Load the table, then apply 0019 under a paced load; what it cost."""
    migrate_to(url, "0018")
    with psycopg.connect(url, autocommit=True) as conn:
        say(f"partitions: loading {CONVERT_VIEWS:,} views into the unpartitioned table")
        conn.execute(LOAD_SQL, {"rows": CONVERT_VIEWS})
        # Not rolled up: the conversion reads no rollup (the rollup of 5M views would take
        # ten minutes a build here, issue 19 part 6), and a view dated past the bound is none.
        conn.execute("VACUUM ANALYZE page_views")
        table_bytes = conn.execute("SELECT pg_total_relation_size('page_views')").fetchone()[0]
    port = free_port()
    with process(["web.py"], {"DATABASE_URL": url, "PORT": str(port)}, ready="Serving on"):
        say(f"partitions: {INGEST_RATE} views/s for {IDLE_SECONDS} s before the release")
        before = paced_load(port, "/api/pageviews", VIEW, LOAD_CONNECTIONS, IDLE_SECONDS, INGEST_RATE)
        done = threading.Event()
        during: list[list[tuple[float, int]]] = []
        load = threading.Thread(
            target=lambda: during.append(
                paced_load(port, "/api/pageviews", VIEW, LOAD_CONNECTIONS, 600, INGEST_RATE, done)
            )
        )
        handler = StepLog()
        logging.getLogger("tally.migrations").addHandler(handler)
        logging.getLogger("tally.migrations").setLevel(logging.INFO)
        load.start()
        try:
            time.sleep(2)
            say("partitions: the release step applies 0019")
            started = time.monotonic()
            apply_pending(url)
            release_seconds = time.monotonic() - started
            time.sleep(2)
        finally:
            done.set()
            load.join()
            logging.getLogger("tally.migrations").removeHandler(handler)
    with psycopg.connect(url, autocommit=True) as conn:
        stored = conn.execute("SELECT count(*) FROM page_views").fetchone()[0]
        kind = conn.execute("SELECT relkind FROM pg_class WHERE oid = 'page_views'::regclass").fetchone()[0]
    sent = [took for took, status in before + during[0] if status == 201]
    refused = len(before) + len(during[0]) - len(sent)
    if kind != "p" or refused or stored != CONVERT_VIEWS + len(sent):
        raise RuntimeError(
            f"conversion: table {kind!r}, {refused} refused, {stored:,} stored of {len(sent):,} sent"
        )
    return {
        "release_seconds": release_seconds,
        "steps": handler.steps,
        "before_max": max(took for took, _ in before),
        "before_p99": percentile([took for took, _ in before], 0.99),
        "during_max": max(took for took, _ in during[0]),
        "during_p99": percentile([took for took, _ in during[0]], 0.99),
        "requests": len(during[0]),
        "table_mb": table_bytes / 1e6,
    }


def ingest_rounds(one_table_url: str, partitioned_url: str) -> tuple[list[float], list[float]]:
    """Requests/s of each web, ROUNDS rounds, alternating."""
    one_port, parts_port = free_port(), free_port()
    one, parts = [], []
    with (
        process(["web.py"], {"DATABASE_URL": one_table_url, "PORT": str(one_port)}, ready="Serving on"),
        process(["web.py"], {"DATABASE_URL": partitioned_url, "PORT": str(parts_port)}, ready="Serving on"),
    ):
        for port in (one_port, parts_port):  # warm-up
            http_load(port, "/api/pageviews", VIEW, INGEST_CONNECTIONS, 3)
        for round_ in range(ROUNDS):
            say(f"partitions: ingest round {round_ + 1} of {ROUNDS}")
            one.append(
                http_load(
                    one_port, "/api/pageviews", VIEW, INGEST_CONNECTIONS, ROUND_SECONDS
                ).requests_per_second
            )
            parts.append(
                http_load(
                    parts_port, "/api/pageviews", VIEW, INGEST_CONNECTIONS, ROUND_SECONDS
                ).requests_per_second
            )
    return one, parts


def measure(build: Build) -> Result:
    result = Result("Partitions")
    with throwaway_server(build) as server_url:
        with psycopg.connect(server_url, autocommit=True) as admin:
            for name in DATABASES:
                admin.execute(f"CREATE DATABASE {name}")  # fixed names, no input
        url = {name: psycopg.conninfo.make_conninfo(server_url, dbname=name) for name in DATABASES}
        converted = convert_live(url["converted"])
        migrate_to(url["one_table"], "0018")
        apply_pending(url["partitioned"])
        one, parts = ingest_rounds(url["one_table"], url["partitioned"])
    switch = next(seconds for title, _, seconds in converted["steps"] if title.startswith("switch"))
    longest_step = max(converted["steps"], key=lambda step: step[2])
    ingest_ratio = median(parts) / median(one)
    result.rows += [
        Row(
            f"release converting {CONVERT_VIEWS / 1e6:g}M live views: the switch (ingest stopped)",
            f"{ms(switch)} (release {converted['release_seconds']:.1f} s)",
            f"longest step: {longest_step[0]!r} {longest_step[2]:.2f} s, ingest not stopped",
            "-",
            f"<= {GOAL_LONGEST_SECONDS:g} s",
            switch <= GOAL_LONGEST_SECONDS,
        ),
        Row(
            f"longest request during the conversion ({INGEST_RATE} views/s)",
            f"{ms(converted['during_max'])} (p99 {ms(converted['during_p99'])})",
            f"before it {ms(converted['before_max'])} (p99 {ms(converted['before_p99'])})",
            "-",
            f"<= {GOAL_LONGEST_SECONDS:g} s",
            converted["during_max"] <= GOAL_LONGEST_SECONDS,
        ),
        Row(
            f"ingest at {INGEST_CONNECTIONS} connections, daily partitions",
            f"{median(parts):,.0f} req/s",
            f"one table {median(one):,.0f} req/s",
            times(ingest_ratio, GOAL_INGEST),
            f">= {GOAL_INGEST:g}x one table",
            ingest_ratio >= GOAL_INGEST,
        ),
    ]
    steps = "; ".join(
        f"{title} {seconds:.3f} s ({attempts} attempt(s))" for title, attempts, seconds in converted["steps"]
    )
    result.notes.append(
        f"Conversion: {CONVERT_VIEWS:,} views ({converted['table_mb']:,.0f} MB with indexes) over 40 days"
        " (500 paths, 20,000 visitor ids, not rolled up) in a database at migration 0018; `python web.py`"
        f" took {INGEST_RATE} views/s over {LOAD_CONNECTIONS} connections ({converted['requests']:,} requests"
        " during the release, every one"
        f" stored once: the count after equals the load plus every 201). Steps: {steps}."
    )
    result.notes.append(
        f"Ingest: two `python web.py` on one server, one on a database at 0018, one at 0019 (empty tables),"
        f" wrk at {INGEST_CONNECTIONS} connections, {ROUNDS} rounds of {ROUND_SECONDS} s alternating after"
        f" a warm-up; every round: one table {', '.join(f'{r:,.0f}' for r in one)}; partitions"
        f" {', '.join(f'{r:,.0f}' for r in parts)} req/s."
    )
    return result


if __name__ == "__main__":
    run_alone(measure, builds())
