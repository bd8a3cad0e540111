"""A PostgreSQL reached over a real network that tests can silence: a network namespace,
a veth pair and iptables, as root.

The server runs inside a namespace named `tally-t-<pid>` and listens on its end of a
veth pair (a private /30 derived from the pid, so parallel sessions never share one);
Tally's processes reach it over TCP from the host's end, exactly as a dyno reaches its
database. `partition()` drops every packet to and from its port inside the namespace (no
RST, no ICMP: what a failover or a cloud network fault looks like); `heal()` lets them
through again. Its unix socket stays reachable throughout (sockets in the file system
know no network namespace): the tests administer and check the server through it.

    >>> with NamespacedPostgres(bin_dir) as server:          # doctest: +SKIP
    ...     server.tcp_url, server.admin_url
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

PORT = 5432
RUN_AS = "pgserver"  # the user localdb runs the server as under root (PostgreSQL refuses root)


def missing_requirement() -> str | None:
    """Why these tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces and iptables need root"
    for tool in ("ip", "iptables", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install iptables iproute2); .ci/run installs it"
    try:
        subprocess.run(["id", RUN_AS], check=True, capture_output=True)
    except subprocess.CalledProcessError:
        return f"no user {RUN_AS!r} to run PostgreSQL as (the local database creates it)"
    return None


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


class NamespacedPostgres:
    """A throwaway PostgreSQL in its own network namespace, from `bin_dir`'s binaries."""

    def __init__(self, bin_dir: Path):
        pid = os.getpid()
        self.bin_dir = bin_dir
        self.namespace = f"tally-t-{pid}"
        self.host_link, self.inner_link = f"tt{pid}h", f"tt{pid}n"  # at most 15 characters
        base = (pid & 0x3F) * 4
        prefix = f"10.{(pid >> 14) & 0xFF}.{(pid >> 6) & 0xFF}"
        self.host_address, self.server_address = f"{prefix}.{base + 1}", f"{prefix}.{base + 2}"
        self.folder = Path(tempfile.mkdtemp(prefix="tally-netns-", dir="/tmp"))
        self.data_dir = self.folder / "pg"
        self.postmaster: subprocess.Popen | None = None

    @property
    def tcp_url(self) -> str:
        return f"postgresql://postgres@{self.server_address}:{PORT}/postgres"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.folder}&port={PORT}"

    def start(self) -> NamespacedPostgres:
        _run("ip", "netns", "add", self.namespace)
        _run("ip", "link", "add", self.host_link, "type", "veth", "peer", "name", self.inner_link)
        _run("ip", "link", "set", self.inner_link, "netns", self.namespace)
        _run("ip", "addr", "add", f"{self.host_address}/30", "dev", self.host_link)
        _run("ip", "link", "set", self.host_link, "up")
        inside = ("ip", "netns", "exec", self.namespace)
        _run(*inside, "ip", "addr", "add", f"{self.server_address}/30", "dev", self.inner_link)
        _run(*inside, "ip", "link", "set", self.inner_link, "up")
        _run(*inside, "ip", "link", "set", "lo", "up")
        shutil.chown(self.folder, RUN_AS)
        # setpriv execs (no child process left between us and the postmaster to signal).
        as_user = ("setpriv", f"--reuid={RUN_AS}", f"--regid={RUN_AS}", "--clear-groups")
        _run(*as_user, str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
             "--auth=trust", "-E", "UTF8", "--no-sync")  # fmt: skip
        with (self.data_dir / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {self.host_address}/32 trust\n")
        self.postmaster = subprocess.Popen(
            [*inside, *as_user, str(self.bin_dir / "postgres"), "-D", str(self.data_dir),
             "-c", f"listen_addresses={self.server_address}", "-c", f"port={PORT}",
             "-c", f"unix_socket_directories={self.folder}", "-c", "fsync=off",
             "-c", "synchronous_commit=off", "-c", "max_connections=200"],
            stdout=subprocess.DEVNULL,
            stderr=(self.folder / "server.log").open("w"),
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.tcp_url, connect_timeout=2):
                    return self
            except psycopg.OperationalError:
                if time.monotonic() > deadline or self.postmaster.poll() is not None:
                    raise RuntimeError((self.folder / "server.log").read_text()[-2000:]) from None
                time.sleep(0.1)

    def _iptables(self, *args: str) -> None:
        _run("ip", "netns", "exec", self.namespace, "iptables", *args)

    def partition(self) -> None:
        """Drop every packet to and from the server's port: silence, no reset."""
        self._iptables("-I", "INPUT", "-p", "tcp", "--dport", str(PORT), "-j", "DROP")
        self._iptables("-I", "OUTPUT", "-p", "tcp", "--sport", str(PORT), "-j", "DROP")

    def heal(self) -> None:
        self._iptables("-F", "INPUT")
        self._iptables("-F", "OUTPUT")

    def drop_clients(self) -> int:
        """End every TCP client's session, as a failover does; return how many."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE client_addr IS NOT NULL"
            ).fetchone()
        return row[0]

    def stop(self) -> None:
        if self.postmaster is not None and self.postmaster.poll() is None:
            self.postmaster.terminate()  # the server's fast shutdown
            try:
                self.postmaster.wait(20)
            except subprocess.TimeoutExpired:
                self.postmaster.kill()
                self.postmaster.wait()
        with contextlib.suppress(subprocess.CalledProcessError):
            _run("ip", "netns", "del", self.namespace)
        with contextlib.suppress(subprocess.CalledProcessError):
            _run("ip", "link", "del", self.host_link)  # gone with the namespace, usually
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> NamespacedPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
