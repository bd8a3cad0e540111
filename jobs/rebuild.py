"""Rebuild the rollups of the UTC days since a date from the raw views: the task `rebuild_rollups`.

The rollups fold each view once, by transaction id (docs/ARCHITECTURE.md, "Exact stats without
scanning page views"), so views deleted from `page_views` afterwards (a backfill run twice, a
wrong import) stay counted. After such a delete an operator runs

    $ procrastinate --app=jobs.app defer rebuild_rollups '{"since": "2026-11-01"}'

and the worker, in one transaction, unfolds those days (migrations/0032: their rollup rows go,
their views and events take this transaction's id), stores a search engine's name with their
views stored without it (tally/search_engines.py: so an engine's visitors count once across its
domains, as for the views the web collects now), stores their paths as browsers send them
(tally/paths.py: `/über` as `/%C3%BCber`, as the web stores them now) and runs the rollup
unchanged. Readers see the old rollups until it commits and the rebuilt ones after; an attempt
cut short (killed, drained) rolls back whole and keeps nothing.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import time

import psycopg
import psycopg.rows
import psycopg_pool
from procrastinate import BaseRetryStrategy, JobContext
from procrastinate.jobs import Job
from procrastinate.retry import RetryDecision

from jobs import app, settings
from jobs.middleware import WrongArguments
from jobs.time_limit import time_limit
from tally.db import QUERIES
from tally.paths import TO_ENCODE_PATTERN, stored_path
from tally.search_engines import SEARCH_ENGINE_DOMAINS, referrer_name

logger = logging.getLogger("jobs.rebuild")

# How many empty transactions to commit, at most, before this one's id is in its own snapshot
# (see `make_own_views_visible`); one always suffices, the rest is a guard.
VISIBILITY_TRIES = 5


class RebuildRefused(ValueError):
    """`since` is not a day the rollups can be rebuilt from: not a date, after today, or a day the
    cleanup may have cut into. The same on every attempt, so never retried."""


@dataclasses.dataclass(frozen=True)
class RebuildRetry(BaseRetryStrategy):
    """Retries a rebuild that failed on a lock (a long rollup holding the state's row past the
    worker's lock_timeout, an operator's DELETE holding rows) or a lost database, with a growing
    wait; a refused `since` or arguments the task does not take, never."""

    max_attempts: int = 5
    wait_step_seconds: int = 10

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        if isinstance(exception, RebuildRefused | WrongArguments) or job.attempts >= self.max_attempts:
            return None
        return RetryDecision(retry_in={"seconds": self.wait_step_seconds * (job.attempts + 1)})


def parse_since(since: object) -> datetime.date | None:
    """The UTC day `since` names ("YYYY-MM-DD"; None: the oldest that can be rebuilt), or
    RebuildRefused saying what is wrong."""
    if since is None:
        return None
    if not isinstance(since, str):
        raise RebuildRefused(f'since must be a date as "YYYY-MM-DD", not {since!r}')
    try:
        return datetime.datetime.strptime(since, "%Y-%m-%d").date()
    except ValueError:
        raise RebuildRefused(f'since must be a date as "YYYY-MM-DD", not {since!r}') from None


@app.task(
    name="rebuild_rollups",
    pass_context=True,
    retry=RebuildRetry(),
    # The rollup's own lock: a minutely rollup job waits in the queue for the rebuild to end
    # (and the rebuild for it), instead of failing on the state's row after lock_timeout.
    lock="rollup_page_views",
)
# No time limit, as the rollup: the rebuild is one transaction, and an attempt cut short keeps
# nothing, so under JOB_TIMEOUT_SECONDS a rebuild of more days than fit in it would start over
# for good. A draining worker still aborts it (cancelled where it awaits: rolled back).
@time_limit(None)
async def rebuild_rollups(context: JobContext, since: str | None = None) -> int:
    """Rebuild the rollups of the UTC days from `since` (a "YYYY-MM-DD" string; none: the oldest
    day the raw views allow, RETENTION_DAYS - 2 days ago) to today from the raw views and events;
    return how many views were folded."""
    day = parse_since(since)
    pool = context.app.connector.pool
    started = time.monotonic()
    async with pool.connection() as conn, conn.transaction():
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        try:
            await cur.execute("SELECT * FROM tally_unfold_days(%s, %s)", (day, settings.retention_days))
        except psycopg.errors.InvalidParameterValue as error:
            raise RebuildRefused(error.diag.message_primary or str(error)) from None
        unfolded = await cur.fetchone()
        assert unfolded is not None
        own = unfolded["unfolded_by"]
        named = await name_search_engines(cur, own, unfolded["rebuilt_since"])
        paths = await store_paths(cur, own, unfolded["rebuilt_since"])
        unfolded_at = time.monotonic()
        await make_own_views_visible(conn, pool, own)
        await cur.execute("SELECT tally_rollup_page_views() AS views")
        folded = (await cur.fetchone() or {})["views"]
        # What the rollup recorded must hold this transaction's views as folded, else they would
        # be the stats' tail after the commit (exact, but every request would group them).
        await cur.execute(
            "SELECT %(own)s::xid8 < watermark AND NOT %(own)s::xid8 = ANY (in_progress) AS folded"
            " FROM page_view_rollup_state",
            {"own": own},
        )
        if not (await cur.fetchone() or {}).get("folded"):
            raise RuntimeError("the rollup did not fold the unfolded days; rolled back, nothing changed")
    finished = time.monotonic()
    logger.info(
        "rollups since %s rebuilt: %d views and %d events unfolded (%d days), %d views given their"
        " search engine's name, %d views and %d events their path stored as browsers send it, %d views"
        " folded; %.2f s unfolding, %.2f s folding, the rollup state held %.2f s",
        unfolded["rebuilt_since"].isoformat(),
        unfolded["views_unfolded"],
        unfolded["events_unfolded"],
        unfolded["days_marked"],
        named,
        paths["views"],
        paths["events"],
        folded,
        unfolded_at - started,
        finished - unfolded_at,
        finished - started,
    )
    return folded


async def name_search_engines(cur: psycopg.AsyncCursor, own: int, since: datetime.date) -> int:
    """Store a search engine's name with the views this rebuild unfolded that were stored without
    it, as the web stores it with the views it collects: the days rebuilt then count an id that
    searched on two of an engine's domains once. The name needs the Public Suffix List, which is
    Python's: the domains are read, named here, and written back. How many views it named."""
    params = {"own": own, "since": since, "engines": SEARCH_ENGINE_DOMAINS}
    await cur.execute(QUERIES["unfolded_search_engine_domains"], params)
    names = {row["domain"]: referrer_name(row["domain"]) for row in await cur.fetchall()}
    named = {domain: name for domain, name in names.items() if name != domain}
    if not named:
        return 0
    await cur.execute(
        QUERIES["name_unfolded_search_engines"],
        {**params, "domains": list(named), "names": list(named.values())},
    )
    return cur.rowcount


async def store_paths(cur: psycopg.AsyncCursor, own: int, since: datetime.date) -> dict[str, int]:
    """Store the paths of the views and events this rebuild unfolded as the web stores the paths
    it collects (tally/paths.py: `/über` and `/%c3%bcber` as `/%C3%BCber`, as browsers send it):
    the days rebuilt then count such a page once, not once per form it was sent in. How many
    views and events changed."""
    params = {"own": own, "since": since}
    await cur.execute(QUERIES["unfolded_unstored_paths"], {**params, "to_encode": TO_ENCODE_PATTERN})
    stored = {row["path"]: stored_path(row["path"]) for row in await cur.fetchall()}
    changed = {path: as_stored for path, as_stored in stored.items() if as_stored != path}
    if not changed:
        return {"views": 0, "events": 0}
    await cur.execute(
        QUERIES["store_unfolded_paths"],
        {**params, "paths": list(changed), "stored": list(changed.values())},
    )
    return await cur.fetchone() or {"views": 0, "events": 0}


async def make_own_views_visible(
    conn: psycopg.AsyncConnection, pool: psycopg_pool.AsyncConnectionPool, own: int
) -> None:
    """Make the open transaction `conn` see its own id as committed in `pg_current_snapshot()`.

    A snapshot's xmax is the last *completed* transaction id + 1, and the snapshot leaves the
    session's own id out of its in-progress list: while no transaction that began after this one
    has ended, this id is at or past xmax, `pg_visible_in_snapshot` says no, and the rollup
    would fold none of the views just unfolded and record a watermark at or below their id (all
    of them the tail after the commit). An empty transaction on another connection that takes an
    id and commits moves xmax past ours; a busy database does it by itself.
    """
    for _ in range(VISIBILITY_TRIES):
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        await cur.execute("SELECT pg_visible_in_snapshot(%s::xid8, pg_current_snapshot()) AS visible", (own,))
        row = await cur.fetchone()
        if row and row["visible"]:
            return
        async with pool.connection() as other:
            await other.execute("SELECT pg_current_xact_id()")  # autocommit: its id, then commit
    raise RuntimeError(f"transaction {own} is not visible in its own snapshot")
