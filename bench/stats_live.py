"""GET /api/stats while views arrive, and behind a write transaction held open in another database.

Both scenarios run the production trio with its default settings on the database the
at-rest figures were measured on: `python web.py`, `python worker.py` (it runs the
rollups that stats requests ask for once the tail passes 1,000 views) and `python
clock.py` (ROLLUP_SCHEDULE at its default, a rollup every minute). Views arrive from
bench/pacer.py, in its own process (under traffic as beacons with visitor ids, as browsers
send them; behind the held transaction as batches to /api/pageviews); stats are timed by
sequential GETs from this one, one every GET_GAP_SECONDS, and every HEALTH_EVERY-th GET is
followed by GET /api/health for the tail (`rollup_views_waiting`).

The old behaviour stands beside each figure, measured on the same data in the same run:
the stats tail query (tally/queries.sql, stats_tail, with the web's session settings)
over the tail the old rollup would have left, whose watermark was the oldest
transaction running anywhere on the server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import http.client
import json
import subprocess
import sys
import time
from collections.abc import Iterator

import psycopg

from bench.harness import (
    OWNER,
    ROOT,
    clean_environment,
    free_port,
    median,
    percentile,
    process,
    say,
    time_http_get,
)
from bench.pacer import Paced, Pacer, paced_views
from tally.db import QUERIES, WEB_SESSION_SETTINGS

STATS = "/api/stats?days=30"
GET_GAP_SECONDS = 0.05
HEALTH_EVERY = 20
AFTER_REQUESTS = 400  # sequential GETs once the views are in, as at rest
TRAFFIC_RATE = 200  # views/s, one a request
ROLLUP_EVERY_SECONDS = 60  # the default ROLLUP_SCHEDULE, '* * * * *'
TRAFFIC_SECONDS = ROLLUP_EVERY_SECONDS  # so its views are the tail the clock's rollup alone would leave
HELD_VIEWS = 300_000
HELD_BATCH = 100  # views a request
HELD_RATE = 50  # requests/s: 5,000 views/s, a minute for the 300,000
EXPIRED_VIEWS = 100_000  # 31 to 45 days old, loaded after the held transaction began
OTHER_DATABASE = "other"
LATE_PATH = "/committed-late"
NOW_BUCKET_SQL = "date_bin('15 minutes', now(), '2000-01-01 00:00+00')"
JOB_TIMEOUT_SECONDS = 120
TAIL_RUNS = 3
# The web's own session settings, but no statement timeout: the old tail may take longer.
WEB_OPTIONS = " ".join(
    f"-c {name}={value}" for name, value in WEB_SESSION_SETTINGS.items() if name != "statement_timeout"
)
# The window GET /api/stats?days=30 counts: from midnight UTC 29 days ago, by the database's clock.
WINDOW_SQL = (
    "SELECT count(*) FROM page_views WHERE viewed_at >="
    " (date_trunc('day', now() AT TIME ZONE 'UTC') - interval '29 days') AT TIME ZONE 'UTC'"
)
# Views past RETENTION_DAYS (30 by default) at a cutoff fixed before the job runs. Retention
# drops whole UTC days (migrations/0019): a view lives until its day is wholly past, so the
# cutoff is the start of the day 30 days ago, not that instant (the at-rest views span 30
# days to the second: counted to the instant, those of that day's earlier hours were "left").
CUTOFF_SQL = "SELECT date_trunc('day', now() - interval '30 days', 'UTC')"
EXPIRED_SQL = "SELECT count(*) FROM page_views WHERE viewed_at < %(cutoff)s"
LOAD_EXPIRED_SQL = (
    "INSERT INTO page_views (path, viewed_at)"
    " SELECT '/old/' || n %% 50, now() - interval '45 days' + n * (interval '14 days' / %(rows)s)"
    " FROM generate_series(0, %(rows)s - 1) AS n"
)
ROLLUPS_SQL = (
    "SELECT count(*), count(*) FILTER (WHERE id NOT IN (SELECT job_id FROM procrastinate_periodic_defers"
    " WHERE job_id IS NOT NULL)) FROM procrastinate_jobs"
    " WHERE task_name = 'rollup_page_views' AND status = 'succeeded' AND id > %s"
)
LAST_JOB_SQL = "SELECT coalesce(max(id), 0) FROM procrastinate_jobs"
CLEANUP_JOB_SQL = (
    "SELECT id, status::text FROM procrastinate_jobs"
    " WHERE task_name = 'cleanup_old_page_views' AND id > %s ORDER BY id"
)
CLEANUP_SECONDS_SQL = (
    "SELECT extract(epoch FROM max(at) FILTER (WHERE type = 'succeeded') - min(at)"
    " FILTER (WHERE type = 'started'))::float8 FROM procrastinate_events WHERE job_id = %s"
)


@dataclasses.dataclass
class Timed:
    """Stats timed while views arrived, and the tail health reported meanwhile."""

    stats: list[float] = dataclasses.field(default_factory=list)  # seconds a GET
    waiting: list[int] = dataclasses.field(default_factory=list)  # rollup_views_waiting

    @property
    def p50(self) -> float:
        return percentile(self.stats, 0.5)

    @property
    def p99(self) -> float:
        return percentile(self.stats, 0.99)


@dataclasses.dataclass(frozen=True)
class OldTail:
    """The tail the old rollup would have left (views at or above its watermark) and its query's time."""

    views: int
    seconds: float


def get_json(conn: http.client.HTTPConnection, path: str) -> dict:
    conn.request("GET", path, headers=OWNER)
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"GET {path} answered {response.status}: {body[:300]!r}")
    return json.loads(body)


def get_once(port: int, path: str) -> dict:
    """One GET on a connection of its own."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        return get_json(conn, path)
    finally:
        conn.close()


def time_stats_while(port: int, pacer: Pacer) -> Timed:
    """Sequential GETs of the stats, one every GET_GAP_SECONDS, for as long as `pacer` posts."""
    timed = Timed()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while pacer.running():
        began = time.perf_counter()
        get_json(conn, STATS)
        timed.stats.append(time.perf_counter() - began)
        if len(timed.stats) % HEALTH_EVERY == 0:
            timed.waiting.append(get_json(conn, "/api/health")["rollup_views_waiting"])
        time.sleep(max(0.0, GET_GAP_SECONDS - (time.perf_counter() - began)))
    conn.close()
    return timed


def posted(paced: Paced, what: str) -> Paced:
    if paced.failures:
        raise RuntimeError(f"{paced.failures} of {paced.requests} POSTs failed {what}")
    return paced


@contextlib.contextmanager
def production_trio(url: str) -> Iterator[int]:
    """web, worker and clock with their defaults; the web's port, once its stats are warm."""
    port = free_port()
    env = {"DATABASE_URL": url}
    with (
        process(["web.py"], {**env, "PORT": str(port)}, ready="Serving on"),
        process(["worker.py"], env, ready="PROCESS STARTED"),
        process(["clock.py"], env, ready="PROCESS STARTED"),
    ):
        time_http_get(port, STATS, 20)  # warm up: pool, cache
        yield port


def old_tail(url: str, watermark: object) -> OldTail:
    """The stats tail query over every view at or above `watermark`, as the old rollup left them."""
    with psycopg.connect(url, autocommit=True, options=WEB_OPTIONS) as conn:
        # The bounds the web passes (stats_state): the tail's span, and the buckets of the last 24 hours.
        views, tail_from, tail_to = conn.execute(
            "SELECT count(*), min(viewed_at), max(viewed_at) + interval '1 microsecond'"
            " FROM page_views WHERE recorded_xid >= %s",
            (watermark,),
        ).fetchone()
        now_bucket = conn.execute(f"SELECT {NOW_BUCKET_SQL}").fetchone()[0]
        bounds = {
            "watermark": watermark,
            "in_progress": [],
            "site": None,
            "tz": "UTC",
            "tail_from": tail_from,
            "tail_to": tail_to,
            "recent": now_bucket - datetime.timedelta(hours=24),
            "now_bucket": now_bucket,
        }
        timings = []
        for _ in range(TAIL_RUNS):
            began = time.perf_counter()
            conn.execute(QUERIES["stats_tail"], bounds).fetchall()
            timings.append(time.perf_counter() - began)
    return OldTail(views, median(timings))


def rollups_since(conn: psycopg.Connection, last_job: int) -> tuple[int, int]:
    """Rollups that succeeded since job `last_job`: all, and those stats asked for (not the clock's)."""
    return conn.execute(ROLLUPS_SQL, (last_job,)).fetchone()


# -- (b) while views arrive ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class UnderTraffic:
    timed: Timed
    paced: Paced
    rollups: tuple[int, int]
    old: OldTail  # the run's views (a minute's) as one tail: the minutely rollup alone


def under_traffic(url: str) -> UnderTraffic:
    """TRAFFIC_RATE beacons a second for TRAFFIC_SECONDS, as browsers send them (visitor ids, half
    of them returning: each stats request reads how the tail's ids move the rolled-up visitors
    and visits), stats timed meanwhile."""
    say(f"stats: {TRAFFIC_RATE} beacons/s for {TRAFFIC_SECONDS} s, web + worker + clock, stats timed")
    with psycopg.connect(url, autocommit=True) as conn, production_trio(url) as port:
        last_job = conn.execute(LAST_JOB_SQL).fetchone()[0]
        last_view = conn.execute("SELECT max(id) FROM page_views").fetchone()[0]
        requests = TRAFFIC_RATE * TRAFFIC_SECONDS
        with paced_views(port, TRAFFIC_RATE, requests, beacons=True) as pacer:
            timed = time_stats_while(port, pacer)
            paced = posted(pacer.summary(), f"at {TRAFFIC_RATE} views/s")
        rollups = rollups_since(conn, last_job)
        # What the clock's minutely rollup alone would leave before each: a minute of views.
        first = conn.execute(
            "SELECT min(recorded_xid) FROM page_views WHERE id > %s", (last_view,)
        ).fetchone()[0]
    return UnderTraffic(timed, paced, rollups, old_tail(url, first))


# -- (c) behind a transaction held open in another database --------------------------------


@dataclasses.dataclass(frozen=True)
class BehindHeld:
    during: Timed
    paced: Paced
    after: list[float]  # sequential GETs once the views are in
    waiting_after: int
    old: OldTail  # everything since the held transaction began
    rollups: tuple[int, int]
    expired: int
    expired_left: int
    old_deletable: int  # expired views below the oldest running transaction: what the old job could delete
    cleanup_seconds: float
    late_open_seconds: float  # how long the late view's transaction stayed open
    late_folded_seconds: float  # from its commit until a rollup folded it
    totals: dict[str, tuple[int, int]]  # moment -> (GET /api/stats total, raw count of the window)


def create_other_database(url: str) -> str:
    with psycopg.connect(url, autocommit=True) as admin:
        if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (OTHER_DATABASE,)).fetchone():
            admin.execute(f"CREATE DATABASE {OTHER_DATABASE}")
    return psycopg.conninfo.make_conninfo(url, dbname=OTHER_DATABASE)


def defer_cleanup(url: str) -> None:
    """As an operator would: procrastinate's CLI, on the worker's app."""
    subprocess.run(
        [sys.executable, "-m", "procrastinate", "--app=jobs.app", "defer", "cleanup_old_page_views", "{}"],
        cwd=ROOT,
        env=clean_environment({"DATABASE_URL": url}),
        check=True,
        capture_output=True,
    )


def wait_for_cleanup(conn: psycopg.Connection, last_job: int) -> int:
    """Wait until every cleanup job deferred since `last_job` has finished; the first one's id."""
    deadline = time.monotonic() + JOB_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        jobs = conn.execute(CLEANUP_JOB_SQL, (last_job,)).fetchall()
        if jobs and all(status not in ("todo", "doing") for _, status in jobs):
            failed = [job for job in jobs if job[1] != "succeeded"]
            if failed:
                raise RuntimeError(f"cleanup jobs ended {failed}")
            return jobs[0][0]
        time.sleep(0.2)
    raise RuntimeError(f"cleanup did not finish in {JOB_TIMEOUT_SECONDS} s")


def folded(conn: psycopg.Connection, xid: object) -> bool:
    """Whether the last rollup folded the views of transaction `xid`."""
    watermark, in_progress, *_ = conn.execute(QUERIES["rollup_state"]).fetchone()
    return int(str(xid)) < int(str(watermark)) and str(xid) not in {str(item) for item in in_progress}


def counted(port: int, conn: psycopg.Connection) -> tuple[int, int]:
    """GET /api/stats's total over 30 days, and the raw views of the same window counted by SQL."""
    return get_once(port, STATS)["total_views"], conn.execute(WINDOW_SQL).fetchone()[0]


def behind_held_transaction(url: str) -> BehindHeld:
    """300,000 views, a cleanup and a late commit, all while another database holds a transaction open."""
    other = create_other_database(url)
    with (
        psycopg.connect(other) as held,
        psycopg.connect(url) as late,
        psycopg.connect(url, autocommit=True) as conn,
    ):
        # Another app's forgotten BEGIN: it holds a transaction id for the whole scenario.
        held_xid = held.execute("SELECT pg_current_xact_id()").fetchone()[0]
        late_xid = late.execute(
            "INSERT INTO page_views (path) VALUES (%s) RETURNING recorded_xid", (LATE_PATH,)
        ).fetchone()[0]
        late_began = time.monotonic()
        say(
            f"stats: held transaction {held_xid} in {OTHER_DATABASE!r}, a view in open transaction {late_xid}"
        )
        conn.execute(LOAD_EXPIRED_SQL, {"rows": EXPIRED_VIEWS})
        with production_trio(url) as port:
            last_job = conn.execute(LAST_JOB_SQL).fetchone()[0]
            say(f"stats: {HELD_VIEWS:,} views as {HELD_VIEWS // HELD_BATCH:,} POSTs, {HELD_RATE} a second")
            with paced_views(port, HELD_RATE, HELD_VIEWS // HELD_BATCH, views=HELD_BATCH) as pacer:
                during = time_stats_while(port, pacer)
                paced = posted(pacer.summary(), "behind the held transaction")
            after = time_http_get(port, STATS, AFTER_REQUESTS)
            waiting_after = get_once(port, "/api/health")["rollup_views_waiting"]
            rollups = rollups_since(conn, last_job)
            # The old rollup's watermark: the oldest transaction running anywhere, the held one.
            oldest = conn.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())").fetchone()[0]
            old = old_tail(url, oldest)

            say("stats: cleanup_old_page_views, deferred by procrastinate's CLI")
            cutoff = {"cutoff": conn.execute(CUTOFF_SQL).fetchone()[0], "oldest": oldest}
            expired = conn.execute(EXPIRED_SQL, cutoff).fetchone()[0]
            old_deletable = conn.execute(f"{EXPIRED_SQL} AND recorded_xid < %(oldest)s", cutoff).fetchone()[0]
            before_cleanup = conn.execute(LAST_JOB_SQL).fetchone()[0]
            defer_cleanup(url)  # its cutoff is a little later than ours: it deletes these and more
            cleanup_job = wait_for_cleanup(conn, before_cleanup)
            cleanup_seconds = conn.execute(CLEANUP_SECONDS_SQL, (cleanup_job,)).fetchone()[0]
            expired_left = conn.execute(EXPIRED_SQL, cutoff).fetchone()[0]

            totals = {"before the late commit": counted(port, conn)}
            late.commit()
            committed_at = time.monotonic()
            late_open = committed_at - late_began
            totals["just after it"] = counted(port, conn)
            say("stats: waiting for a rollup to fold the late view (the clock's, once a minute)")
            deadline = committed_at + ROLLUP_EVERY_SECONDS + JOB_TIMEOUT_SECONDS / 4
            while not folded(conn, late_xid):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"no rollup folded transaction {late_xid} within a minute of its commit"
                    )
                time.sleep(0.5)
            late_folded = time.monotonic() - committed_at
            totals["once a rollup folded it"] = counted(port, conn)
        held.rollback()
    return BehindHeld(
        during,
        paced,
        after,
        waiting_after,
        old,
        rollups,
        expired,
        expired_left,
        old_deletable,
        cleanup_seconds,
        late_open,
        late_folded,
        totals,
    )


def late_view_counted_once(scenario: BehindHeld) -> bool:
    """The stats total matched the raw count at every moment, and rose by exactly one at the commit."""
    totals = list(scenario.totals.values())
    matches = all(stats == raw for stats, raw in totals)
    return matches and totals[1][0] - totals[0][0] == 1 and totals[2][0] == totals[1][0]
