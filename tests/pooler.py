"""A real PgBouncer in transaction mode in front of the session's database, as Heroku's connection
pooling is: each transaction goes to whichever server connection is free.

It listens on a unix socket of its own folder (no TCP port), takes every user of the session's
database (auth_type = trust) and ignores libpq's `options`, as the README says to set it up. As
root it runs as the user the local database uses (PgBouncer refuses root), as
tests/replication.py does. `round_robin` hands a client's consecutive transactions to the server
connections in turn (PgBouncer's server_round_robin), so that two statements of one client land
on two server connections every time, not only under load.

    >>> with PgBouncer(database_url) as bouncer:          # doctest: +SKIP
    ...     psycopg.connect(bouncer.url)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from tests.conftest import free_port

RUN_AS = "pgserver"  # the user localdb runs the server as under root
BINARY = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def missing() -> str | None:
    """Why PgBouncer cannot run here, or None when it can."""
    if not Path(BINARY).exists():
        return "pgbouncer is not installed (apt-get install pgbouncer)"
    return None


class PgBouncer:
    """PgBouncer (transaction mode) in front of the database of `database_url`."""

    def __init__(self, database_url: str, *, pool_size: int = 4, round_robin: bool = False):
        self.target = psycopg.conninfo.conninfo_to_dict(database_url)
        self.pool_size = pool_size
        self.round_robin = round_robin
        self.folder = Path(tempfile.mkdtemp(prefix="tally-bouncer-", dir="/tmp"))
        self.port = free_port()  # names the socket file only: no TCP listener
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return psycopg.conninfo.make_conninfo(
            host=str(self.folder),
            port=str(self.port),
            dbname=self.target.get("dbname", "postgres"),
            user=self._user(),
        )

    def _user(self) -> str:
        return str(self.target.get("user") or os.environ.get("USER") or "postgres")

    def _server(self) -> str:
        parts = {key: self.target[key] for key in ("host", "port", "dbname") if self.target.get(key)}
        return " ".join(f"{key}={value}" for key, value in parts.items())

    def __enter__(self) -> PgBouncer:
        user = self._user()
        (self.folder / "users.txt").write_text(f'"{user}" ""\n')
        (self.folder / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = {self._server()}\n"
            "[pgbouncer]\n"
            "listen_addr =\n"
            f"listen_port = {self.port}\n"
            f"unix_socket_dir = {self.folder}\n"
            "auth_type = trust\n"
            f"auth_file = {self.folder / 'users.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\n"
            f"min_pool_size = {self.pool_size if self.round_robin else 0}\n"
            f"server_round_robin = {1 if self.round_robin else 0}\n"
            "max_client_conn = 200\n"
            "ignore_startup_parameters = extra_float_digits, options\n"
        )
        command = [BINARY, str(self.folder / "pgbouncer.ini")]
        if os.geteuid() == 0:
            shutil.chown(self.folder, RUN_AS)
            for name in ("users.txt", "pgbouncer.ini"):
                shutil.chown(self.folder / name, RUN_AS)
            command[1:1] = ["-u", RUN_AS]
        self.log = open(self.folder / "log", "w")  # closed in __exit__
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                break
            except psycopg.OperationalError as error:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    log = (self.folder / "log").read_text()[-2000:]
                    self.__exit__()
                    raise RuntimeError(f"pgbouncer did not start: {error}; {log}") from None
                time.sleep(0.1)
        if self.round_robin:
            self._open_every_server_connection()
        return self

    def _open_every_server_connection(self) -> None:
        """Make the pool's server connections exist at once (min_pool_size fills it slowly): one
        transaction open on each of them together."""
        clients = [psycopg.connect(self.url) for _ in range(self.pool_size)]
        try:
            for client in clients:
                client.execute("SELECT 1")  # opens a transaction: it keeps its server connection
            for client in clients:
                client.commit()  # a client that leaves mid-transaction has its server connection closed
        finally:
            for client in clients:
                client.close()

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # PgBouncer's immediate shutdown
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(AttributeError):
            self.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)
