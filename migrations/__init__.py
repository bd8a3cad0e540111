"""Apply pending schema migrations: procrastinate's own, then Tally's numbered files.

Run as the release step (`python -m migrations`). Everything happens under one
PostgreSQL advisory lock, so two releases at once apply each migration exactly once;
each file runs in its own transaction together with its bookkeeping row, so a failed
file leaves nothing half-applied and the next release retries it. A file marked in
`-- step:` sections (one that changes a live table) runs a transaction per step, each
waiting at most STEP_LOCK_TIMEOUT for a lock and retried; its steps are written to be
run again, and its bookkeeping row comes after the last.

Then, once every numbered file is applied, the functions that name every dimension
(migrations/dimension_functions.sql, rendered from tally/dimensions.py's table) are applied
again, every release, a dimension's column that page_views lacks added first, as a
step. These are the one exception to "numbered files": their columns are the table's.

    >>> apply_pending("postgresql:///tally")   # doctest: +SKIP
    ['procrastinate:schema.sql', '0001_page_views.sql', ...]
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from pathlib import Path
from typing import Any

import psycopg
from procrastinate.schema import SchemaManager
from psycopg import sql

from tally.dimension_sql import FUNCTIONS_FILE, dimension_columns, dimension_functions

MIGRATIONS_DIR = Path(__file__).resolve().parent
PROCRASTINATE_MIGRATIONS_DIR = Path(SchemaManager.get_migrations_path())
# Any fixed 64-bit number; it names "a Tally release is migrating".
ADVISORY_LOCK_KEY = 7_245_010_001
PROCRASTINATE_PREFIX = "procrastinate:"
# The workers' sessions set client_connection_check_interval, which PostgreSQL 14 brought
# (tally/db.py): an older server takes the release and then refuses every worker's connection,
# so the release refuses it first.
MIN_SERVER_VERSION = 140000
TALLY_FILE = re.compile(r"^\d{4}_[a-z0-9_]+\.sql$")
# A file with these lines runs a transaction per step (migrations/0019 converts a live table
# this way); each step must be safe to run again after an interrupted release.
STEP_MARK = re.compile(r"^-- step: (.+)$", re.MULTILINE)
STEP_LOCK_TIMEOUT = "500ms"
STEP_RETRY_SECONDS = 600.0
# A lock held by live traffic, or a state a step waits for (the rollup to fold a view).
RETRYABLE = (psycopg.errors.LockNotAvailable, psycopg.errors.ObjectNotInPrerequisiteState)
# How long a release waits for another's lock before it gives up and fails: a release that
# waited without a bound behind a lock nobody would give back (one left on a pooler's server
# connection, held there for the pooler's server_lifetime) hung every deploy after it. As long
# as a step may wait behind live traffic; a line each minute meanwhile says for whom.
RELEASE_LOCK_WAIT_SECONDS = 600.0
RELEASE_LOCK_TRY_SECONDS = 0.5
RELEASE_LOCK_NOTE_SECONDS = 60.0
# Through a transaction pooler the unlock may run on another server connection than the lock:
# it is tried again this long, each try a fresh statement the pooler may send to the holder.
STRAY_LOCK_UNLOCK_SECONDS = 2.0
HOLDER = (
    "SELECT a.pid, a.application_name"
    "  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
    " WHERE l.locktype = 'advisory' AND l.granted"
    "   AND (l.classid::bigint << 32 | l.objid::bigint) = %s"
)
HELD_HERE = (
    "SELECT pg_backend_pid(), EXISTS (SELECT FROM pg_locks l WHERE l.locktype = 'advisory'"
    " AND l.granted AND l.pid = pg_backend_pid() AND (l.classid::bigint << 32 | l.objid::bigint) = %s)"
)
THROUGH_A_POOLER = (
    "DATABASE_URL goes through a connection pooler (PgBouncer, Heroku's connection pooling):"
    " run the release step on the direct database URL"
)

logger = logging.getLogger("tally.migrations")


def tally_files() -> list[Path]:
    """Tally's migration files, in the order they apply."""
    return numbered_files()


def numbered_files() -> list[Path]:
    """Every numbered file of this release (tests stand in an older release for tally_files)."""
    return sorted(p for p in MIGRATIONS_DIR.iterdir() if TALLY_FILE.match(p.name))


def procrastinate_files() -> list[Path]:
    """procrastinate's migration files shipped with the installed version, in order."""
    return sorted(PROCRASTINATE_MIGRATIONS_DIR.glob("*.sql"))


def apply_pending(conninfo: str, **connect_kwargs: Any) -> list[str]:
    """Apply what is pending; return the names applied (empty when up to date).

    `connect_kwargs` are more libpq parameters (the release step passes Tally's timeouts
    and keepalives, so a silent network fails it instead of hanging it).
    """
    applied_now: list[str] = []
    with psycopg.connect(conninfo, autocommit=True, **connect_kwargs) as conn:
        if conn.info.server_version < MIN_SERVER_VERSION:
            # Before any change: the release would pass, and the workers then fail to connect.
            raise ServerTooOld(
                f"Tally needs PostgreSQL {MIN_SERVER_VERSION // 10000} or later; this server is"
                f" {conn.info.parameter_status('server_version')}: nothing was applied"
            )
        locked_by = _take_release_lock(conn)
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS tally_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT name FROM tally_migrations")}
            applied_now += _apply_procrastinate(conn, done)
            for path in tally_files():
                if path.name not in done:
                    _apply(conn, path.name, path.read_text(encoding="utf-8"))
                    applied_now.append(path.name)
            # The templates are written against this release's whole schema; a release whose
            # files stop short of it (an older one, in the tests) has its own functions.
            if {path.name for path in numbered_files()} <= done | set(applied_now):
                apply_dimensions(conn)
        except BaseException:
            with contextlib.suppress(psycopg.Error):  # the error that stopped it is the one to tell
                _give_back_release_lock(conn, locked_by)
            raise
        if not _give_back_release_lock(conn, locked_by):
            raise ReleaseLockLost(
                f"the release lock was no longer this session's at the end (server pid {locked_by} took"
                f" it): {THROUGH_A_POOLER}; the migrations it applied stay applied"
            )
    return applied_now


def apply_dimensions(conn: psycopg.Connection) -> None:
    """Add each dimension's column page_views lacks, then create or replace the functions that
    name every dimension, rendered from the table. Run by every release: the functions are
    replaced with what they already are unless the table changed."""
    name = FUNCTIONS_FILE.name
    present = {
        row[0]
        for row in conn.execute(
            "SELECT attname FROM pg_attribute"
            " WHERE attrelid = 'page_views'::regclass AND attnum > 0 AND NOT attisdropped"
        )
    }
    for column in dimension_columns():
        if column not in present:
            # Catalog only on a partitioned table (no rewrite), but it needs every partition's
            # ACCESS EXCLUSIVE lock for a moment: a step, waiting briefly behind live traffic.
            add = sql.SQL("ALTER TABLE page_views ADD COLUMN IF NOT EXISTS {} text").format(
                sql.Identifier(column)
            )
            _apply_step(conn, name, f"add column page_views.{column}", add.as_string(conn))
    try:
        with conn.transaction():
            conn.execute(dimension_functions().encode())  # the repository's SQL and names
    except psycopg.Error as error:
        error.add_note(name)
        raise
    logger.info("dimension functions applied (%s)", ", ".join(dimension_columns()))


class ReleaseLockTimeout(RuntimeError):
    """Another session held the release lock for longer than RELEASE_LOCK_WAIT_SECONDS."""


class ServerTooOld(RuntimeError):
    """The server is older than MIN_SERVER_VERSION."""


class ReleaseLockLost(RuntimeError):
    """The release lock was taken on one server connection and the release ran on others: a
    transaction pooler between the release and the server."""


def _take_release_lock(conn: psycopg.Connection) -> int:
    """Take the lock that makes releases one at a time, and return the server pid that holds it.

    Say whom this one waits for, if anyone (a release that only waits printed nothing, however
    long the other one took), and give up after RELEASE_LOCK_WAIT_SECONDS. Then make sure the
    lock is this session's: through a transaction pooler the next statement runs on another
    server connection, and the lock stays behind on the one that took it."""
    deadline = time.monotonic() + RELEASE_LOCK_WAIT_SECONDS
    next_note = 0.0
    while True:
        taken, pid = conn.execute(
            "SELECT pg_try_advisory_lock(%s), pg_backend_pid()", (ADVISORY_LOCK_KEY,)
        ).fetchone()
        if taken:
            break
        now = time.monotonic()
        who = _lock_holder(conn)
        if now >= deadline:
            raise ReleaseLockTimeout(
                f"gave up waiting for another release to finish after {RELEASE_LOCK_WAIT_SECONDS:g} s"
                f" ({who}): if no release is running, `SELECT pg_terminate_backend(pid)` on that pid frees"
                " the lock"
            )
        if now >= next_note:
            logger.info("waiting for another release to finish (%s)", who)
            next_note = now + RELEASE_LOCK_NOTE_SECONDS
        time.sleep(RELEASE_LOCK_TRY_SECONDS)
    if next_note:
        logger.info("the other release finished; going on")
    here, held = conn.execute(HELD_HERE, (ADVISORY_LOCK_KEY,)).fetchone()
    if not held:
        _give_back_release_lock(conn, pid)
        raise ReleaseLockLost(
            f"the release lock was taken by server pid {pid} and the next statement ran on pid {here}:"
            f" {THROUGH_A_POOLER}; nothing was applied"
        )
    return pid


def _lock_holder(conn: psycopg.Connection) -> str:
    """Who holds the release lock, for a log line; a session that is not a release's is named so:
    a release run through a pooler left its lock on a server connection another client now uses."""
    holder = conn.execute(HOLDER, (ADVISORY_LOCK_KEY,)).fetchone()
    if holder is None:
        return "it has just ended"
    name = holder[1] or "no application_name"
    who = f"server pid {holder[0]}, {name}"
    if "release" not in name:
        who += (
            ": not a release's session; a release run through a connection pooler leaves its lock on"
            " a pooled server connection"
        )
    return who


def _give_back_release_lock(conn: psycopg.Connection, pid: int) -> bool:
    """Unlock, and say whether the lock was this session's. Through a pooler the unlock may run on
    another server connection than the lock (false, and the lock stays), so it is tried again for
    a moment while the server pid that took it still holds it, each try a statement the pooler
    may send there."""
    deadline = time.monotonic() + STRAY_LOCK_UNLOCK_SECONDS
    while True:
        if conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,)).fetchone()[0]:
            return True
        holder = conn.execute(HOLDER, (ADVISORY_LOCK_KEY,)).fetchone()
        if holder is None or holder[0] != pid:
            return False  # not this release's to give back (any more)
        if time.monotonic() >= deadline:
            logger.error(
                "the release lock stays on server pid %s, which this release cannot reach: %s;"
                " `SELECT pg_terminate_backend(%s)` on the direct URL frees it",
                pid,
                THROUGH_A_POOLER,
                pid,
            )
            return False
        time.sleep(0.05)


def _apply_procrastinate(conn: psycopg.Connection, done: set[str]) -> list[str]:
    shipped = [PROCRASTINATE_PREFIX + p.name for p in procrastinate_files()]
    has_schema = conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL").fetchone()
    if not any(name.startswith(PROCRASTINATE_PREFIX) for name in done):
        if not has_schema[0]:
            # A fresh database: the full schema equals every shipped migration applied.
            _apply(conn, PROCRASTINATE_PREFIX + "schema.sql", SchemaManager.get_schema(), shipped)
            return [PROCRASTINATE_PREFIX + "schema.sql"]
        # Installed by other means (`procrastinate schema --apply`): take it as current.
        logger.warning("procrastinate schema found without records; recording it as current")
        _record(conn, shipped)
        return []
    applied = []
    for path in procrastinate_files():
        name = PROCRASTINATE_PREFIX + path.name
        if name not in done:
            _apply(conn, name, path.read_text(encoding="utf-8"))
            applied.append(name)
    return applied


def _apply(
    conn: psycopg.Connection, name: str, sql: str, also_record: tuple[str, ...] | list[str] = ()
) -> None:
    logger.info("applying migration %s", name)
    try:
        steps = split_steps(sql)
        if steps:
            for title, step_sql in steps:
                _apply_step(conn, name, title, step_sql)
            with conn.transaction():
                _record(conn, [name, *also_record])
            return
        with conn.transaction():
            # SQL files from this repository or the installed procrastinate, never user input.
            conn.execute(sql.encode())
            _record(conn, [name, *also_record])
    except psycopg.Error as error:
        error.add_note(name)  # for main's one line: which file failed
        raise


def split_steps(sql: str) -> list[tuple[str, str]]:
    """A file's `-- step: title` sections, in order; empty for a file of one transaction."""
    parts = STEP_MARK.split(sql)
    return list(zip(parts[1::2], parts[2::2], strict=True))


def _apply_step(conn: psycopg.Connection, name: str, title: str, sql: str) -> None:
    """Run one step in its own transaction; wait for locks only briefly, and try again.

    A step that waits behind live traffic holds up every request queued behind it: it
    gives up after STEP_LOCK_TIMEOUT and retries, for at most STEP_RETRY_SECONDS.
    """
    deadline = time.monotonic() + STEP_RETRY_SECONDS
    pause = 0.05
    attempts = 0
    while True:
        attempts += 1
        started = time.monotonic()
        try:
            with conn.transaction():
                conn.execute("SELECT set_config('lock_timeout', %s, true)", (STEP_LOCK_TIMEOUT,))
                conn.execute(sql.encode())
            took = time.monotonic() - started
            logger.info("migration %s: %s (attempt %d, %.3f s)", name, title, attempts, took)
            return
        except RETRYABLE as exc:
            if time.monotonic() + pause > deadline:
                raise RuntimeError(
                    f"migration {name}: step {title!r} gave up after {attempts} attempts: {exc}"
                ) from exc
            logger.info("migration %s: %s must wait (%s); again in %.2f s", name, title, exc.sqlstate, pause)
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


def _record(conn: psycopg.Connection, names: list[str]) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO tally_migrations (name) VALUES (%s) ON CONFLICT DO NOTHING",
            [(name,) for name in names],
        )


def main() -> int:
    from tally import config, db, logs

    settings = config.load_or_exit("release")
    logs.setup_logging(settings)
    from tally.localdb import database_url

    logs.log_start(settings, "migrations/__main__.py")
    try:
        applied = apply_pending(
            database_url(settings.database_url), **db.connection_kwargs(settings, db.RELEASE_SESSION_SETTINGS)
        )
    except psycopg.OperationalError as error:
        # A database that is down or not there (yet): one line, not a traceback. What was
        # applied stays applied (each migration commits); the next release goes on from it.
        logger.error("release failed, no connection to the database: %s", " ".join(str(error).split()))
        return 1
    except (psycopg.Error, RuntimeError) as error:
        # A statement refused (a role without CREATE, an object in the way): one line too,
        # naming the migration; the ones before it stay applied.
        where = "".join(f" in {note}" for note in getattr(error, "__notes__", ()))
        message = " ".join(str(error).split())
        logger.error("release failed%s: %s: %s", where, type(error).__name__, message)
        return 1
    logger.info("release done: %d migration(s) applied", len(applied))
    return 0
