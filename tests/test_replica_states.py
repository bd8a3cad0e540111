"""What health and the log say of a replica (`pg_basebackup -R`, tests/replication.py) in the
states an outsider found them wrong in: its slots full or its postmaster hung while its checker's
old connection answered (`in use`, and every read waited out the replica pool's 0.5 s); a frozen
replica thawing (three lines in 60 ms, the first with a stale lag); the primary down while the
replica had everything it sent (`lagging`, and reads moved to the down primary: 503); a web
started with the primary down (`unreachable`, of a replica that answered every check).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from tests import replication
from tests.conftest import free_port, wait_until
from tests.test_replica import ADMIN_TOKEN as OWNER_TOKEN
from tests.test_replica import _bin_dir, get, insert_views, routed_reads, skip_without_a_standby

pytestmark = [pytest.mark.slow, skip_without_a_standby]
FALLBACK_BUDGET_SECONDS = 2.0  # DESIGN's bound on reads' move to the primary


VIEWS = 300


@pytest.fixture(scope="module")
def pair():
    from migrations import apply_pending

    with replication.ReplicatedPostgres(_bin_dir()) as started:
        apply_pending(started.primary_url)
        with psycopg.connect(started.primary_url, autocommit=True) as primary:
            primary.execute("CREATE TABLE counted AS SELECT generate_series(1, 5) AS n")
            insert_views(primary, VIEWS, "/p")
        started.start_standby()
        started.wait_for_replay()
        yield started


@contextlib.contextmanager
def routed(pair, max_lag: int = 30) -> Iterator:
    """A web pool on the pair's primary and a started ReadRouter with its replica."""
    from tally.config import from_env
    from tally.db import web_pool

    env = {"DATABASE_URL": pair.primary_url, "DATABASE_REPLICA_URL": pair.standby_url}
    config = from_env({**env, "REPLICA_MAX_LAG_SECONDS": str(max_lag)}, process_type="web")
    with web_pool(config) as primary, routed_reads(primary, config) as reads:
        # Seen caught up, as the tests' stops of the primary assume: just after the primary came
        # back the standby's receiver reconnects within seconds, and a replica in use but never
        # seen caught up is rightly not `primary down` (CI stopped the primary in that moment).
        in_use = ("in use", 0.0)
        wait_until(lambda: tuple(dataclasses.astuple(reads.status())) == in_use, 10, 0.02, "caught up")
        yield reads


def count(reads):
    """A read that says where it ran and what it found."""

    def read(pool) -> tuple[str, int]:
        with pool.connection() as conn:
            (found,) = conn.execute("SELECT count(*) FROM counted").fetchone()
        return ("replica" if pool is reads.replica else "primary"), found

    return read


def take_every_slot(url: str) -> list[psycopg.Connection]:
    """Connections to `url` until it answers `too many clients` (a superuser's take the reserved too)."""
    taken = []
    while True:
        try:
            taken.append(psycopg.connect(url, autocommit=True, connect_timeout=2))
        except psycopg.OperationalError as error:
            assert "too many clients" in str(error), error
            return taken


def end_the_pools_connections(standby: psycopg.Connection, reads) -> None:
    """End the replica pool's sessions (as its max_lifetime, or a proxy's idle timeout, ends
    them), not the checker's: it has run the check, the pool's connections nothing or ''."""
    wait_until(lambda: reads.replica.get_stats()["pool_available"] == 3, 10, 0.02, "the pool's connections")
    ended = standby.execute(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
        " WHERE application_name = 'web.1' AND query NOT LIKE '%pg_is_in_recovery%'"
    ).fetchall()
    assert len(ended) == 3 and all(done for (done,) in ended), ended


def read_until_steady(reads, seconds: float) -> tuple[float, float, str]:
    """Read for `seconds`: (slowest read, slowest after FALLBACK_BUDGET_SECONDS, server of the last);
    no more than two reads wait out the replica pool's wait."""
    started, slowest, slowest_late, server, waited = time.monotonic(), 0.0, 0.0, "", 0
    while time.monotonic() - started < seconds:
        began = time.monotonic()
        server, found = reads.run(count(reads))
        assert found == 5
        took = time.monotonic() - began
        slowest, waited = max(slowest, took), waited + (took > 0.3)
        if began - started > FALLBACK_BUDGET_SECONDS:
            slowest_late = max(slowest_late, took)
        time.sleep(0.05)
    assert waited <= 2, waited
    print(f"reads that waited out the pool: {waited}")
    return slowest, slowest_late, server


def test_a_replica_whose_slots_are_all_taken_is_full_and_reads_stop_waiting_for_it(pair, caplog):
    """The checker kept its connection and vouched; the pool could open none: every read waited
    its 0.5 s, then the primary answered, while health said `in use` and the log nothing."""
    caplog.set_level(logging.INFO, logger="tally.web.replica")
    with routed(pair) as reads:
        taken = take_every_slot(pair.standby_url)
        try:
            end_the_pools_connections(taken[0], reads)
            taken += take_every_slot(pair.standby_url)  # their slots too, before the pool reconnects
            slowest, slowest_late, server = read_until_steady(reads, 3.5)
            assert (reads.status().state, reads.status().lag_seconds, server) == ("full", None, "primary")
            assert slowest < FALLBACK_BUDGET_SECONDS and slowest_late < 0.2, (slowest, slowest_late)
            assert "replica full" in caplog.text and "too many clients" in caplog.text
        finally:
            for connection in taken:
                connection.close()
        freed_at = time.monotonic()
        wait_until(lambda: reads.status().state == "in use", 10, 0.05, "the replica back")
        back_after = time.monotonic() - freed_at
        assert reads.run(count(reads)) == ("replica", 5)
    print(f"full: reads at most {slowest:.2f} s, then {slowest_late:.3f} s; back {back_after:.2f} s after")


def test_a_hung_postmaster_is_unreachable_though_its_backends_answer(pair, caplog):
    """SIGSTOP on the postmaster alone: the checker's backend answers on, every connect hangs."""
    caplog.set_level(logging.INFO, logger="tally.web.replica")
    with routed(pair) as reads, psycopg.connect(pair.standby_url, autocommit=True) as standby:
        end_the_pools_connections(standby, reads)
        pair.signal_standby(signal.SIGSTOP, postmaster_only=True)
        try:
            slowest, slowest_late, server = read_until_steady(reads, 3.5)
            assert (reads.status().state, server) == ("unreachable", "primary")
            assert slowest < FALLBACK_BUDGET_SECONDS and slowest_late < 0.2, (slowest, slowest_late)
            assert "its pool cannot connect" in caplog.text
        finally:
            pair.signal_standby(signal.SIGCONT, postmaster_only=True)
        resumed_at = time.monotonic()
        wait_until(lambda: reads.status().state == "in use", 10, 0.05, "the replica back")
        back_after = time.monotonic() - resumed_at
        assert reads.run(count(reads)) == ("replica", 5)
    print(
        f"hung postmaster: reads at most {slowest:.2f} s, then {slowest_late:.3f} s; back {back_after:.2f} s"
    )


def test_reads_that_only_keep_the_pool_busy_leave_the_replica_in_use(pair, caplog):
    """Three slow reads hold the pool's three connections: a fourth goes to the primary after
    the pool's wait, and the replica is well: still in use, nothing logged."""
    caplog.set_level(logging.INFO, logger="tally.web.replica")
    with routed(pair) as reads:
        wait_until(
            lambda: reads.replica.get_stats()["pool_available"] == 3, 10, 0.02, "the pool's connections"
        )
        caplog.clear()

        def slow(pool) -> None:
            with pool.connection() as conn:
                conn.execute("SELECT pg_sleep(1.5)")

        holders = [threading.Thread(target=reads.run, args=(slow,)) for _ in range(3)]
        for holder in holders:
            holder.start()
        wait_until(lambda: reads.replica.get_stats()["pool_available"] == 0, 10, 0.01, "the three reads")
        assert reads.run(count(reads)) == ("primary", 5)
        assert reads.status().state == "in use"
        for holder in holders:
            holder.join()
        assert reads.run(count(reads)) == ("replica", 5)
        assert "replica" not in caplog.text


def test_a_check_that_hung_through_a_freeze_neither_vouches_nor_logs(pair, caplog):
    """After SIGCONT the check that started before the freeze answered, vouched with its stale lag
    (`replica in use: 0.6 s behind`), went stale at once (`unreachable`), and the next one said
    `in use` again: three lines in 60 ms. The next check alone now says how the replica is."""
    from tally.config import from_env
    from tally.db import replica_pool, web_pool
    from tally.web.replica_check import STALE_AFTER_SECONDS, ReplicaCheck

    caplog.set_level(logging.INFO, logger="tally.web.replica")
    env = {"DATABASE_URL": pair.primary_url, "DATABASE_REPLICA_URL": pair.standby_url}
    config = from_env(env, process_type="web")
    with web_pool(config) as primary, replica_pool(config) as replica:
        check = ReplicaCheck(primary, replica, config)  # checks run here, one at a time
        connection = check._check_once(None, time.monotonic())
        assert check.status().state == "in use"
        hung: list = []
        pair.signal_standby(signal.SIGSTOP)
        try:
            checking = threading.Thread(
                target=lambda: hung.append(check._check_once(connection, time.monotonic()))
            )
            checking.start()
            time.sleep(STALE_AFTER_SECONDS + 0.3)
            assert check.status().state == "unreachable"
            assert "its check has not answered" in caplog.text
            caplog.clear()
        finally:
            pair.signal_standby(signal.SIGCONT)
        checking.join(10)
        assert hung and hung[0] is connection  # the hung check answered, on its connection
        assert check.status().state == "unreachable" and caplog.records == []
        check._check_once(connection, time.monotonic())
        assert check.status().state == "in use"
        assert [record.getMessage() for record in caplog.records] == ["replica in use: 0.0 s behind"]
        connection.close()


def test_with_the_primary_down_reads_stay_on_a_replica_that_has_all_it_sent(pair, caplog):
    """The primary stopped: the replica's lag (time since caught up) passed the limit, reads
    moved to the down primary (503) and health said `lagging`, blaming the replica. A replica
    that has replayed all it received keeps serving; health says `primary down`."""
    caplog.set_level(logging.INFO, logger="tally.web.replica")
    with routed(pair, max_lag=1) as reads:
        pair.stop_primary("fast")
        try:
            stopped_at = time.monotonic()
            wait_until(lambda: reads.status().state == "primary down", 10, 0.05, "the primary down")
            said_after = time.monotonic() - stopped_at
            assert reads.status().in_use and reads.status().lag_seconds > 0
            assert reads.run(count(reads)) == ("replica", 5)
            time.sleep(1.5)  # past REPLICA_MAX_LAG_SECONDS: still read, still `primary down`
            assert reads.status().state == "primary down" and reads.status().lag_seconds > 1
            assert reads.run(count(reads)) == ("replica", 5)
            # On a loaded machine the primary's pool may fail its connect only after the lag limit
            # passed: `lagging` for a moment, then this. What it says last is what it says now.
            said = [record.getMessage() for record in caplog.records if record.name == "tally.web.replica"]
            assert said and "replica in use with the primary down" in said[-1], said
        finally:
            pair.start_primary_again()
        wait_until(lambda: reads.status().state == "in use", 15, 0.05, "the primary back")
        assert reads.run(count(reads)) == ("replica", 5)
    print(f"primary down: said {said_after:.2f} s after the stop")


def test_the_primary_down_is_said_before_the_lag_limit(pair):
    """Within REPLICA_MAX_LAG_SECONDS health said `in use` with the primary down (3, 5.5, 8 s
    behind, a growing lag and no word why), and `primary down` only past the limit."""
    with routed(pair, max_lag=30) as reads:
        pair.stop_primary("fast")
        try:
            stopped_at = time.monotonic()
            wait_until(lambda: reads.status().state == "primary down", 15, 0.05, "the primary down")
            assert time.monotonic() - stopped_at < 30 and reads.status().in_use
            assert reads.run(count(reads)) == ("replica", 5)
        finally:
            pair.start_primary_again()
        wait_until(lambda: reads.status().state == "in use", 15, 0.05, "the primary back")


def test_a_replica_that_lost_its_primary_with_wal_unreplayed_is_lagging(pair):
    """Replay paused, then the primary stopped: the replica lacks what it received; it is not used."""
    with routed(pair, max_lag=1) as reads, psycopg.connect(pair.standby_url, autocommit=True) as standby:
        standby.execute("SELECT pg_wal_replay_pause()")  # asked: replay stops at its next record
        paused = "SELECT pg_get_wal_replay_pause_state() = 'paused'"
        wait_until(lambda: standby.execute(paused).fetchone()[0], 10, 0.02, "replay paused")
        with psycopg.connect(pair.primary_url, autocommit=True) as primary:
            primary.execute("INSERT INTO counted VALUES (6)")
            (written,) = primary.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
        # Received before the primary stops, or the standby has replayed all it has and is rightly
        # in use. The insert location, not the write one: with synchronous_commit off
        # (tests/replication.py) the write location can stand before the commit, and a standby
        # whose receiver was not yet back from the last test's restart "had" it (CI, once).
        received = "SELECT pg_last_wal_receive_lsn() >= %s::pg_lsn"
        wait_until(
            lambda: standby.execute(received, (written,)).fetchone()[0], 10, 0.02, "the insert received"
        )
        pair.stop_primary("fast")
        try:
            try:
                wait_until(lambda: reads.status().state == "lagging", 10, 0.05, "the replica lagging")
            except AssertionError as error:
                positions = "SELECT pg_last_wal_replay_lsn()::text, pg_last_wal_receive_lsn()::text"
                held = standby.execute(positions).fetchone()
                raise AssertionError(f"{error}; the standby's replayed and received: {held}") from None
            time.sleep(1)
            assert reads.status().state == "lagging"
        finally:
            standby.execute("SELECT pg_wal_replay_resume()")
            pair.start_primary_again()
            with psycopg.connect(pair.primary_url, autocommit=True) as primary:
                primary.execute("DELETE FROM counted WHERE n = 6")
            pair.wait_for_replay()


def test_a_link_gone_silent_is_lagging_though_the_standby_says_it_streams(pair):
    """The link between primary and standby silently cut, the web reaching both: the standby's
    receiver says `streaming` and it has replayed all it received until wal_receiver_timeout
    (60 s) ends the receiver, so health said `in use`, lag 0, and the replica answered stats a
    minute stale past a lag limit of 5 s (an outsider's iptables DROP of the replication port).
    Here the primary's WAL sender is frozen: the primary writes on, the standby hears nothing."""
    with routed(pair, max_lag=2) as reads, psycopg.connect(pair.primary_url, autocommit=True) as primary:
        (sender,) = primary.execute("SELECT pid FROM pg_stat_replication").fetchone()
        os.kill(sender, signal.SIGSTOP)
        try:
            primary.execute("INSERT INTO counted VALUES (6)")
            written = time.monotonic()
            wait_until(lambda: reads.status().state == "lagging", 10, 0.02, "the replica lagging")
            said_after = time.monotonic() - written
            assert reads.run(count(reads)) == ("primary", 6)
            # The lag runs from the primary's last position the standby has, read at most 0.5 s
            # before the write; the state from the check after, every 0.5 s.
            assert 2 - 0.5 <= said_after <= 2 + FALLBACK_BUDGET_SECONDS, said_after
        finally:
            os.kill(sender, signal.SIGCONT)
            primary.execute("DELETE FROM counted WHERE n = 6")
        pair.wait_for_replay()
        wait_until(lambda: reads.status().state == "in use", 10, 0.02, "the replica back")
        assert reads.run(count(reads)) == ("replica", 5)
    print(f"a silent link: lagging {said_after:.2f} s after the write")


def test_the_web_with_the_primary_down_answers_stats_from_the_replica(pair, start_process):
    """Through the real web.py: health 503 for the database, `primary down` for the replica (not
    `lagging`), and /api/stats and /api/sites 200 with the replica's numbers past the lag limit."""
    port = free_port()
    web = start_process(
        ["web.py"],
        {"DATABASE_URL": pair.primary_url, "DATABASE_REPLICA_URL": pair.standby_url,
         "ADMIN_TOKEN": OWNER_TOKEN, "REPLICA_MAX_LAG_SECONDS": "1", "PORT": str(port), "DYNO": "web.1"},
    )  # fmt: skip
    web.wait_for_line("Serving on")
    wait_until(lambda: answer(port, "/api/health")[1].get("replica") == "in use", 10, 0.05, "in use")
    pair.stop_primary("fast")
    try:
        # Once the primary's pool has failed a connect (seconds on a loaded machine; `lagging`
        # meanwhile, as the time since caught up passes the limit), and past REPLICA_MAX_LAG_SECONDS.
        wait_until(
            lambda: (
                answer(port, "/api/health")[1].get("replica") == "primary down"
                and answer(port, "/api/health")[1]["replica_lag_seconds"] > 1
            ),
            15,
            0.1,
            "primary down, past the lag limit",
        )
        status, body = answer(port, "/api/health")
        assert (status, body["database"], body["replica"]) == (503, "unreachable", "primary down")
        status, body = answer(port, "/api/stats?days=30")
        assert (status, body["total_views"]) == (200, VIEWS)
        assert answer(port, "/api/sites")[0] == 200
        # The dashboard too: its numbers from the replica, the queue (the primary's) said out of reach.
        status, page, _ = get(port, "/?days=30")
        assert status == 200 and b'id="queue-unreachable"' in page, (status, page[:300])
        # `lagging` may be said before the primary's pool has failed a connect (above), never after.
        output = web.output()
        assert "replica in use with the primary down" in output
        assert "replica lagging" not in output[output.index("replica in use with the primary down") :]
    finally:
        pair.start_primary_again()
    wait_until(
        lambda: answer(port, "/api/health")[1].get("replica") == "in use", 15, 0.05, "the primary back"
    )


def answer(port: int, path: str) -> tuple[int, dict]:
    status, body, _ = get(port, path)
    return status, json.loads(body)


def test_a_web_started_with_the_primary_down_calls_its_standby_unverified_not_unreachable(pair, caplog):
    """A web started during the primary's outage cannot tell the replica is this primary's
    standby (the check compares their system identifiers): it reads nothing from it, as before,
    and says so as `unverified` where it said `unreachable` of a replica that answered. Once the
    primary answers, the check vouches for the standby as usual."""
    from tally.config import from_env
    from tally.db import web_pool

    caplog.set_level(logging.INFO, logger="tally.web.replica")
    env = {"DATABASE_URL": pair.primary_url, "DATABASE_REPLICA_URL": pair.standby_url}
    config = from_env(env, process_type="web")
    pair.stop_primary("fast")
    try:
        with web_pool(config) as primary, routed_reads(primary, config) as reads:
            wait_until(lambda: reads.status().state != "starting", 10, 0.05, "a first check")
            time.sleep(1.5)  # several checks: the state holds, never `in use`
            assert dataclasses.astuple(reads.status()) == ("unverified", None)
            assert not reads.check.usable()
            said = [record.getMessage() for record in caplog.records if record.name == "tally.web.replica"]
            assert any("unverified" in line and "DATABASE_URL" in line for line in said), said
            assert not any("replica unreachable" in line for line in said), said
            pair.start_primary_again()
            wait_until(lambda: reads.status().state == "in use", 15, 0.05, "the primary back")
            assert reads.run(count(reads)) == ("replica", 5)
    finally:
        with contextlib.suppress(RuntimeError):
            pair.start_primary_again()  # already running when the test got that far
