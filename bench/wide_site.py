"""A site whose paths carry ids (session 54): a window read after each rollup, its settled days
kept and its other days ranked, against the same window read whole at the same state.

SIZE views over 30 days on one site, each its own visitor id, 19 of 20 on a path of its own
(`/order/<n>`) and the rest on 50 pages, a third with a referrer among 20,000 domains (skewed),
rolled up once. Then, ROUNDS times: 1,000 views on new paths arrive (half from ids already
seen), a rollup, and one stats request of the window through a `StatsReader` kept from round to
round (Tally), and one through a fresh reader that reads the window whole (the baseline: what
such a site's reads were before, `WholeReads`). The first round's requests are each reader's
first answer.

$ python -m bench wide_site
$ BENCH_WIDE_VIEWS=200000 python -m bench wide_site   # a smaller site
"""

from __future__ import annotations

import os
import time
from typing import Any

import psycopg
import psycopg_pool

from bench.harness import Build, make_day_partitions, median, ms, say, throwaway_server
from bench.report import Result, Row, times
from migrations import apply_pending
from tally.web.rolled_up import RolledUp
from tally.web.stats import SettledDays, StatsReader

SIZE = int(os.environ.get("BENCH_WIDE_VIEWS", "600000"))
SITE = "wide.example"
ROUNDS = 7  # the first gives the first answers; the median of the other six
WINDOWS = (30, 7)
LOAD = """
INSERT INTO page_views (site, path, referrer, visitor, country, browser, os, device, viewed_at)
SELECT %(site)s, CASE WHEN n %% 20 = 0 THEN '/page/' || (n / 20) %% 50 ELSE '/order/' || n END,
       CASE WHEN n %% 3 = 0
            THEN 'https://ref' || floor(20000 * power(((n * 7919) %% 100003) / 100003.0, 3))::int
                 || '.example/x' END,
       n, chr((65 + n %% 26)::int) || chr((65 + (n / 26) %% 4)::int), 'Browser' || n %% 30, 'O' || n %% 12,
       (ARRAY['desktop', 'phone', 'tablet'])[1 + n %% 3],
       now() - (n::float8 / %(rows)s) * interval '30 days'
  FROM generate_series(1::bigint, %(rows)s) n
"""
ARRIVING = """
INSERT INTO page_views (site, path, referrer, visitor, country, browser, os, device, viewed_at)
SELECT %(site)s, '/order/new' || n, CASE WHEN n %% 3 = 0 THEN 'https://ref' || n %% 20000 || '.example/' END,
       CASE WHEN n %% 2 = 0 THEN n ELSE %(rows)s - n %% 500 END,
       'US', 'Browser' || n %% 30, 'O' || n %% 12, 'desktop', now() - (n %% 1000) * interval '120 ms'
  FROM generate_series(%(first)s::bigint, %(first)s::bigint + 999) n
"""


class WholeReads(StatsReader):
    """The baseline: every window read whole at each rollup state, its settled days not known
    (as such a site's windows were read before session 54)."""

    def _rolled_up(self, cur: psycopg.Cursor, state: tuple, _settled: SettledDays, *rest: Any) -> RolledUp:
        return super()._rolled_up(cur, state, SettledDays(None, None), *rest)


def timed(reader: StatsReader, days: int) -> float:
    started = time.perf_counter()
    reader.stats_for_window(days, site=SITE)
    return time.perf_counter() - started


def reads(url: str, days: int) -> dict[str, float]:
    """The first answers and the median read after a rollup, kept reader against whole reads."""
    kept_reader: list[float] = []
    whole: list[float] = []
    with (
        psycopg_pool.ConnectionPool(url, min_size=1, max_size=2, kwargs={"autocommit": True}) as pool,
        psycopg.connect(url, autocommit=True) as conn,
    ):
        reader = StatsReader(pool, retention_days=60)
        (first,) = conn.execute("SELECT max(visitor) + 1 FROM page_views").fetchone()
        for round_ in range(ROUNDS):
            if round_:
                conn.execute(ARRIVING, {"site": SITE, "rows": SIZE, "first": first + 1000 * round_})
                conn.execute("SELECT tally_rollup_page_views()")
            kept_reader.append(timed(reader, days))
            whole.append(timed(WholeReads(pool, retention_days=60), days))
    return {
        "first": kept_reader[0],
        "first whole": whole[0],
        "after": median(kept_reader[1:]),
        "after whole": median(whole[1:]),
    }


def measure(build: Build) -> Result:
    result = Result("A wide site's windows")
    with throwaway_server(build) as url:
        apply_pending(url)
        with psycopg.connect(url, autocommit=True) as conn:
            say(f"wide_site: {SIZE:,} views, each path its own but for 50 pages")
            make_day_partitions(conn, 31)
            conn.execute(LOAD, {"site": SITE, "rows": SIZE})
            started = time.perf_counter()
            conn.execute("SELECT tally_rollup_page_views()")
            say(f"wide_site: rolled up in {time.perf_counter() - started:.0f} s")
            conn.execute("VACUUM ANALYZE")
        measured = {days: reads(url, days) for days in WINDOWS}
    label = f"{SIZE / 1e6:g}M views, a path each"
    for days, found in measured.items():
        result.rows.append(
            Row(
                f"stats read after each rollup, {days} days, {label}",
                ms(found["after"]),
                f"read whole {ms(found['after whole'])}",
                times(found["after whole"] / found["after"]) + " faster",
            )
        )
        result.rows.append(
            Row(
                f"  its first answer, {days} days",
                ms(found["first"]),
                f"read whole {ms(found['first whole'])}",
                times(found["first"] / found["first whole"]),
            )
        )
    result.notes.append(
        f"How: bench/wide_site.py; {ROUNDS - 1} rounds of 1,000 views on new paths and a rollup, each"
        " followed by one request of the window through a StatsReader kept across rounds (its settled"
        " days read once, its other days ranked) and one through a fresh reader reading it whole; the"
        " medians. The first answers: the first round's."
    )
    return result
