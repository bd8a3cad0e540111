"""The procrastinate connector behind `jobs.app`: the worker's, the CLI's, and the one the web
defers through (with the web's own pool). It fetches through Tally's copy of procrastinate's
fetch, which skips paused queues (migrations/0010_paused_queues.sql), and wakes the worker
each time LISTEN (re)starts.
"""

from __future__ import annotations

from typing import Any

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


def _words(query: str) -> list[str]:
    return query.split()


class ProcrastinateChanged(RuntimeError):
    """The installed procrastinate fetches jobs differently from the one Tally's copy follows."""


class CatchingUpConnector(PsycopgConnector):
    """procrastinate's psycopg connector, which wakes the worker each time LISTEN (re)starts
    and fetches through Tally's copy of procrastinate's fetch, which skips paused queues.

    A worker fetches once, then starts listening; a job deferred in between, or while a
    lost LISTEN connection was being replaced, sent its NOTIFY to nobody and would wait
    for the next poll. Once listening, one "job inserted" wake-up makes the worker look.
    """

    def __init__(self, **kwargs: Any) -> None:
        if _words(procrastinate_sql.queries["fetch_job"]) != _words(PROCRASTINATE_FETCH_QUERY):
            raise ProcrastinateChanged(
                "procrastinate's fetch_job query changed: update tally_fetch_job_v1 (paused queues) to match"
            )
        super().__init__(**kwargs)

    async def execute_query_one_async(self, query: Any, **arguments: Any) -> dict[str, Any]:
        if query == procrastinate_sql.queries["fetch_job"]:
            query = db.QUERIES["fetch_job"]
        return await super().execute_query_one_async(query, **arguments)

    async def _loop_notify(self, on_notification: Any, connection: Any, *args: Any, **kwargs: Any) -> None:
        await on_notification(channel="", payload='{"type": "job_inserted"}')
        await super()._loop_notify(on_notification, connection, *args, **kwargs)


def procrastinate_connector(config: Config) -> PsycopgConnector:
    """The connector behind `jobs.app`; its own pool serves the procrastinate CLI."""
    return CatchingUpConnector(**db.worker_pool_args(config))
