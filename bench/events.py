"""Visits and events (issue 18): stats with them, `?event=`, and events through /api/collect.

Stats: bench/filters.py's SIZE views over 30 days (thousands of paths, ~100 countries, about
3 views per visitor a day, each with a visitor id) and one event for every EVENT_SHARE views
from the same visitors, 20 names (skewed: the busiest is about a third) with a `plan` prop;
all rolled up (its time reported) but a short tail. `python web.py` alone answers, against
the same figures computed naively in the same run (visits by window functions over the raw
views and events, events per name over the raw events):
- unfiltered stats with visits and events (goal: p50 <= 10 ms);
- `?event=` the busiest name (goal: p50 <= 100 ms).

Ingest: events posted to /api/collect at 16 connections by bench/collect.py's visitors
(public addresses, browsers' agents), one of five events with a prop, against the HTTP
ceiling under the same requests (goal: >= 0.5x), and views through the same endpoint; the
three servers loaded in turn, round after round (bench/collect.py, `alternating_runs`).

$ python -m bench events
$ BENCH_EVENT_VIEWS=300000 python -m bench events   # a smaller load
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.parse

import psycopg

from bench import collect, filters
from bench.harness import (
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
    wrk_available,
)
from bench.report import Result, Row, times

SIZE = int(os.environ.get("BENCH_EVENT_VIEWS", "3000000"))
EVENT_SHARE = 10  # one event for every 10 views
REQUESTS = 40
NAIVE_RUNS = 3
GOAL_STATS_SECONDS = 0.010
GOAL_EVENT_FILTER_SECONDS = 0.100
GOAL_INGEST = 0.5
EVENTS = """
INSERT INTO events (site, name, props, path, visitor, occurred_at)
SELECT site, 'Event' || floor(20 * power(random(), 3))::int,
       jsonb_build_object('plan', (ARRAY['free', 'pro', 'team', 'big'])[1 + floor(4 * random())::int]),
       path, visitor, viewed_at + interval '20 seconds'
  FROM page_views WHERE id %% %(share)s = 0
"""
# Visits of the last 30 days straight from the raw rows: what the rollup saves each request.
NAIVE_VISITS = """
WITH items AS (
    SELECT site, visitor, viewed_at AS at, path, false AS is_event FROM page_views
     WHERE visitor IS NOT NULL AND viewed_at >= (now() AT TIME ZONE 'UTC')::date - 29
    UNION ALL
    SELECT site, visitor, occurred_at, path, true FROM events
     WHERE visitor IS NOT NULL AND occurred_at >= (now() AT TIME ZONE 'UTC')::date - 29
), marked AS (
    SELECT *, CASE WHEN at - lag(at) OVER w <= interval '30 minutes' THEN 0 ELSE 1 END AS starts
      FROM items
    WINDOW w AS (PARTITION BY site, visitor, (at AT TIME ZONE 'UTC')::date ORDER BY at, is_event)
), numbered AS (
    SELECT *, sum(starts) OVER w AS n FROM marked
    WINDOW w AS (PARTITION BY site, visitor, (at AT TIME ZONE 'UTC')::date ORDER BY at, is_event)
), visits AS (
    SELECT count(*) FILTER (WHERE NOT is_event) AS views, count(*) FILTER (WHERE is_event) AS events,
           max(at) - min(at) AS duration, (array_agg(path ORDER BY is_event, at))[1] AS entry
      FROM numbered GROUP BY site, visitor, (at AT TIME ZONE 'UTC')::date, n
)
SELECT count(*), count(*) FILTER (WHERE views = 1 AND events = 0), avg(duration),
       (SELECT array_agg(entry)
          FROM (SELECT entry FROM visits GROUP BY 1 ORDER BY count(*) DESC LIMIT 10) top)
  FROM visits
"""
NAIVE_EVENTS = """
SELECT name, count(*), count(DISTINCT ((occurred_at AT TIME ZONE 'UTC')::date, visitor)) FROM events
 WHERE occurred_at >= (now() AT TIME ZONE 'UTC')::date - 29 GROUP BY 1 ORDER BY 2 DESC LIMIT 10
"""


def load(conn: psycopg.Connection) -> float:
    """The views and events, rolled up; the rollup's seconds."""
    say(f"events: loading {SIZE:,} views and {SIZE // EVENT_SHARE:,} events")
    make_day_partitions(conn, 31)
    conn.execute(filters.LOAD, {"rows": SIZE})
    conn.execute(EVENTS, {"share": EVENT_SHARE})
    conn.execute("VACUUM ANALYZE page_views")
    conn.execute("VACUUM ANALYZE events")
    started = time.perf_counter()
    conn.execute("SELECT tally_rollup_page_views()")
    seconds = time.perf_counter() - started
    say(f"events: rolled up in {seconds:.0f} s")
    conn.execute(
        "INSERT INTO page_views (site, path) SELECT 'example.com', '/fresh' FROM generate_series(1, 200)"
    )
    conn.execute("VACUUM ANALYZE")
    return seconds


def naive_seconds(conn: psycopg.Connection, queries: list[str]) -> float:
    timings = []
    for _ in range(NAIVE_RUNS):
        started = time.perf_counter()
        for query in queries:
            conn.execute(query).fetchall()
        timings.append(time.perf_counter() - started)
    return median(timings)


def event_bodies(rng: random.Random) -> list[str]:
    names = ("Signup", "Download", "Outbound Link", "Purchase", "Play")
    return [
        json.dumps(
            {"url": f"https://example.com/page/{index}", "event": rng.choice(names), "props": {"plan": "pro"}}
        )
        for index in range(collect.PAGES)
    ]


def measure_stats(build: Build, result: Result) -> None:
    with throwaway_database(build) as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET jit = off")  # the naive baseline without compilation, as the web's
        rollup_seconds = load(conn)
        busiest = conn.execute(
            "SELECT name FROM events GROUP BY 1 ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()[0]
        port = free_port()
        cases = [
            ("unfiltered, with visits and events", {}, GOAL_STATS_SECONDS, [NAIVE_VISITS, NAIVE_EVENTS]),
            (f"event={busiest} (busiest)", {"event": busiest}, GOAL_EVENT_FILTER_SECONDS, None),
        ]
        with process(["web.py"], {"DATABASE_URL": url, "PORT": str(port)}, ready="Serving on"):
            for label, given, goal, naive_queries in cases:
                path = "/api/stats?" + urllib.parse.urlencode({"days": 30, **given})
                first = filters.first_get_seconds(port, path)  # a filter counted whole: nothing kept
                time_http_get(port, path, 2)  # warm up
                p50 = percentile(time_http_get(port, path, REQUESTS), 0.5)
                with filters.views_arriving(url):  # carried forward by the ids that changed
                    live_p50 = percentile(time_http_get(port, path, REQUESTS), 0.5)
                if naive_queries is None:  # the same answer naively: every panel over the converters' views
                    where = (
                        f" AND (site, visitor) IN (SELECT site, visitor FROM events WHERE name = '{busiest}')"
                    )
                    naive_queries = [
                        filters.NAIVE_PANEL.format(column=column, where=where)
                        for column in filters.PANEL_COLUMNS
                    ]
                naive = naive_seconds(conn, naive_queries)
                result.rows.append(
                    Row(
                        f"stats p50, {SIZE / 1e6:g}M views + {SIZE // EVENT_SHARE / 1e3:g}k events, {label}",
                        ms(p50),
                        f"naive {ms(naive)}",
                        f"{times(naive / p50)} faster",
                        f"<= {goal * 1000:.0f} ms",
                        p50 <= goal,
                    )
                )
                if not given:
                    continue
                result.rows.append(
                    Row(
                        f"stats p50, {SIZE / 1e6:g}M views + {SIZE // EVENT_SHARE / 1e3:g}k events, {label},"
                        f" {filters.ARRIVING_PER_SECOND} views/s arriving",
                        ms(live_p50),
                        f"naive {ms(naive)}",
                        f"{times(naive / live_p50)} faster",
                        f"<= {goal * 1000:.0f} ms",
                        live_p50 <= goal,
                    )
                )
                result.rows.append(
                    Row(
                        f"first answer, {SIZE / 1e6:g}M views + {SIZE // EVENT_SHARE / 1e3:g}k events,"
                        f" {label}: counted whole",
                        ms(first),
                        f"naive {ms(naive)}",
                        f"{times(naive / first)} faster",
                    )
                )
        views, events = conn.execute(
            "SELECT (SELECT count(*) FROM page_views), (SELECT count(*) FROM events)"
        ).fetchone()
        result.notes.append(
            f"Rollup of {views:,} views and {events:,} events with visits: {rollup_seconds:.0f} s"
            f" ({(views + events) / rollup_seconds:,.0f} rows/s). The naive baseline of the unfiltered"
            " row forms the visits by window functions and counts events per name over the raw rows;"
            " that of ?event= counts every panel over the views of the visitors who sent the event."
        )


def measure_ingest(build: Build, result: Result) -> None:
    if not wrk_available():
        result.notes.append("ingest skipped: wrk is not installed (apt-get install -y wrk)")
        return
    rng = random.Random(18)
    agents = collect.browsers_agents(rng)
    visitors = [
        (collect.public_address(rng), agents[int(len(agents) * rng.random() ** 3)])
        for _ in range(collect.VISITORS)
    ]
    lua = collect.script(visitors, event_bodies(rng))
    views = collect.script(visitors, collect.bodies(rng))
    with throwaway_database(build) as url:
        say("events: the HTTP ceiling, events and views through /api/collect, in turn")
        loads = collect.alternating_runs(
            url,
            {
                "ceiling": collect.Server(collect.CEILING, "/api/pageviews", lua),
                "events": collect.Server(collect.WEB, "/api/collect", lua),
                "views": collect.Server(collect.WEB, "/api/collect", views),
            },
        )
        with psycopg.connect(url) as conn:
            stored = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    events = collect.median_load(loads["events"])
    rate, top = events.requests_per_second, collect.median_load(loads["ceiling"]).requests_per_second
    ratio = collect.median_ratio(loads["events"], loads["ceiling"])
    result.rows.append(
        Row(
            f"POST /api/collect events req/s at {collect.CONNECTIONS} connections,"
            f" {collect.VISITORS:,} visitors",
            f"{rate:,.0f}",
            f"HTTP ceiling {top:,.0f}",
            times(ratio, GOAL_INGEST),
            f">= {GOAL_INGEST}x",
            ratio >= GOAL_INGEST,
        )
    )
    result.rows.append(
        Row(
            "  views through /api/collect, the same visitors",
            f"{collect.median_load(loads['views']).requests_per_second:,.0f}",
            f"events {rate:,.0f}",
            times(collect.median_ratio(loads["views"], loads["events"])),
            "-",
            None,
        )
    )
    result.notes.append(
        f"{collect.RUNS} rounds of {collect.RUN_SECONDS} s on each server in turn after"
        f" {collect.WARM_UP_SECONDS} s of warm-up each; req/s the median, each ratio the median of the"
        " rounds' ratios; every round (req/s): "
        + "; ".join(
            f"{name} " + " / ".join(f"{load.requests_per_second:,.0f}" for load in server_loads)
            for name, server_loads in loads.items()
        )
        + f"; events p50/p99 {events.p50 * 1000:.1f} / {events.p99 * 1000:.1f} ms;"
        f" {stored:,} events stored."
    )


def measure(build: Build) -> Result:
    result = Result("events")
    measure_stats(build, result)
    measure_ingest(build, result)
    return result
