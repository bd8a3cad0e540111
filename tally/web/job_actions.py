"""What the owner can do to the queue: retry, cancel (or abort), in bulk; pause and resume queues.

Each change is one statement of tally/queries.sql (or procrastinate's own cancel), and
each is logged with who made it: "owner (bearer token)" or "owner (session)", never an
address. Retrying and resuming send the NOTIFY that a new job sends, so a worker starts
the job at once instead of at its next poll.

    >>> with pool.connection() as conn:                    # doctest: +SKIP
    ...     retry(conn, 42, actor="owner (session)")
    Outcome(status=202, body={'job_id': 42, 'status': 'todo', 'was': 'failed'})
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any

import procrastinate
import psycopg
from psycopg.rows import dict_row

from tally.db import QUERIES
from tally.web import queue_state

logger = logging.getLogger("tally.web.actions")

# One request changes at most this many jobs (the web's statements have 5 s): call again for more.
BULK_LIMIT = 1_000
# A queue's NOTIFY channel is `procrastinate_queue_v1#<name>`, and channel names stop at 63 bytes.
QUEUE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,40}")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """The answer to an action: an HTTP status and its JSON body (`{"error": ...}` when refused)."""

    status: int
    body: dict[str, Any]

    @property
    def sentence(self) -> str:
        return self.body.get("error") or self.body.get("done", "")


def _refused(status: int, sentence: str) -> Outcome:
    return Outcome(status, {"error": sentence})


def _rows(conn: psycopg.Connection, name: str, **params: Any) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(QUERIES[name], params)
        return cur.fetchall()


def retry(conn: psycopg.Connection, job_id: int, actor: str) -> Outcome:
    """A failed, cancelled or aborted job back to `todo`, at once; 404 unknown, 409 in another state."""
    try:
        rows = _rows(conn, "retry_job", job_id=job_id)
    except psycopg.errors.UniqueViolation:
        # procrastinate lets one job of a queueing lock wait at a time (the web's rollup requests).
        (waiting,) = _rows(conn, "waiting_job_of_same_queueing_lock", job_id=job_id) or [{"id": "?"}]
        return _refused(
            409,
            f"Job {job_id} cannot wait again while job {waiting['id']} of its queueing lock waits;"
            " that one will do the same work.",
        )
    if not rows:
        job = queue_state.job_detail(conn, job_id)
        if job is None:
            return _refused(404, f"There is no job {job_id}.")
        return _refused(
            409, f"Job {job_id} is {job['status']}; only failed, cancelled or aborted jobs can be retried."
        )
    logger.info("job %s retried (was %s) by %s", job_id, rows[0]["was"], actor)
    done = f"Job {job_id} was {rows[0]['was']} and waits to run again."
    return Outcome(202, {"job_id": job_id, "status": "todo", "was": rows[0]["was"], "done": done})


def cancel(conn: psycopg.Connection, jobs_app: procrastinate.App, job_id: int, actor: str) -> Outcome:
    """A waiting job to `cancelled`; a running one asked to abort (procrastinate's abort path)."""
    job = queue_state.job_detail(conn, job_id)
    if job is None:
        return _refused(404, f"There is no job {job_id}.")

    # What the cancel did, not the status read above, says which: a worker may start the job
    # between the two (answered "cancelled" once, for a job that then ran and succeeded). A
    # cancel without abort changes only a waiting job; the abort then reaches a running one.
    # On `conn`: the web's jobs_app draws from the same pool, and a cancel holding one of its
    # connections while it waited for another left 4 cancels at once (the pool's size) waiting
    # on each other until the pool's timeout, answered 503.
    def cancelled(abort: bool) -> bool:
        return jobs_app.job_manager.cancel_job_by_id(job_id, abort=abort, connection=conn)

    if job["status"] in ("todo", "doing") and cancelled(abort=False):
        logger.info("job %s cancelled by %s", job_id, actor)
        done = f"Job {job_id} is cancelled."
        return Outcome(200, {"job_id": job_id, "status": "cancelled", "done": done})
    if job["status"] not in ("todo", "doing") or not cancelled(abort=True):
        status = (queue_state.job_detail(conn, job_id) or job)["status"]
        return _refused(409, f"Job {job_id} is {status}; only waiting or running jobs can be cancelled.")
    logger.info("job %s (running) asked to abort by %s", job_id, actor)
    # In the past tense: the notice stays on a reload, after the job has ended.
    done = f"Job {job_id} was asked to abort while it ran (its status says how it ended)."
    return Outcome(202, {"job_id": job_id, "status": "doing", "abort_requested": True, "done": done})


def retry_matching(conn: psycopg.Connection, filters: dict[str, Any], actor: str) -> Outcome:
    """Retry the failed, cancelled and aborted jobs of a filter, newest first, BULK_LIMIT at most."""
    if filters["status"] not in (None, "failed", "cancelled", "aborted"):
        return _refused(409, "Only failed, cancelled or aborted jobs can be retried: filter by one of those.")
    try:
        (row,) = _rows(conn, "retry_jobs_matching", **filters, limit=BULK_LIMIT)
    except psycopg.errors.UniqueViolation:  # a job of a queueing lock deferred meanwhile
        return _refused(
            409, "A job was deferred meanwhile with the queueing lock of one to retry; try again."
        )
    logger.info("%s jobs retried in bulk (filter %s) by %s", row["retried"], _shown(filters), actor)
    done = "1 job waits to run again." if row["retried"] == 1 else f"{row['retried']} jobs wait to run again."
    return Outcome(202, {"retried": row["retried"], "limit": BULK_LIMIT, "done": done})


def cancel_matching(conn: psycopg.Connection, filters: dict[str, Any], actor: str) -> Outcome:
    """Cancel the waiting jobs of a filter and ask its running ones to abort, BULK_LIMIT at most."""
    if filters["status"] not in (None, "todo", "doing"):
        return _refused(409, "Only waiting or running jobs can be cancelled: filter by todo or doing.")
    (row,) = _rows(conn, "cancel_jobs_matching", **filters, limit=BULK_LIMIT)
    logger.info("%s jobs cancelled in bulk (filter %s) by %s", row["cancelled"], _shown(filters), actor)
    jobs = "1 job" if row["cancelled"] == 1 else f"{row['cancelled']} jobs"
    done = f"{jobs} cancelled (running ones asked to abort)."
    return Outcome(202, {"cancelled": row["cancelled"], "limit": BULK_LIMIT, "done": done})


def pause(conn: psycopg.Connection, queue: str, actor: str) -> Outcome:
    """No worker starts a job of `queue` from now on, until it is resumed."""
    (row,) = _rows(conn, "pause_queue", queue=queue)
    logger.info("queue %s paused by %s", queue, actor)
    done = f"Queue {queue} is paused: no worker starts its jobs."
    return Outcome(200, {"queue": queue, "paused": True, "paused_at": row["paused_at"], "done": done})


def resume(conn: psycopg.Connection, queue: str, actor: str) -> Outcome:
    """Let workers start `queue`'s jobs again, and wake them now."""
    (row,) = _rows(conn, "resume_queue", queue=queue)
    if row["resumed"]:
        logger.info("queue %s resumed by %s", queue, actor)
    done = f"Queue {queue} runs." if row["resumed"] else f"Queue {queue} was not paused."
    return Outcome(200, {"queue": queue, "paused": False, "done": done})


def paused_queues(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """The paused queues with when each was paused."""
    return _rows(conn, "paused_queues")


def _shown(filters: dict[str, Any]) -> str:
    return " ".join(f"{name}={value}" for name, value in filters.items() if value is not None) or "none"
