"""The local default database: one server per data dir, shared, never stopped by a process exiting."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import fasteners
import psycopg
import pytest

from tally import localdb
from tests.conftest import ROOT

pytestmark = pytest.mark.waits  # on timers and servers (tests/suites.py)

START = "from pathlib import Path; from tally import localdb; print(localdb.ensure_running(Path({!r})))"
START_AND_WAIT = START + "; import time; time.sleep(60)"


@pytest.fixture
def data_dir():
    folder = Path(tempfile.mkdtemp(prefix="tally-ldb-", dir="/tmp"))
    yield folder / "pg"
    localdb.stop(folder / "pg", mode="immediate")
    shutil.rmtree(folder, ignore_errors=True)


def test_two_cold_starts_at_once_share_one_server(data_dir):
    starts = [
        subprocess.Popen(
            [sys.executable, "-c", START.format(str(data_dir))], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    urls = {start.communicate(timeout=120)[0].strip() for start in starts}
    assert [start.returncode for start in starts] == [0, 0, 0]
    assert len(urls) == 1
    with psycopg.connect(urls.pop()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_start_waits_for_one_under_way_instead_of_reading_its_half_made_data_dir(data_dir):
    """pgserver reads PG_VERSION before its own lock: a start read it empty while another's initdb
    was writing it, and failed (`invalid literal for int()`; one of three at once in CI). Here the
    other start is this test: it holds the start's lock with PG_VERSION as initdb begins it."""
    data_dir.mkdir()
    (data_dir / "PG_VERSION").write_text("")
    under_way = fasteners.InterProcessLock(str(data_dir.parent / f".{data_dir.name}.start.lock"))
    assert under_way.acquire(timeout=5)
    try:
        start = subprocess.Popen(
            [sys.executable, "-c", START.format(str(data_dir))],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        with pytest.raises(subprocess.TimeoutExpired):
            start.wait(3)  # it failed at once before, reading the empty PG_VERSION
        shutil.rmtree(data_dir)  # what the other start left: nothing, as if its initdb failed
    finally:
        under_way.release()
    out, err = start.communicate(timeout=120)
    assert start.returncode == 0, err
    with psycopg.connect(out.strip()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("ending", [None, signal.SIGTERM, signal.SIGKILL])
def test_a_process_leaving_never_stops_the_server_under_the_others(data_dir, ending):
    url = localdb.ensure_running(data_dir)
    script = START if ending is None else START_AND_WAIT  # None: a normal exit, atexit hooks run
    user = subprocess.Popen(
        [sys.executable, "-c", script.format(str(data_dir))], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert user.stdout.readline().strip() == url
    if ending is not None:
        user.send_signal(ending)
    user.wait(30)
    assert localdb.running_url(data_dir) == url
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_stop_stops_it_and_the_next_process_starts_it_again(data_dir):
    url = localdb.ensure_running(data_dir)
    assert localdb.stop(data_dir) is True
    assert localdb.running_url(data_dir) is None
    assert localdb.stop(data_dir) is False
    assert localdb.ensure_running(data_dir) == url
