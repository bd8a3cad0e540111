"""A worker's liveness tied to its database session, so a killed worker's jobs run again
within seconds (migrations/0006_worker_sessions.sql explains the lock and its table).

`python worker.py` holds a `WorkerSession` from registration until it has drained, checks it
every SESSION_CHECK_SECONDS (taking the lock again on a new session when the old one ended: a
database restart, a network blip, pg_terminate_backend), and every worker sweeps every
LIVENESS_SWEEP_SECONDS: the running jobs of workers whose lock nobody has held for
LOST_SESSION_GRACE_SECONDS are re-queued. The heartbeat rule (`retry_stalled_jobs`) stays for workers
without a session lock (the procrastinate CLI, WORKER_SESSION_LIVENESS=false behind
PgBouncer, whose pooled server sessions outlive their clients).

    >>> session = await WorkerSession.hold(settings, worker_id)   # doctest: +SKIP
    >>> await requeue_jobs_of_lost_sessions(app.connector)         # doctest: +SKIP
"""

from __future__ import annotations

import logging

import psycopg
from procrastinate.connector import BaseAsyncConnector

from tally import db
from tally.config import Config
from tally.db import QUERIES

logger = logging.getLogger("jobs.liveness")

LIVENESS_SWEEP_SECONDS = 3.0
# How often a worker makes sure its session (and lock) is there, during its drain too.
SESSION_CHECK_SECONDS = 1.0
# How long a lock must stay free before its worker counts as dead. A live worker whose session
# ended takes its lock again at its next check (1 s, plus a connection); a sweep that took a
# free lock for death at once re-queued a job its live worker went on running: it ran twice.
# A SIGKILLed worker's jobs now run again within a sweep, this, and a sweep (3 + 6 + 3 s).
LOST_SESSION_GRACE_SECONDS = 6.0


class TakenForDead(Exception):
    """The sweep forgot this worker (its lock stayed free past the grace): its jobs run elsewhere."""


class WorkerSession:
    """The connection whose session holds a worker's advisory lock, for the worker's life."""

    def __init__(self, settings: Config, worker_id: int, connection: psycopg.AsyncConnection):
        self.settings = settings
        self.worker_id = worker_id
        self.connection = connection

    @classmethod
    async def hold(cls, settings: Config, worker_id: int) -> WorkerSession:
        # The worker's lock_timeout bounds the wait should a lost session of ours still hold it.
        connection = await psycopg.AsyncConnection.connect(
            db.conninfo_for(settings)(),
            **db.connection_kwargs(settings, db.WORKER_SESSION_SETTINGS),
            autocommit=True,
        )
        try:
            await connection.execute(QUERIES["hold_worker_session"], {"worker_id": worker_id})
        except psycopg.errors.ForeignKeyViolation:
            await connection.close()
            raise TakenForDead(f"worker {worker_id} was taken for dead (its lock stayed free)") from None
        except BaseException:
            await connection.close()
            raise
        logger.info("worker %s holds its session lock", worker_id)
        return cls(settings, worker_id, connection)

    async def keep(self) -> None:
        """Check the session; when it was lost, take the lock again on a new one (or raise:
        TakenForDead, or the database's error while it is away)."""
        if not self.connection.closed:
            try:
                await self.connection.execute("SELECT 1")
                return
            except psycopg.Error as error:
                logger.warning("worker %s lost its session (%s); taking its lock anew", self.worker_id, error)
                await self.connection.close()
        self.connection = (await WorkerSession.hold(self.settings, self.worker_id)).connection

    async def release(self) -> None:
        await self.connection.close()


async def requeue_jobs_of_lost_sessions(connector: BaseAsyncConnector) -> int:
    """Re-queue the running jobs of workers whose session lock nobody holds; return how many."""
    await connector.execute_query_async(QUERIES["note_lost_sessions"])
    grace = LOST_SESSION_GRACE_SECONDS
    retried = 0
    for row in await connector.execute_query_all_async(QUERIES["jobs_of_lost_sessions"], grace=grace):
        result = await connector.execute_query_one_async(
            QUERIES["retry_stalled_job"], job_id=row["job_id"], worker_id=row["worker_id"]
        )
        if result["retried"]:
            retried += 1
            logger.warning(
                "re-queued job %s (%s): %s",
                row["job_id"],
                row["task_name"],
                f"worker {row['worker_id']}'s session ended"
                if row["worker_id"] is not None
                else "its worker stopped without writing its outcome",
            )
        elif result["aborted"]:
            logger.warning(
                "job %s (%s) aborted, as asked: worker %s's session ended before it could",
                row["job_id"],
                row["task_name"],
                row["worker_id"],
            )
    await connector.execute_query_one_async(QUERIES["delete_lost_session_workers"], grace=grace)
    return retried
