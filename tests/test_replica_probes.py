"""The primary's WAL positions the replica's lag is measured against (tally/web/replica_probes.py),
read from the session's server: a replica that has replayed where the primary's WAL stands is 0
behind, one that has replayed none of it is behind since the oldest position kept, and positions
the primary stopped giving say nothing."""

from __future__ import annotations

import time

from tally.web.replica_probes import PrimaryPositions, lsn
from tests.conftest import wait_until


def test_a_replica_is_behind_since_the_primarys_wal_passed_what_it_replayed(pool, conn):
    positions = PrimaryPositions(pool, max_lag_seconds=30)
    assert positions.interval == 0.5 and positions.fresh_seconds == 2.0
    positions.start()
    try:
        wait_until(lambda: positions.reached("0/0", time.monotonic())[0] is not None, 5, 0.02, "a position")
        first = time.monotonic()
        conn.execute("CREATE TEMPORARY TABLE wal_written AS SELECT generate_series(1, 1000) AS n")
        (now,) = conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
        wait_until(lambda: positions.reached(now, time.monotonic())[0] == 0.0, 5, 0.02, "the position read")
        # Replayed none of what was read: behind since the first position was asked, at least,
        # and no moment it had all the primary wrote.
        behind, had_all_at = positions.reached("0/0", time.monotonic())
        assert behind is not None and behind >= time.monotonic() - first - 0.1 and had_all_at is None
        # Replayed further than the primary's WAL stood when last read: caught up, now.
        moment = time.monotonic()
        assert positions.reached(f"{lsn(now) // 2**32 + 1:X}/0", moment) == (0.0, moment)
    finally:
        positions.close()
    # No position since: the primary's word is stale, and the replica's own word stands.
    stale = time.monotonic() + positions.fresh_seconds + 0.1
    assert positions.reached(now, stale) == (None, None)


def test_a_lag_limit_of_a_day_spans_its_positions_twice():
    positions = PrimaryPositions(None, max_lag_seconds=86_400)  # never started: no primary needed
    assert positions.interval * PrimaryPositions.KEPT >= 2 * 86_400
    assert lsn("16/B374D848") == 0x16 * 2**32 + 0xB374D848
