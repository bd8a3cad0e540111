"""The daily salt of the visitor hash (tally/web/visitors.py): made ahead, deleted after two days."""

from __future__ import annotations

import logging

from procrastinate import JobContext

from jobs import app
from jobs.retry import DATABASE_LOST_RETRY
from tally.db import QUERIES

logger = logging.getLogger("jobs.visitor_salts")


@app.task(
    name="rotate_visitor_salts", pass_context=True, lock="rotate_visitor_salts", retry=DATABASE_LOST_RETRY
)
async def rotate_visitor_salts(context: JobContext, timestamp: int | None = None) -> int:
    """Make today's and tomorrow's salts; delete those two days old, so their ids cannot be
    recomputed; return how many were deleted."""
    row = await context.app.connector.execute_query_one_async(QUERIES["rotate_visitor_salts"])
    logger.info("visitor salts: %d made, %d deleted", row["made"], row["deleted"])
    return row["deleted"]
