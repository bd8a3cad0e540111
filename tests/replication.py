"""A real primary and its streaming standby (`pg_basebackup -R`), each on its own TCP port of
127.0.0.1, from one build's binaries: what a Heroku follower is to its leader.

As root the servers run as the user the local database uses (PostgreSQL refuses root), as
tests/netns.py does; otherwise as the caller. The standby gets the primary's
max_connections, as a standby must.

    >>> with ReplicatedPostgres(bin_dir) as pair:          # doctest: +SKIP
    ...     pair.primary_url, pair.standby_url
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from tests.conftest import free_port

RUN_AS = "pgserver"  # the user localdb runs the server as under root
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "wal_level": "replica",
    "max_wal_senders": "4",
    "max_connections": "60",  # the standby must allow at least the primary's
    "fsync": "off",
    "synchronous_commit": "off",
    "hot_standby": "on",
}


def missing_requirement(bin_dir: Path) -> str | None:
    """Why a replicated pair cannot run here, or None when it can."""
    for tool in ("initdb", "pg_ctl", "pg_basebackup", "postgres"):
        if not (bin_dir / tool).exists():
            return f"{bin_dir} has no {tool}"
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            return "setpriv is not installed (util-linux), needed to run PostgreSQL as a user other than root"
        if subprocess.run(["id", RUN_AS], capture_output=True).returncode != 0:
            return f"no user {RUN_AS!r} to run PostgreSQL as (the local database creates it)"
    return None


class ReplicatedPostgres:
    """A throwaway primary and a standby streaming from it."""

    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.folder = Path(tempfile.mkdtemp(prefix="tally-replica-", dir="/tmp"))
        self.primary_dir, self.standby_dir = self.folder / "primary", self.folder / "standby"
        self.primary_port, self.standby_port = free_port(), free_port()

    @property
    def primary_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.primary_port}/postgres"

    @property
    def standby_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.standby_port}/postgres"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        # setpriv execs: no process is left between us and the tool.
        as_user = ("setpriv", f"--reuid={RUN_AS}", f"--regid={RUN_AS}", "--clear-groups")
        prefix = as_user if os.geteuid() == 0 else ()
        result = subprocess.run(
            [*prefix, str(self.bin_dir / tool), *args], capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stdout[-1500:]}{result.stderr[-1500:]}")

    def _pg_ctl(self, data_dir: Path, port: int, action: str, *args: str) -> None:
        options = " ".join(f"-c {name}={value}" for name, value in {**SETTINGS, "port": port}.items())
        options += f" -c unix_socket_directories={self.folder}"
        log = self.folder / f"{data_dir.name}.log"
        self._run(
            "pg_ctl", "-D", str(data_dir), "-l", str(log), "-o", options, "-w", "-t", "30", action, *args
        )

    def start(self) -> ReplicatedPostgres:
        if os.geteuid() == 0:
            shutil.chown(self.folder, RUN_AS)
        self._run(
            "initdb", "-D", str(self.primary_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"
        )
        with (self.primary_dir / "pg_hba.conf").open("a") as hba:
            hba.write("host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n")
        self._pg_ctl(self.primary_dir, self.primary_port, "start")
        return self

    def start_standby(self) -> None:
        """Copy the primary (`pg_basebackup -R`: a standby that streams from it) and start it."""
        self._run(
            "pg_basebackup", "-D", str(self.standby_dir), "-R", "-X", "stream", "-c", "fast",
            "-h", "127.0.0.1", "-p", str(self.primary_port), "-U", "postgres", "--no-sync",
        )  # fmt: skip
        self.start_standby_again()

    def start_standby_again(self) -> None:
        self._pg_ctl(self.standby_dir, self.standby_port, "start")

    def stop_standby(self, mode: str = "immediate") -> None:
        self._pg_ctl(self.standby_dir, self.standby_port, "stop", "-m", mode)

    def stop_primary(self, mode: str = "fast") -> None:
        self._pg_ctl(self.primary_dir, self.primary_port, "stop", "-m", mode)

    def start_primary_again(self) -> None:
        self._pg_ctl(self.primary_dir, self.primary_port, "start")

    def signal_standby(self, signum: int, postmaster_only: bool = False) -> None:
        """Send `signum` to the standby's postmaster and every process it started (SIGSTOP freezes it);
        to the postmaster alone with `postmaster_only` (its backends answer on, no connect does)."""
        postmaster = int((self.standby_dir / "postmaster.pid").read_text().split()[0])
        children = []
        for stat in [] if postmaster_only else Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                # The parent pid is the second field after the command's closing parenthesis.
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                    children.append(int(stat.parent.name))
        for pid in (postmaster, *children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def wait_for_replay(self, timeout: float = 20.0) -> float:
        """Wait until the standby has replayed everything the primary has written; return seconds."""
        started = time.monotonic()
        with psycopg.connect(self.primary_url, autocommit=True) as primary:
            # The insert location, not the write one: with synchronous_commit off a commit can
            # be in the primary's WAL buffers, not yet written, when its client hears of it.
            (target,) = primary.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
        with psycopg.connect(self.standby_url, autocommit=True) as standby:
            while time.monotonic() - started < timeout:
                if standby.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)).fetchone()[0]:
                    return time.monotonic() - started
                time.sleep(0.02)
        raise AssertionError(f"the standby did not replay up to {target} within {timeout} s")

    def stop(self) -> None:
        for data_dir, port in ((self.standby_dir, self.standby_port), (self.primary_dir, self.primary_port)):
            if (data_dir / "postmaster.pid").exists():
                with contextlib.suppress(RuntimeError):  # already stopped
                    self._pg_ctl(data_dir, port, "stop", "-m", "immediate")
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> ReplicatedPostgres:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
