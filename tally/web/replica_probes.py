"""What the replica's checker (tally/web/replica_check.py) asks of the pools, without a query:
whether the replica's pool can connect, and whether the primary is gone.

The checker's own connection answering says nothing of new ones: a replica whose slots are all
taken, or whose postmaster hung, refuses every connect while its old backends answer, and was
vouched for while every read waited out the pool. And a replica whose lag grows because its
primary is gone is not the one to blame.
"""

from __future__ import annotations

import psycopg_pool

from tally.checked_pool import RecordingPool

# A connect of the replica's pool that has not answered in this long will not serve a read that
# waits for it (REPLICA_POOL_WAIT_SECONDS, 0.5 s): a hung postmaster answers no connect until
# the connect_timeout (2 s), while the backends it started go on answering.
CONNECT_STALLED_SECONDS = 0.4
# How long the check waits for a connection of the primary's pool when it asks whether the
# primary is down: a check must end well within its STALE_AFTER_SECONDS.
PRIMARY_PROBE_SECONDS = 0.3


def pool_trouble(replica: psycopg_pool.ConnectionPool | None) -> str | None:
    """Why the replica's pool can give reads no connection, or None (all its connections lent
    to reads is no trouble). A pool in trouble is prodded to try again: psycopg_pool gives up
    after RECONNECT_GIVE_UP_SECONDS and waits for a read, and no read comes to a replica that is
    not vouched for, so without this it never came back once a slot freed."""
    if not isinstance(replica, RecordingPool):
        return None
    trouble = replica.connect_trouble(CONNECT_STALLED_SECONDS)
    if trouble is not None and not replica.connecting():
        replica.check()  # grows the pool again (it has no idle connection to test)
    return trouble


def primary_down(primary: psycopg_pool.ConnectionPool) -> bool:
    """Whether the primary is gone: its pool gives no connection and its last connect failed.

    Only a closed connection counts (the checkout's `server_hung_up` finds it without a round
    trip), never a query that waits: a frozen or cut-off primary reads as up, and the replica
    as lagging, as before. A busy primary's pool times out too, but its connects succeed."""
    try:
        conn = primary.getconn(timeout=PRIMARY_PROBE_SECONDS)
    except psycopg_pool.PoolTimeout:
        return getattr(primary, "last_connect_error", None) is not None
    primary.putconn(conn)
    return False
