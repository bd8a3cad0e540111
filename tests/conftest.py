"""Fixtures: one throwaway PostgreSQL per test session, migrated, and helpers for processes.

The server is the pip-installed PostgreSQL 18 (the same as the local default) or, with
TEST_POSTGRES_BIN set to a folder of server binaries (`make test` also runs the suite
on Debian's, /usr/lib/postgresql/15/bin, JIT on), that build. It lives in a fresh folder
under /tmp (a unix socket path must stay under 107 bytes), is started before tests are
collected so that `jobs` reads its DATABASE_URL, and is deleted at the end. Set
TEST_DATABASE_URL to use an existing database instead (its tables get truncated).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import inspect
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
# Every view rolled up, counted by path (migrations/0007).
PATH_VIEWS = "SELECT sum(views) FROM page_view_day_values WHERE dim = 'path'"
VENV_BIN = Path(sys.executable).parent


@dataclasses.dataclass(frozen=True)
class TestServer:
    """The session's own PostgreSQL: tests that stop and start the database use it."""

    data_dir: Path
    bin_dir: Path | None  # None: the pip-installed PostgreSQL 18

    def start(self) -> str:
        from tally import localdb

        return localdb.ensure_running(self.data_dir, self.bin_dir)

    def stop(self, mode: str = "fast") -> None:
        from tally import localdb

        localdb.stop(self.data_dir, mode=mode, bin_dir=self.bin_dir)


_server: TestServer | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _server
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # `make test` runs the system build's suite as a background job of its shell, which
        # starts it with Ctrl-C ignored: it went on for minutes (its server too) after the
        # terminal's Ctrl-C had stopped the other. Ctrl-C reaches it (same process group).
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # SIGTERM (a CI job's timeout, `kill` of `make test`) ends the run as Ctrl-C does: the test's
    # processes and this run's server are stopped. By default it ended pytest without either,
    # and the server (as user pgserver) ran on in /tmp.
    signal.signal(signal.SIGTERM, _interrupt_once)
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        bin_dir = os.environ.get("TEST_POSTGRES_BIN")
        folder = Path(tempfile.mkdtemp(prefix="tally-test-", dir="/tmp"))
        _server = TestServer(folder / "pg", Path(bin_dir) if bin_dir else None)
        url = _server.start()
    os.environ["DATABASE_URL"] = url
    os.environ.pop("DYNO", None)
    from migrations import apply_pending

    apply_pending(url)


def _interrupt_once(signum: int, frame: object) -> None:
    # A second SIGTERM (the whole process group signalled, then tests/suites.py passing it on)
    # must not cut short the teardown the first one started.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A test that starts Tally's processes mostly waits on them: `make test` runs those apart
    # from the computing tests (tests/suites.py), since under `nice` their waits grew fourfold.
    for item in items:
        if "start_process" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.waits)


def pytest_report_header(config: pytest.Config) -> str:
    with psycopg.connect(os.environ["DATABASE_URL"]) as connection:
        version, jit, compiles = connection.execute(
            "SELECT version(), current_setting('jit'), pg_jit_available()"
        ).fetchone()
    return f"database: {version.split(' on ')[0]}, jit={jit} ({'with' if compiles else 'no'} LLVM)"


def pytest_unconfigure(config: pytest.Config) -> None:
    if _server is not None:
        _server.stop(mode="immediate")
        shutil.rmtree(_server.data_dir.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url() -> str:
    return os.environ["DATABASE_URL"]


@pytest.fixture(scope="session")
def test_server() -> TestServer:
    """The throwaway server (tests that stop and start the database need it)."""
    if _server is None:
        pytest.skip("TEST_DATABASE_URL is set: this test needs the session's own server")
    return _server


@pytest.fixture(scope="module")
def pool(database_url: str):
    """The web process's own pool (sized to its threads, autocommit, its session settings).

    One per test file: a pool that lived through test_faults' database restart holds dead
    connections (CheckedPool passes over them, but a test that counts statements would not
    expect the reconnections).
    """
    from tally.config import from_env
    from tally.db import web_pool

    with web_pool(from_env({"DATABASE_URL": database_url}, process_type="web")) as shared:
        yield shared


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def fresh_database(database_url: str) -> Iterator[str]:
    """An empty database on the session's server, dropped afterwards."""
    name = f"fresh_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    yield psycopg.conninfo.make_conninfo(database_url, dbname=name)
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(autouse=True)
def empty_tables(database_url: str) -> None:
    """Each test starts from empty data and job tables, their ids from the start.

    Only the tables that hold rows are truncated: TRUNCATE gives a table and each of its
    indexes new files, and truncating all of them (page_views' day partitions among them)
    before every test cost about a minute of each suite's run.
    """
    with psycopg.connect(database_url, autocommit=True) as connection:
        tables = [
            row[0]
            for row in connection.execute(
                "SELECT c.relname FROM pg_class c"
                " WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')"
                " AND NOT c.relispartition"
                " AND c.relname NOT IN ('tally_migrations', 'page_view_rollup_state', 'tally_raw_changes')"
            )
        ]
        holding = sql.SQL(" UNION ALL ").join(
            sql.SQL("SELECT {} WHERE EXISTS (SELECT FROM {})").format(sql.Literal(name), sql.Identifier(name))
            for name in tables
        )
        filled = [row[0] for row in connection.execute(holding)]
        if filled:
            connection.execute(
                sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(
                    sql.SQL(", ").join(map(sql.Identifier, filled))
                )
            )
        # An empty table's ids may have moved on (an insert rolled back, rows deleted).
        connection.execute(
            "SELECT setval(s.seqrelid, s.seqstart, false) FROM pg_sequence s"
            " JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.seqrelid"
            "  AND d.deptype IN ('a', 'i')"
            " JOIN pg_class t ON t.oid = d.refobjid AND t.relnamespace = 'public'::regnamespace"
            " JOIN pg_class q ON q.oid = s.seqrelid"
            " JOIN pg_sequences p ON p.schemaname = 'public' AND p.sequencename = q.relname"
            " WHERE p.last_value IS NOT NULL"
        )
        connection.execute(
            "UPDATE page_view_rollup_state"
            " SET watermark = '0', in_progress = '{}', rolled_up_at = NULL, last_folded = 0,"
            " settled_before = NULL, settled_by = NULL"
        )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "age_shift" in metafunc.fixturenames:
        from tests import ages

        metafunc.parametrize("age_shift", ages.names(), indirect=True)


@contextlib.contextmanager
def _ages_shifted(database_url: str, name: str, tz: str) -> Iterator[datetime.timedelta]:
    """tests/ages.py's shift called `name` (in zone `tz`), at the database's now, until the end."""
    from tests import ages

    with psycopg.connect(database_url, autocommit=True) as connection:
        now = connection.execute("SELECT now()").fetchone()[0]
    ages.SHIFT = ages.resolve(name, now, tz)
    try:
        yield ages.SHIFT
    finally:
        ages.SHIFT = datetime.timedelta(0)


@pytest.fixture
def ages_on_one_utc_day(database_url: str) -> Iterator[datetime.timedelta]:
    """Ages placed as if the test ran at the last 12:00 UTC (tests/ages.py): for a test whose
    expected counts assume that its views, minutes or hours old, share one UTC day. Run
    as-is in a day's first minutes, a view 30 minutes old is yesterday's, and `visitors`, a
    sum of each day's distinct ids, counts its id twice (CI once ran in a day's first minutes)."""
    with _ages_shifted(database_url, "utc-12:00", "UTC") as shift:
        yield shift


@pytest.fixture
def age_shift(request: pytest.FixtureRequest, database_url: str) -> Iterator[datetime.timedelta]:
    """The scenario's ages lengthened as tests/ages.py says (its data as if placed at another
    time of day), through tests.ages.placed, for this test only."""
    params = getattr(request.node, "callspec", None)
    tz = params.params.get("tz", "UTC") if params else "UTC"
    with _ages_shifted(database_url, request.param, tz) as shift:
        yield shift


@pytest.fixture(autouse=True, scope="module")
def jobs_app_released() -> Iterator[None]:
    """After each test file, `jobs.app` lets go of the pool a `build_app` gave it.

    procrastinate keeps an external pool until the process ends (`open` with one set is a
    no-op, `close` leaves it), so the first test file that built the web app decided every
    later test's connector: a pool sized for the web, with its 1.5 s wait, and broken for good by a
    test that restarts the database. procrastinate has no public way to let go of it.
    """
    yield
    import jobs

    connector = jobs.app.connector.get_sync_connector()  # the one `jobs.app.open(pool)` sets
    if getattr(connector, "_pool_externally_set", False):
        connector._pool = None
        connector._pool_externally_set = False


# Ports for the servers tests start, below the kernel's ephemeral range (32768-60999 on
# Linux): a port the kernel handed out by bind(("", 0)) could be handed out again, as the
# local end of any connection the other runs open, before the server came to bind it (CI
# once saw "PORT=49273 is in use" that way). A run holds a lock on each port it hands out
# (a file in the temp folder, freed when the run ends, however it ends), so two runs at once
# never hand out the same one, and none is handed out twice.
TEST_PORTS = range(20000, 32768)
PORT_LOCKS = Path(tempfile.gettempdir()) / "tally-test-ports"
_ports_held: list[int] = []  # the open lock files, kept for the run's life
# Each run walks the range from its own start, round and round.
_port_order = itertools.islice(itertools.cycle(TEST_PORTS), (os.getpid() * 7919) % len(TEST_PORTS), None)


def free_port() -> int:
    """A port no one listens on, handed out once, to this run only."""
    if not PORT_LOCKS.exists():
        with contextlib.suppress(FileExistsError):
            PORT_LOCKS.mkdir()
            PORT_LOCKS.chmod(0o1777)  # shared by every user's runs, as /tmp is
    for port in itertools.islice(_port_order, len(TEST_PORTS)):
        try:
            lock = os.open(PORT_LOCKS / str(port), os.O_CREAT | os.O_RDWR, 0o666)
        except PermissionError:  # another user's run made it: theirs to hand out
            continue
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another run holds it
            os.close(lock)
            continue
        _ports_held.append(lock)  # this run's now, handed out or found in use: never tried again
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {TEST_PORTS}")


# What a started process takes from the caller's shell: the system's variables, never
# Tally's (a PUBLIC_DASHBOARD=true or a SITES in the shell once failed the browser tests).
# LD_PRELOAD and TIME_SHIFT_FILE: under tests/at_hour.py a started process keeps the tests' clock.
INHERITED_VARIABLES = (
    *("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TMPDIR", "TERM", "SHELL"),
    *("LD_PRELOAD", "TIME_SHIFT_FILE"),
)


def process_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """A started process's environment, from scratch: the system's, the test database, `env`."""
    system = {
        name: value
        for name, value in os.environ.items()
        if name in INHERITED_VARIABLES or name.startswith("LC_")
    }
    # PYTHONPATH: the procrastinate CLI's script lives in the venv's bin, so without it the CLI
    # imported `jobs` from the checkout the venv's .pth names, not from this one.
    return {
        **system,
        "DATABASE_URL": os.environ["DATABASE_URL"],
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(ROOT),
        **(env or {}),
    }


class Process:
    """An entry file run as a subprocess, its output collected line by line in a file.

    Its environment is built from scratch (`process_environment`): every Tally variable it
    sees is one the test passed, whatever the caller's shell holds.

    >>> with Process(["worker.py"], env={"WORKER_CONCURRENCY": "2"}) as worker:
    ...     worker.wait_for_line("Starting worker")
    """

    def __init__(self, args: list[str], env: dict[str, str] | None = None):
        self.args = args
        # Kept open for the life of the process; closed in stop().
        self.log = tempfile.NamedTemporaryFile("w+", prefix="tally-proc-", suffix=".log", delete=False)  # noqa: SIM115
        full_env = process_environment(env)
        command = args if args[0].startswith("/") else [sys.executable, *args]  # an entry file, or a program
        self.popen = subprocess.Popen(
            command,
            cwd=ROOT,
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return Path(self.log.name).read_text()

    def wait_for_line(self, text: str, timeout: float = 20.0, after: int = 0) -> float:
        """Wait until `text` shows in the output (past offset `after`); return when."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output()[after:]:
                return time.monotonic()
            if self.popen.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"{text!r} not seen from {self.args}; output:\n{self.output()[-4000:]}")

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(35)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log.close()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def start_process() -> Iterator:
    """Start entry files as subprocesses; all are stopped (SIGTERM, then SIGKILL) at the end."""
    started: list[Process] = []

    def start(args: list[str], env: dict[str, str] | None = None) -> Process:
        process = Process(args, env)
        started.append(process)
        return process

    yield start
    for process in reversed(started):
        process.stop()


def expired_views(conn: psycopg.Connection, count: int) -> None:
    """Insert `count` views past any retention (90 days old, a millisecond apart, so that
    cleanup's oldest-first order is one order) and roll them up, as cleanup finds them."""
    conn.execute(
        "INSERT INTO page_views (path, viewed_at)"
        " SELECT '/old/' || (n %% 50), now() - interval '90 days' - n * interval '1 ms'"
        " FROM generate_series(1, %s) n",
        (count,),
    )
    conn.execute("SELECT tally_rollup_page_views()")


class CleanupBlocker:
    """A row lock on the view a fraction `at` along cleanup's oldest-first order, held by
    a transaction of its own: a cleanup that reaches it waits there until `release()`
    (or until the worker's lock_timeout, 5 s, fails the batch).

    A cleanup is then mid-run when a test says so, however fast the machine deletes (a
    CI machine once deleted 1.5M views inside a 3 s time limit). A row lock held by
    another transaction is also what a real cleanup can meet.

    >>> with CleanupBlocker(database_url, conn) as blocker:
    ...     blocker.wait_until_reached()  # a cleanup's DELETE now waits on the lock
    ...     blocker.release()
    """

    def __init__(self, database_url: str, watcher: psycopg.Connection, at: float = 0.5) -> None:
        self.watcher = watcher  # an autocommit connection, to see who waits
        self.locker = psycopg.connect(database_url)
        self.locker_pid = self.locker.info.backend_pid
        total = watcher.execute("SELECT count(*) FROM page_views").fetchone()[0]
        assert total > 0, "no views to hold: insert them first"
        # The id first: FOR UPDATE beside OFFSET would lock every row the OFFSET skips too.
        (view_id,) = watcher.execute(
            "SELECT id FROM page_views ORDER BY viewed_at LIMIT 1 OFFSET %s", (int(total * at),)
        ).fetchone()
        self.locker.execute("SELECT 1 FROM page_views WHERE id = %s FOR UPDATE", (view_id,))

    def waiting(self) -> int:
        """How many backends wait on the lock now."""
        return self.watcher.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY (pg_blocking_pids(pid))",
            (self.locker_pid,),
        ).fetchone()[0]

    def wait_until_reached(self, timeout: float = 60.0) -> None:
        try:
            wait_until(lambda: self.waiting() > 0, timeout, 0.02, "a cleanup to reach the held view")
        except AssertionError as error:
            sessions = self.watcher.execute(
                "SELECT pid, state, wait_event_type, wait_event, pg_blocking_pids(pid), left(query, 80)"
                " FROM pg_stat_activity WHERE backend_type = 'client backend'"
            ).fetchall()
            left = self.watcher.execute("SELECT count(*) FROM page_views").fetchone()[0]
            raise AssertionError(f"{error}; {left} views left; sessions: {sessions}") from None

    def release(self) -> None:
        if not self.locker.closed:
            self.locker.rollback()
            self.locker.close()

    def __enter__(self) -> CleanupBlocker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def statuses(conn: psycopg.Connection, task: str) -> list[str]:
    """The status of every job of `task`, oldest first."""
    return [
        row[0]
        for row in conn.execute(
            "SELECT status::text FROM procrastinate_jobs WHERE task_name = %s ORDER BY id", (task,)
        )
    ]


def defer_by_sql(conn: psycopg.Connection, task: str, count: int = 1, lock: str | None = None) -> None:
    """Defer jobs in one statement through procrastinate's own SQL (its NOTIFY included)."""
    conn.execute(
        "SELECT procrastinate_defer_jobs_v1(array_agg(ROW('default', %s, 0, %s, NULL, '{}'::jsonb, NULL)"
        "::procrastinate_job_to_defer_v1)) FROM generate_series(1, %s)",
        (task, lock, count),
    )


def sigterm_mid_cleanup(worker: Process, blocker: CleanupBlocker) -> float:
    """SIGTERM `worker` while its cleanup waits at `blocker`; once the drain's grace (under
    the 5 s lock_timeout) is over and the job aborted, let the cleanup go on to its next
    check; return drain seconds."""
    blocker.wait_until_reached()
    signalled = time.monotonic()
    worker.signal(signal.SIGTERM)
    worker.wait_for_line("still running after graceful timeout", timeout=30)
    blocker.release()
    assert worker.wait(30) == 0
    return time.monotonic() - signalled


def wait_until(predicate, timeout: float, interval: float = 0.02, message: str = "condition"):
    """Poll `predicate` until it returns a truthy value; return that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")


def record_carried(monkeypatch: pytest.MonkeyPatch, owner: type, name: str) -> list[bool]:
    """Each call of `owner.name` (a kept answer brought up to date: tally/web/carried.py,
    tally/web/tail_moves.py) from here on: whether it was carried forward (False: None, so
    counted afresh)."""
    uses: list[bool] = []
    carry = getattr(owner, name)  # a function of the class for a method, else bound or static

    def carried(*args, **kwargs):
        result = carry(*args, **kwargs)
        uses.append(result is not None)
        return result

    method = isinstance(inspect.getattr_static(owner, name), types.FunctionType)
    monkeypatch.setattr(owner, name, carried if method else staticmethod(carried))
    return uses


def request_bounds(cur: psycopg.Cursor, tz: str = "UTC") -> tuple[dict, datetime.date]:
    """The rollup state, the tail's span of days and the time, as a stats request of every site
    reads them in its snapshot (tally/web/stats.py), and today in `tz`."""
    from tally.db import QUERIES

    cur.execute(QUERIES["stats_state"], {"tz": tz})
    watermark, in_progress, now, today, tail_from, tail_to, *_ = cur.fetchone()
    bounds = {
        "watermark": watermark,
        "in_progress": in_progress,
        "site": None,
        "tz": tz,
        "tail_from": tail_from,
        "tail_to": tail_to,
        "now": now,
    }
    return bounds, today


def plan_nodes(plan: dict) -> Iterator[dict]:
    """Every node of a plan that EXPLAIN (FORMAT JSON) gave, its root's first."""
    nodes = [plan["Plan"]]
    while nodes:
        node = nodes.pop()
        yield node
        nodes += node.get("Plans", [])
