"""Memory and database connections after warm-up: one web, one worker and one clock.

The three real processes run on a database holding WARM_VIEWS page views. Warm-up
drives every code path once and then some: views posted, and beacons sent with browsers'
agents, under load; every read route (filtered too) 50 times; a few hundred jobs; and the
clock's ticks (its schedules are set to every few seconds, so that each periodic task is
deferred and run during the warm-up instead of once a minute or day).
Then each process's resident memory (VmRSS, and its peak VmHWM) is read from /proc,
and the connections from pg_stat_activity.

$ python -m bench.footprint
"""

from __future__ import annotations

import json
import random
import time

import psycopg

from bench import collect
from bench.harness import (
    Build,
    builds,
    free_port,
    http_load,
    memory_mb,
    process,
    say,
    throwaway_database,
    time_http_get,
    wrk_available,
    wrk_load,
)
from bench.report import Result, Row, run_alone
from tally.config import DEFAULT_WEB_POOL_SIZE, DEFAULT_WEB_THREADS, DEFAULT_WORKER_CONCURRENCY

WARM_VIEWS = 500_000
WARM_JOBS = 500
HTTP_SECONDS = 3
BEACON_SECONDS = 10  # at about 2,000 a second: every one of the 3,000 agents met, most several times
CLOCK_SECONDS = 12  # at least two ticks of the schedules below
# Every periodic task gets deferred during warm-up (6-field cron: seconds first).
FAST_SCHEDULES = {
    "ROLLUP_SCHEDULE": "*/5 * * * * *",
    "RETRY_STALLED_SCHEDULE": "*/5 * * * * *",
    "CLEANUP_SCHEDULE": "*/5 * * * * *",
    "PRUNE_SCHEDULE": "*/5 * * * * *",
}
CONNECTIONS_SQL = (
    "SELECT application_name, count(*) FROM pg_stat_activity"
    " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() GROUP BY 1 ORDER BY 1"
)
DEFER_SQL = (
    "SELECT procrastinate_defer_jobs_v1(array_agg(ROW('default', 'retry_stalled_jobs', 0, NULL, NULL,"
    " '{}'::jsonb, NULL)::procrastinate_job_to_defer_v1)) FROM generate_series(1, %s)"
)
GOAL_RSS_MB = 80
GOAL_CONNECTIONS = 12


# Every route a GET reaches, filtered and not (the tracker's beacons are loaded apart, below).
READ_ROUTES = (
    "/api/stats?days=30",
    "/api/stats?days=366",
    "/api/stats?days=30&path=/page/7&compare=previous",
    "/api/stats?days=7&country=DE&tz=Asia/Kathmandu",
    "/",
    "/?days=30&browser=Firefox",
    "/api/sites",
    "/api/export?days=30",
    "/api/jobs",
    "/api/jobs/1",
    "/jobs",
    "/api/health",
    "/metrics",
    "/tally.js",
    "/api/openapi.json",
    "/reports/preview?site=example.com&period=weekly",
)


def warm_up_web(port: int) -> None:
    one = json.dumps({"path": "/pricing", "referrer": "https://example.com/"}).encode()
    batch = json.dumps([{"path": f"/page/{index}"} for index in range(1000)]).encode()
    http_load(port, "/api/pageviews", one, 16, HTTP_SECONDS)
    http_load(port, "/api/pageviews", batch, 4, HTTP_SECONDS)
    if wrk_available():  # as browsers send them: the crawler lists, ua-parser and their caches at work
        rng = random.Random(7)
        agents = collect.browsers_agents(rng)
        visitors = [(collect.public_address(rng), rng.choice(agents)) for _ in range(collect.VISITORS)]
        wrk_load(port, "/api/collect", collect.script(visitors, collect.bodies(rng)), 16, BEACON_SECONDS)
    for path in READ_ROUTES:
        time_http_get(port, path, 50)


def measure(build: Build) -> Result:
    result = Result("Footprint")
    with throwaway_database(build) as url, psycopg.connect(url, autocommit=True) as conn:
        say(f"footprint: {WARM_VIEWS:,} views, then web + worker + clock")
        conn.execute(
            "INSERT INTO page_views (path, viewed_at) SELECT '/page/' || n %% 200,"
            " now() - (n * (interval '30 days' / %s)) FROM generate_series(1, %s) n",
            (WARM_VIEWS, WARM_VIEWS),
        )
        conn.execute("VACUUM ANALYZE page_views")
        port = free_port()
        env = {"DATABASE_URL": url}
        with (
            process(["web.py"], {**env, "PORT": str(port)}, ready="Serving on") as web,
            process(["worker.py"], env, ready="PROCESS STARTED") as worker,
            process(["clock.py"], {**env, **FAST_SCHEDULES}, ready="PROCESS STARTED") as clock,
        ):
            conn.execute(DEFER_SQL, (WARM_JOBS,))
            started = time.monotonic()
            warm_up_web(port)
            time.sleep(max(0.0, CLOCK_SECONDS - (time.monotonic() - started)))
            memory = {
                name: memory_mb(proc.pid)
                for name, proc in (("web", web), ("worker", worker), ("clock", clock))
            }
            connections = dict(conn.execute(CONNECTIONS_SQL).fetchall())
            periodic = conn.execute(
                "SELECT count(DISTINCT task_name) FROM procrastinate_jobs"
                " WHERE id IN (SELECT job_id FROM procrastinate_periodic_defers) AND status = 'succeeded'"
            ).fetchone()[0]
    for name, (rss, peak) in memory.items():
        result.rows.append(
            Row(
                f"RSS after warm-up, {name}",
                f"{rss:.0f} MB (peak {peak:.0f} MB)",
                goal=f"<= {GOAL_RSS_MB} MB",
                met=rss <= GOAL_RSS_MB,
            )
        )
    total = sum(connections.values())
    result.rows.append(
        Row(
            "connections in pg_stat_activity, web + worker + clock",
            f"{total} ({', '.join(f'{name} {count}' for name, count in connections.items())})",
            goal=f"<= {GOAL_CONNECTIONS}",
            met=total <= GOAL_CONNECTIONS,
        )
    )
    beacons = (
        f" {BEACON_SECONDS} s of beacons to /api/collect at full load ({collect.VISITORS:,} visitors"
        f" with {collect.AGENTS:,} browsers' agents),"
        if wrk_available()
        else " no beacons (wrk is not installed: apt-get install -y wrk),"
    )
    result.notes.append(
        f"Warm-up on {WARM_VIEWS:,} views: {HTTP_SECONDS} s of single-view and of 1,000-view POSTs at full"
        f" load,{beacons} 50 GETs of each of {len(READ_ROUTES)} read routes (filtered stats, the dashboard,"
        " the jobs page, /metrics...), "
        f"{WARM_JOBS} jobs, and {CLOCK_SECONDS} s of clock ticks with every schedule every 5 s"
        f" ({periodic} periodic tasks deferred and run). Default settings otherwise (WEB_THREADS"
        f" {DEFAULT_WEB_THREADS} on WEB_POOL_SIZE {DEFAULT_WEB_POOL_SIZE} connections, WORKER_CONCURRENCY"
        f" {DEFAULT_WORKER_CONCURRENCY}: its pool is one more, plus its LISTEN connection; the clock's is 1)."
    )
    return result


if __name__ == "__main__":
    run_alone(measure, builds())
