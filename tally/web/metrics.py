"""Prometheus metrics for GET /metrics, through prometheus_client.

procrastinate has no metrics of its own (its issue #1431): the queue's state is read
from the database at scrape time by a collector, so every web dyno reports the same
queue; `tally_page_views_recorded_total` counts what this dyno accepted.

    >>> metrics = Metrics(pool, stalled_after=60)     # doctest: +SKIP
    >>> metrics.views_recorded.inc(3)                 # doctest: +SKIP
    >>> metrics.exposition()[:20]                     # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import psycopg
import psycopg.rows
import psycopg_pool
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tally.db import QUERIES
from tally.web import queue_state
from tally.web.replica import ReadRouter

logger = logging.getLogger("tally.web.metrics")


class QueueCollector(Collector):
    """Reads jobs, workers, clock and page-view totals from the database per scrape."""

    def __init__(self, pool: psycopg_pool.ConnectionPool, stalled_after: float):
        self.pool = pool
        self.stalled_after = stalled_after

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("tally_database_up", "1 when the database answered this scrape.")
        try:
            with self.pool.connection() as conn:
                families = list(self._families(conn))
        except (psycopg.Error, psycopg_pool.PoolTimeout) as error:
            logger.warning("metrics: database unreachable: %s", error)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self, conn: psycopg.Connection) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "tally_jobs", "Jobs in procrastinate_jobs by task and status.", labels=["task", "status"]
        )
        for row in conn.execute(QUERIES["job_counts"]).fetchall():
            jobs.add_metric([row[0], row[1]], row[2])
        yield jobs
        oldest = queue_state.oldest_waiting_age(conn)
        yield _gauge(
            "tally_oldest_waiting_job_age_seconds",
            "Age of the oldest job ready to run but not started (0 when none waits).",
            oldest or 0.0,
        )
        processes = queue_state.process_state(conn, self.stalled_after)
        yield _gauge("tally_workers_alive", "Workers that heart-beat recently.", processes["workers_alive"])
        yield _gauge(
            "tally_worker_heartbeat_age_seconds",
            "Age of the youngest worker heartbeat (NaN when no worker ever ran).",
            _or_nan(processes["worker_heartbeat_age_seconds"]),
        )
        yield _gauge(
            "tally_clock_last_defer_age_seconds",
            "Age of the last periodic defer by any clock (NaN when none yet).",
            _or_nan(processes["clock_last_defer_age_seconds"]),
        )
        yield _gauge(
            "tally_rollup_age_seconds",
            "Seconds since the last rollup folded views into the stats tables (NaN before the first).",
            _or_nan(processes["rollup_age_seconds"]),
        )
        yield _gauge(
            "tally_rollup_views_waiting",
            "Committed page views not yet rolled up (NaN while page_views is locked).",
            _or_nan(processes["rollup_views_waiting"]),
        )
        paused = GaugeMetricFamily(
            "tally_queue_paused",
            "1 for each paused queue (tally_paused_queues): no worker starts its jobs.",
            labels=["queue"],
        )
        for row in processes["paused_queues"]:
            paused.add_metric([row["queue"]], 1)
        yield paused
        state = conn.cursor(row_factory=psycopg.rows.dict_row).execute(QUERIES["rollup_state"]).fetchone()
        total = conn.execute(QUERIES["page_views_total"], state).fetchone()[0]
        yield _gauge("tally_page_views", "Page views counted in stats (rollups plus the tail).", total)


class ReplicaCollector(Collector):
    """The replica's state as its checker last saw it, and where this dyno's reads went."""

    def __init__(self, reads: ReadRouter):
        self.reads = reads

    def collect(self) -> Iterator[Metric]:
        served = CounterMetricFamily(
            "tally_stats_reads",
            "Dashboard, stats, export and sites reads this web dyno ran, by the server that answered.",
            labels=["server"],
        )
        for server, count in self.reads.served().items():
            served.add_metric([server], count)
        yield served
        if self.reads.replica is None:
            return  # no DATABASE_REPLICA_URL: nothing to say about a replica
        status = self.reads.status()
        yield _gauge(
            "tally_replica_in_use",
            "1 while reads go to the replica (fit, within its lag).",
            int(status.in_use),
        )
        yield _gauge(
            "tally_replica_lag_seconds",
            "How far the replica is behind the primary at its last check (NaN: unknown, unreachable).",
            _or_nan(status.lag_seconds),
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


class Metrics:
    """One registry per web app: the queue collector and this dyno's counters."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(
        self, pool: psycopg_pool.ConnectionPool, stalled_after: float, reads: ReadRouter | None = None
    ):
        self.registry = CollectorRegistry()
        self.registry.register(QueueCollector(pool, stalled_after))
        if reads is not None:
            self.registry.register(ReplicaCollector(reads))
        self.views_recorded = Counter(
            "tally_page_views_recorded",
            "Page views this web dyno accepted (201).",
            registry=self.registry,
        )
        self.view_inserts = Counter(
            "tally_page_view_inserts",
            "INSERTs this web dyno ran for page views; concurrent requests share one (group commit).",
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
