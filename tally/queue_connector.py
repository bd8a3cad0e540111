"""The procrastinate connector behind `jobs.app`: the worker's, the CLI's, and the one the web
defers through (with the web's own pool). It fetches through Tally's copy of procrastinate's
fetch, which skips paused queues (migrations/0010_paused_queues.sql), and wakes the worker
each time LISTEN (re)starts or a job's NOTIFY came while a fetch was in flight.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

import psycopg_pool
from procrastinate import PsycopgConnector
from procrastinate import sql as procrastinate_sql

from tally import db
from tally.config import Config

# The fetch Tally's copy (migrations/0010_paused_queues.sql) was made from. A procrastinate
# upgrade that changes it stops every worker at start instead of silently losing pauses
# or running the copy against a schema it was not written for.
PROCRASTINATE_FETCH_QUERY = (
    "SELECT id, status, task_name, priority, lock, queueing_lock, args, scheduled_at, queue_name,"
    " attempts, worker_id FROM procrastinate_fetch_job_v2(%(queues)s::varchar[], %(worker_id)s);"
)
JOB_INSERTED = '{"type": "job_inserted"}'  # procrastinate's notification of a deferred job
# How long the CLI's pool waits for its first connection (worker.py opens its own, and starts
# over until the database is back). A command (defer, healthchecks, shell) says within seconds
# that it cannot connect; the CLI's worker, which must run as worker.py does, waits longer for
# a database that is starting (psycopg_pool's own default is 30 s).
OPEN_WAIT_SECONDS = 5.0
CLI_WORKER_OPEN_WAIT_SECONDS = 120.0

# procrastinate's queries Tally runs its own versions of (tally/queries.sql): the heartbeat rule
# spares workers that hold their session lock.
REPLACED = {
    procrastinate_sql.queries["select_stalled_jobs_by_heartbeat"]: "stalled_jobs_by_heartbeat",
    procrastinate_sql.queries["prune_stalled_workers"]: "prune_stalled_workers",
}

# procrastinate's writes of a job's outcome: done, failed, aborted, or to run again.
OUTCOMES = (procrastinate_sql.queries["finish_job"], procrastinate_sql.queries["retry_job"])

logger = logging.getLogger("tally.queue_connector")


def _words(query: str) -> list[str]:
    return query.split()


class NotMigrated(RuntimeError):
    """The database lacks this release's schema: the release step has not run on it."""


async def missing_migrations(connector: Any) -> list[str] | None:
    """The migrations of this release (procrastinate's and Tally's) the database has not applied;
    None when the release step never ran on it (a fresh database, or one where only
    `procrastinate schema --apply` did): it has no `tally_migrations`."""
    import migrations  # the release step's own list of its files; only workers and the CLI ask

    found = await connector.execute_query_one_async(db.QUERIES["migrations_table"])
    if not found["present"]:
        return None
    shipped = [migrations.PROCRASTINATE_PREFIX + p.name for p in migrations.procrastinate_files()]
    shipped += [p.name for p in migrations.numbered_files()]
    rows = await connector.execute_query_all_async(db.QUERIES["missing_migrations"], names=shipped)
    return [row["name"] for row in rows]


async def check_migrated(connector: Any) -> None:
    """Raise NotMigrated, saying what to run, unless every migration of this release is applied."""
    missing = await missing_migrations(connector)
    if missing is None:
        raise NotMigrated("not migrated: run `python -m migrations` (Tally's release step never ran here)")
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise NotMigrated(f"not migrated: run `python -m migrations` (the database lacks {shown})")


class ProcrastinateChanged(RuntimeError):
    """The installed procrastinate fetches jobs differently from the one Tally's copy follows."""


class CatchingUpConnector(PsycopgConnector):
    """procrastinate's psycopg connector, which wakes the worker each time LISTEN (re)starts
    and fetches through Tally's copy of procrastinate's fetch, which skips paused queues.

    A worker fetches once, then starts listening; a job deferred in between, or while a
    lost LISTEN connection was being replaced, sent its NOTIFY to nobody and would wait
    for the next poll. Once listening, one "job inserted" wake-up makes the worker look (again
    after the fetch in flight, if one is: the first fetch and LISTEN start together).

    procrastinate's worker also forgets a NOTIFY that arrives while its fetch is in flight:
    it clears its "new job" event when the fetch returns (`Worker._fetch_and_process_jobs`),
    so a job committed after that fetch's snapshot was taken, and heard before it returned,
    waited for the next poll (seen in CI under load: a job not run in 60 s). Such a
    NOTIFY is heard again once the fetch has returned.
    """

    # Set once this process's worker was taken for dead (jobs/liveness.py, TakenForDead): its
    # running jobs were re-queued and may run elsewhere, so their outcomes are no longer its to
    # write (procrastinate's finish and retry touch a job whoever runs it now).
    fenced: bool = False

    def __init__(self, **kwargs: Any) -> None:
        if _words(procrastinate_sql.queries["fetch_job"]) != _words(PROCRASTINATE_FETCH_QUERY):
            raise ProcrastinateChanged(
                "procrastinate's fetch_job query changed: update tally_fetch_job_v1 (paused queues) to match"
            )
        super().__init__(**kwargs)
        self._fetching = 0
        self._wake_after_fetch: Any = None  # the worker's notification handler, when it is owed a wake-up
        self._wake_ups: set[asyncio.Task[None]] = set()
        self._listening: Any = None  # the worker's notification handler, once it listens

    async def execute_query_async(self, query: Any, **arguments: Any) -> None:
        if query not in OUTCOMES:
            return await super().execute_query_async(query, **arguments)
        if self.fenced:
            logger.warning(
                "job %s: outcome not written (this worker was taken for dead)", arguments["job_id"]
            )
            return None
        await super().execute_query_async(query, **arguments)
        # A job that ended may have held a lock another waits behind (a second "Run now", a
        # rollup the web asked for while the minutely one ran): no NOTIFY says it is free, and
        # the one waiting waited for the next poll. The worker looks again.
        if self._listening is not None:
            self._wake(self._listening)
        return None

    async def execute_query_all_async(self, query: Any, **arguments: Any) -> list[dict[str, Any]]:
        if query in REPLACED:
            query = db.QUERIES[REPLACED[query]]
        return await super().execute_query_all_async(query, **arguments)

    async def execute_query_one_async(self, query: Any, **arguments: Any) -> dict[str, Any]:
        if query == procrastinate_sql.queries["check_connection"]:
            # `procrastinate --app=jobs.app healthchecks` asks only whether procrastinate_jobs
            # exists: it said OK on a database with no Tally schema, where every worker then
            # failed. Tally's whole schema is the check (what /api/health calls "not migrated").
            await check_migrated(self)
        if query != procrastinate_sql.queries["fetch_job"]:
            return await super().execute_query_one_async(query, **arguments)
        self._fetching += 1
        try:
            return await super().execute_query_one_async(db.QUERIES["fetch_job"], **arguments)
        finally:
            self._fetching -= 1
            if self._fetching == 0 and self._wake_after_fetch is not None:
                self._wake(self._wake_after_fetch)
                self._wake_after_fetch = None

    def _wake(self, on_notification: Any) -> None:
        """Hand the worker a "job inserted" wake-up, in a task: after the worker has cleared its
        event (it does when a fetch returns), not before."""
        wake_up = asyncio.get_running_loop().create_task(_job_inserted(on_notification))
        self._wake_ups.add(wake_up)
        wake_up.add_done_callback(self._wake_ups.discard)

    async def _loop_notify(self, on_notification: Any, connection: Any, *args: Any, **kwargs: Any) -> None:
        async def heard(channel: str, payload: str) -> None:
            if self._fetching and _is_job_inserted(payload):
                self._wake_after_fetch = on_notification
            await on_notification(channel=channel, payload=payload)

        self._listening = on_notification
        if self._fetching:  # the worker clears its event when that fetch returns
            self._wake_after_fetch = on_notification
        await _job_inserted(on_notification)
        await super()._loop_notify(heard, connection, *args, **kwargs)


async def _job_inserted(on_notification: Any) -> None:
    await on_notification(channel="", payload=JOB_INSERTED)


def _is_job_inserted(payload: str) -> bool:
    try:
        return json.loads(payload).get("type") == "job_inserted"
    except (ValueError, AttributeError):
        return False


class BoundedOpenPool(psycopg_pool.AsyncConnectionPool):
    """The pool procrastinate opens itself (the CLI's): it waits `open_wait` for a first
    connection, not psycopg_pool's 30 s (a wrong password or database kept `defer` silent that
    long), but for the CLI's worker."""

    def __init__(self, *args: Any, open_wait: float = OPEN_WAIT_SECONDS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open_wait = open_wait

    async def open(self, wait: bool = False, timeout: float | None = None) -> None:
        await super().open(wait=wait, timeout=self.open_wait if timeout is None else timeout)


def cli_open_wait(argv: list[str]) -> float:
    """How long the CLI run as `argv` waits for its first connection.

    >>> cli_open_wait(["procrastinate", "--app=jobs.app", "defer", "rollup_page_views", "{}"])
    5.0
    >>> cli_open_wait(["procrastinate", "--app=jobs.app", "worker", "--one-shot"])
    120.0
    """
    return CLI_WORKER_OPEN_WAIT_SECONDS if "worker" in argv[1:] else OPEN_WAIT_SECONDS


def procrastinate_connector(config: Config) -> PsycopgConnector:
    """The connector behind `jobs.app`; its own pool serves the procrastinate CLI."""
    open_wait = cli_open_wait(sys.argv)
    return CatchingUpConnector(
        pool_factory=lambda **kwargs: BoundedOpenPool(open_wait=open_wait, **kwargs),
        **db.worker_pool_args(config),
    )
