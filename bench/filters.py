"""GET /api/stats with filters (issue 17), on views with realistic cardinalities.

SIZE views over 30 days, all rolled up but a short tail, on thousands of paths (skewed),
hundreds of referring domains, ~100 countries, ~50 browser families, 20 systems, 4
devices, a few campaigns; about 3 views per visitor a day. `python web.py` alone answers:
- unfiltered (the rollups), against the naive GROUP BYs of every panel over page_views;
- one filter, on the busiest value and on a middling one of a dimension, and two together,
  each against the same answer computed naively (every panel's views and visitors over
  the matching raw views) in the same run. Each filtered answer is asked for first with
  nothing kept (counted whole, in chunks of ids when large), then again and again at rest,
  then while ARRIVING_PER_SECOND views a second arrive: the web carries its kept answer
  forward by the ids that changed (tally/web/carried.py).

$ python -m bench filters
$ BENCH_FILTER_VIEWS=1000000 python -m bench filters   # a smaller load
$ BENCH_FILTER_CASES=unfiltered python -m bench filters   # only the cases whose label starts so
"""

from __future__ import annotations

import contextlib
import http.client
import os
import threading
import time
import urllib.parse
from collections.abc import Iterator

import psycopg

from bench.harness import (
    OWNER,
    Build,
    free_port,
    make_day_partitions,
    median,
    ms,
    percentile,
    process,
    say,
    throwaway_database,
    time_http_get,
)
from bench.report import Result, Row, times

SIZE = int(os.environ.get("BENCH_FILTER_VIEWS", "3000000"))
CASES = tuple(filter(None, os.environ.get("BENCH_FILTER_CASES", "").split(",")))
REQUESTS = 40
NAIVE_RUNS = 3 if SIZE <= 1_000_000 else 1  # the naive panels take over a minute at 3M
GOAL_UNFILTERED_SECONDS = 0.010
GOAL_ONE_FILTER_SECONDS = 0.050
GOAL_TWO_FILTERS_SECONDS = 0.100
# Skewed choices: index = floor(n * random()^k), so value 0 is the busiest.
LOAD = """
INSERT INTO page_views (site, path, referrer, source, medium, campaign, country, browser, os, device,
                        visitor, viewed_at)
SELECT 'example.com',
       '/page/' || floor(5000 * power(random(), 3))::int,
       CASE WHEN r < 0.25 THEN 'https://ref' || floor(300 * power(random(), 3))::int || '.example.net/a' END,
       CASE WHEN r < 0.08 THEN 'source' || floor(30 * power(random(), 2))::int END,
       CASE WHEN r < 0.06 THEN (ARRAY['email', 'social', 'cpc'])[1 + floor(3 * random())::int] END,
       CASE WHEN r < 0.04 THEN 'campaign' || floor(20 * power(random(), 2))::int END,
       chr(65 + (c %% 26)) || chr(65 + (c / 26) %% 26),
       'Browser' || floor(50 * power(b, 4))::int,
       'System' || floor(20 * power(b, 3))::int,
       (ARRAY['phone', 'tablet', 'laptop', 'desktop'])[1 + floor(4 * b)::int %% 4],
       visitor,
       now() - interval '30 days' + (n + random()) * (interval '30 days' / %(rows)s)
  FROM (SELECT n, random() AS r, n / 3 AS visitor,
               floor(100 * power((hashint8((n / 3)::bigint) + 2147483648.0) / 4294967296.0, 4))::int AS c,
               (hashint8((n / 3 + 7)::bigint) + 2147483648.0) / 4294967296.0 AS b
          FROM generate_series(0, %(rows)s - 1) AS n) drawn
"""
# A live site's views while the filtered answers are read again (a site of 3M views a month
# takes about 1 a second); each is counted into the answers kept since (tally/web/carried.py).
ARRIVING_PER_SECOND = 20
ARRIVE = """
INSERT INTO page_views (site, path, referrer, source, medium, campaign, country, browser, os, device,
                        visitor, viewed_at)
SELECT site, path, referrer, source, medium, campaign, country, browser, os, device,
       CASE WHEN random() < 0.5 THEN visitor ELSE 1000000000 + floor(random() * 1e12)::bigint END, now()
  FROM page_views WHERE viewed_at > now() - interval '1 hour' ORDER BY random() LIMIT 1
"""
# And one event in ten ticks, of a sender of the last hour's (none where the load has no events).
ARRIVE_EVENT = """
INSERT INTO events (site, name, path, visitor, props, occurred_at)
SELECT site, name, path, visitor, props, now()
  FROM events WHERE occurred_at > now() - interval '1 hour' ORDER BY random() LIMIT 1
"""
FIRST_ANSWER_TIMEOUT = 300
NAIVE_PANEL = """
SELECT {column}, count(*), count(DISTINCT ((viewed_at AT TIME ZONE 'UTC')::date, visitor)) FROM page_views
 WHERE viewed_at >= (now() AT TIME ZONE 'UTC')::date - 29 {where} GROUP BY 1 ORDER BY 2 DESC LIMIT 10
"""
PANEL_COLUMNS = ("path", "referrer", "source", "medium", "campaign", "country", "browser", "os", "device")


def load(conn: psycopg.Connection) -> None:
    say(f"filters: loading {SIZE:,} views")
    started = time.perf_counter()
    make_day_partitions(conn, 31)
    conn.execute(LOAD, {"rows": SIZE})
    conn.execute("VACUUM ANALYZE page_views")
    say(f"filters: loaded in {time.perf_counter() - started:.0f} s; rolling up")
    started = time.perf_counter()
    conn.execute("SELECT tally_rollup_page_views()")
    say(f"filters: rolled up in {time.perf_counter() - started:.0f} s")
    conn.execute(
        "INSERT INTO page_views (site, path) SELECT 'example.com', '/fresh' FROM generate_series(1, 200)"
    )
    conn.execute("VACUUM ANALYZE")


def naive_seconds(conn: psycopg.Connection, filters: dict[str, str]) -> float:
    where = "".join(f" AND {name} = %({name})s" for name in filters)
    timings = []
    for _ in range(NAIVE_RUNS):
        started = time.perf_counter()
        for column in PANEL_COLUMNS:
            conn.execute(NAIVE_PANEL.format(column=column, where=where), filters).fetchall()
        timings.append(time.perf_counter() - started)
    return median(timings)


def first_get_seconds(port: int, path: str) -> float:
    """Seconds for one GET that may count a large slice whole (in chunks: tally/web/filtered.py)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=FIRST_ANSWER_TIMEOUT)
    started = time.perf_counter()
    conn.request("GET", path, headers=OWNER)
    response = conn.getresponse()
    response.read()
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"GET {path} answered {response.status}")
    return time.perf_counter() - started


@contextlib.contextmanager
def views_arriving(url: str) -> Iterator[None]:
    """ARRIVING_PER_SECOND views a second while the block runs, as a live site has them: half
    from ids of the last hour's views (with their values: a visitor moves on), half new; one
    in ten of them an event of a sender of the last hour instead."""
    stop = threading.Event()

    def arrive() -> None:
        with psycopg.connect(url, autocommit=True) as writer:
            tick = 0
            while not stop.wait(1 / ARRIVING_PER_SECOND):
                writer.execute(ARRIVE_EVENT if tick % 10 == 9 else ARRIVE)
                tick += 1

    thread = threading.Thread(target=arrive)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def values(conn: psycopg.Connection, column: str) -> tuple[str, str]:
    """The busiest value of `column` and a middling one (the tenth busiest)."""
    ranked = conn.execute(
        f"SELECT {column} FROM page_views WHERE {column} IS NOT NULL"
        " GROUP BY 1 ORDER BY count(*) DESC LIMIT 10"
    ).fetchall()
    return ranked[0][0], ranked[-1][0]


def measure(build: Build) -> Result:
    result = Result("filters")
    with throwaway_database(build) as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET jit = off")  # the naive baseline without compilation, as the web's
        load(conn)
        country, middling_country = values(conn, "country")
        browser, _ = values(conn, "browser")
        cases = [
            ("unfiltered", {}, GOAL_UNFILTERED_SECONDS),
            (f"country={country} (busiest)", {"country": country}, GOAL_ONE_FILTER_SECONDS),
            (f"country={middling_country} (10th)", {"country": middling_country}, GOAL_ONE_FILTER_SECONDS),
            (f"browser={browser} (busiest)", {"browser": browser}, GOAL_ONE_FILTER_SECONDS),
            ("path=/page/0 (busiest)", {"path": "/page/0"}, GOAL_ONE_FILTER_SECONDS),
            (
                f"country={country} & browser={browser}",
                {"country": country, "browser": browser},
                GOAL_TWO_FILTERS_SECONDS,
            ),
        ]
        if CASES:
            cases = [case for case in cases if case[0].startswith(CASES)]
        port = free_port()
        with process(["web.py"], {"DATABASE_URL": url, "PORT": str(port)}, ready="Serving on"):
            for label, filters, goal in cases:
                path = "/api/stats?" + urllib.parse.urlencode({"days": 30, **filters})
                first = first_get_seconds(port, path)  # counted whole: nothing kept yet
                time_http_get(port, path, 2)  # warm up
                tally = time_http_get(port, path, REQUESTS)
                with views_arriving(url):
                    live = time_http_get(port, path, REQUESTS)
                naive = naive_seconds(conn, filters)
                p50, live_p50 = percentile(tally, 0.5), percentile(live, 0.5)
                result.rows.append(
                    Row(
                        f"stats p50, {SIZE / 1e6:g}M views, {label}",
                        ms(p50),
                        f"naive panels {ms(naive)}",
                        f"{times(naive / p50)} faster",
                        f"<= {goal * 1000:.0f} ms",
                        p50 <= goal,
                    )
                )
                if not filters:
                    continue
                result.rows.append(
                    Row(
                        f"stats p50, {SIZE / 1e6:g}M views, {label}, {ARRIVING_PER_SECOND} views/s arriving",
                        ms(live_p50),
                        f"naive panels {ms(naive)}",
                        f"{times(naive / live_p50)} faster",
                        f"<= {goal * 1000:.0f} ms",
                        live_p50 <= goal,
                    )
                )
                result.rows.append(
                    Row(
                        f"first answer, {SIZE / 1e6:g}M views, {label}: counted whole",
                        ms(first),
                        f"naive panels {ms(naive)}",
                        f"{times(naive / first)} faster",
                    )
                )
    result.notes.append(
        "Filtered answers count the matching raw views once (tally/web/filtered.py), then are carried"
        " forward by the ids with views since (tally/web/carried.py);"
        " unfiltered ones read the rollups."
    )
    return result
