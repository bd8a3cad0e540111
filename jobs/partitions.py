"""Daily partitions of page_views (migrations/0019): made ahead of time, dropped by retention.

The SQL functions these jobs call (migrations/0019) change the catalog, which takes a lock
that a view's INSERT waits behind. Each waits 100 ms at most for it (ingest queues behind the wait) and gives
up; the job tries again a little later, and leaves what it could not do for its next run
(the default partition stores every view meanwhile).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from procrastinate import JobContext
from procrastinate.exceptions import ConnectorException, JobAborted

from jobs import app, settings
from jobs.retry import DATABASE_LOST_RETRY
from tally.db import QUERIES

logger = logging.getLogger("jobs.partitions")

# Days made ahead of today (UTC): a week of views finds its day even with the clock stopped.
DAYS_AHEAD = 7
ATTEMPTS = 30
# Partitions detached in one transaction: page_views is locked exclusively for their catalog
# changes (milliseconds each), and a backlog of days (a lowered RETENTION_DAYS) goes in few commits.
DROP_GROUP = 10
PAUSE_SECONDS = 0.2
# Live traffic held a lock too long, or a view arrived in the default partition for the day
# being made (attaching checks it holds none of that day's): both pass; try again.
_PASSING = (psycopg.errors.LockNotAvailable, psycopg.errors.CheckViolation)


def partition_name(day: datetime.date) -> str:
    """The name of a UTC day's partition: `page_views_p20261204`."""
    return f"page_views_p{day:%Y%m%d}"


@app.task(
    name="maintain_partitions", pass_context=True, lock="maintain_partitions", retry=DATABASE_LOST_RETRY
)
async def maintain_partitions(context: JobContext, timestamp: int | None = None) -> int:
    """Make the next days' partitions and those of views the default one caught; return how many.

    Async so that an abort (a draining worker's, the time limit's, a user's) cancels it where it
    waits: psycopg then cancels the statement on the server, and a move of a big day, one
    transaction, is rolled back whole (a sync job would run it to its end, past Heroku's
    SIGKILL). The views stay in the default partition, counted, for the next run."""
    connector = context.app.connector
    now = datetime.datetime.now(datetime.UTC)
    since = now - datetime.timedelta(days=settings.retention_days)  # older views are cleanup's
    caught = await connector.execute_query_all_async(QUERIES["days_in_default_partition"], since=since)
    ahead = {now.date() + datetime.timedelta(days=n) for n in range(DAYS_AHEAD + 1)}
    existing = {
        row["name"] for row in await connector.execute_query_all_async(QUERIES["page_view_partitions"])
    }
    made = 0
    left: list[str] = []
    for day in sorted(ahead | {row["day"] for row in caught}):
        if partition_name(day) in existing:
            continue
        row = await with_retries_async(
            lambda d=day: connector.execute_query_one_async(QUERIES["ensure_day_partition"], day=d)
        )
        if row is None:
            left.append(partition_name(day))
        made += row is not None and row["name"] is not None
    logger.info("partitions: %d day(s) made; views of %d day(s) waited in the default one", made, len(caught))
    if left:
        logger.warning("left for the next run (locked: a long read, a rollup): %s", ", ".join(left))
    return made


def drop_expired_partitions(
    connector: Any,
    cutoff: datetime.datetime,
    folded: dict,
    should_abort: Callable[[], bool] = lambda: False,
    refold: Callable[[], dict] | None = None,
) -> int:
    """Drop the partitions wholly before `cutoff` whose views the rollup (its state `folded`)
    holds; return how many views went. Those with views not folded are tried again once with
    the state `refold()` returns, if given.

    All are detached first, DROP_GROUP at a time (a short exclusive lock on page_views each):
    their views are gone from page_views then. Their tables are dropped after, in one
    transaction (their files removed, page_views not locked): removing the files, most of the
    job's time, does not keep expired views readable meanwhile."""
    names = [
        row["name"]
        for row in connector.execute_query_all(QUERIES["expired_page_view_partitions"], cutoff=cutoff)
    ]
    views, left = _detach(connector, names, folded, should_abort)
    if left and refold is not None and not should_abort():
        more, left = _detach(connector, left, refold(), should_abort)
        views += more
    if left:
        logger.info("left for the next cleanup (locked, or not rolled up): %s", ", ".join(left))
    # Also the tables an interrupted cleanup detached and did not drop.
    dropped = with_retries(lambda: connector.execute_query_one(QUERIES["drop_detached_days"]), should_abort)
    if dropped is not None and dropped["dropped"]:
        logger.info(
            "dropped %d day(s) of page views, %d views: %s",
            len(dropped["dropped"]),
            views,
            ", ".join(dropped["dropped"]),
        )
    return views


def _detach(
    connector: Any, names: list[str], folded: dict, should_abort: Callable[[], bool]
) -> tuple[int, list[str]]:
    """Detach the partitions `names` whose views `folded` holds, DROP_GROUP at a time: how many
    views went, and the names left (locked, or holding views not folded)."""
    views, left = 0, []
    for start in range(0, len(names), DROP_GROUP):
        group = names[start : start + DROP_GROUP]
        row = with_retries(
            lambda group=group: connector.execute_query_one(
                QUERIES["detach_rolled_up_partitions"],
                names=group,
                watermark=folded["watermark"],
                in_progress=folded["in_progress"],
            ),
            should_abort,
        )
        detached = row["detached"] if row is not None else []
        views += row["views"] if row is not None else 0
        left += sorted(set(group) - set(detached))
    return views, left


async def with_retries_async(attempt: Callable[[], Awaitable[dict]]) -> dict | None:
    """`with_retries` for an async job: its pauses, like its statements, end at an abort."""
    for _ in range(ATTEMPTS):
        try:
            return await attempt()
        except ConnectorException as exc:
            if not isinstance(exc.__cause__, _PASSING):
                raise
            await asyncio.sleep(PAUSE_SECONDS)
    return None


def with_retries(
    attempt: Callable[[], dict], should_abort: Callable[[], bool] = lambda: False
) -> dict | None:
    """`attempt()`, again after a short pause while it loses to live traffic; None if it never wins.
    Between tries it stops when `should_abort()` says so (a drain: up to 9 s of tries otherwise)."""
    for _ in range(ATTEMPTS):
        try:
            return attempt()
        except ConnectorException as exc:
            if not isinstance(exc.__cause__, _PASSING):
                raise
            if should_abort():
                raise JobAborted("stopped between two tries of a partition's change, as asked") from None
            time.sleep(PAUSE_SECONDS)
    return None
