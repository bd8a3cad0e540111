"""Visitors of the last 5 minutes, carried forward from one request to the next.

`current_visitors` counts the distinct ids with a view or an event in the 5 minutes to now.
Counted in SQL (current_visitors) it reads every view with an id of those minutes: at a steady
200 views/s 60,000 of them, 20-50 ms a stats request (pip), the most of any part of an answer.
So the web keeps, per site (or all of them), each id's latest time of the window up to now,
with the snapshot it read them in, and the next request reads only the views and events
recorded since, as tally/web/tail_moves.py reads the tail: adds them, and drops the ids whose
latest time has left the window. A view dated after now (a clock far off) waits until now
reaches it. The rules for carrying a kept count forward are those of tally/web/carried.py (no
raw rows removed or changed since, and its snapshot saw nothing this one does not), and its
window must not begin after this one's; else, and on a standby, it is read whole. The count
is SQL's (tests/test_web_current_visitors.py holds it to the query, arrivals by arrival).
"""

from __future__ import annotations

import dataclasses
import datetime
import heapq
import threading
from typing import Any

import psycopg

from tally.db import QUERIES
from tally.web.kept import Snapshot

WINDOW = datetime.timedelta(minutes=5)
# Past this many rows since the kept snapshot (a backfill of the last minutes), a whole read.
MAX_CHANGED_ROWS = 50_000
# Under this many ids in the window, the query (well under a millisecond) is what carrying a
# count costs (a snapshot read and a query of four arms to plan): it is kept from this many on.
CARRY_FROM_IDS = 1_000
# A site's count is carried under a lock, one of these by the site's hash: a lock per site
# named would be kept for every `?site=` a public dashboard's reader makes up. Far more
# stripes than the web's threads, so two sites rarely wait on one another.
LOCK_STRIPES = 64

Id = tuple[str, int]


@dataclasses.dataclass
class Seen:
    """Each id's latest time in [start, now], and when each may leave the window (a heap,
    entries of an id's earlier times left to be skipped); times after `now`, waiting."""

    start: datetime.datetime
    now: datetime.datetime
    latest: dict[Id, datetime.datetime] = dataclasses.field(default_factory=dict)
    leaving: list[tuple[datetime.datetime, str, int]] = dataclasses.field(default_factory=list)
    ahead: list[tuple[datetime.datetime, str, int]] = dataclasses.field(default_factory=list)

    def see(self, site: str, visitor: int, at: datetime.datetime) -> None:
        """One view or event of the id: its time counts from when now reaches it until it is
        WINDOW old. Seeing the same one twice changes nothing."""
        if at > self.now:
            heapq.heappush(self.ahead, (at, site, visitor))
        elif at >= self.start and at > self.latest.get((site, visitor), at - WINDOW):
            self.latest[(site, visitor)] = at
            heapq.heappush(self.leaving, (at, site, visitor))

    def move_to(self, now: datetime.datetime) -> None:
        """The window to the 5 minutes ending `now` (not before the current one's)."""
        self.start, self.now = now - WINDOW, now
        while self.ahead and self.ahead[0][0] <= now:
            at, site, visitor = heapq.heappop(self.ahead)
            self.see(site, visitor, at)
        while self.leaving and self.leaving[0][0] < self.start:
            at, site, visitor = heapq.heappop(self.leaving)
            if self.latest.get((site, visitor)) == at:
                del self.latest[(site, visitor)]


@dataclasses.dataclass
class Kept:
    seen: Seen
    snapshot: Snapshot
    changes: int


class CurrentVisitors:
    """The visitors of the last 5 minutes one web process counted last, per site; safe across
    threads (a request carries a kept count forward under its site's lock: the reads it makes
    then are a few rows)."""

    def __init__(self) -> None:
        self._kept: dict[str | None, Kept] = {}
        self._locks = tuple(threading.Lock() for _ in range(LOCK_STRIPES))

    def count(self, cur: psycopg.Cursor, site: str | None, now: datetime.datetime) -> int:
        """Distinct ids with a view or an event in [now - 5 min, now], of `site` (None: all), in
        this transaction's snapshot: current_visitors' count."""
        with self._lock_of(site):
            kept = self._kept.get(site)
            if kept is None:  # a quiet site: the query costs what carrying would
                counted = _count_whole(cur, site, now)
                if counted < CARRY_FROM_IDS:
                    return counted
            cur.execute(QUERIES["filtered_snapshot"])
            text, changes, standby = cur.fetchone()
            if standby or changes is None:
                self._kept.pop(site, None)
                return _count_whole(cur, site, now)
            snapshot = Snapshot.parse(text)
            if (
                kept is not None
                and kept.changes == changes
                and kept.snapshot.seen_by(snapshot)
                and now >= kept.seen.now
                and self._carry(cur, site, kept, now)
            ):
                kept.snapshot = snapshot
            else:
                kept = Kept(_read_whole(cur, site, now), snapshot, changes)
            if len(kept.seen.latest) < CARRY_FROM_IDS:  # quiet again: counted by the query
                self._kept.pop(site, None)
            else:
                self._kept[site] = kept
            return len(kept.seen.latest)

    @staticmethod
    def _carry(cur: psycopg.Cursor, site: str | None, kept: Kept, now: datetime.datetime) -> bool:
        """Bring `kept` forward to `now` with what was recorded since its snapshot; False when
        that is more than MAX_CHANGED_ROWS rows."""
        since = kept.snapshot
        cur.execute(
            QUERIES["current_visitors_since"],
            {
                "site": site,
                "start": now - WINDOW,
                "from_xid": str(since.xmax),
                "running": [str(xid) for xid in sorted(since.running)],
                "limit": MAX_CHANGED_ROWS + 1,
            },
        )
        rows = cur.fetchall()
        if len(rows) > MAX_CHANGED_ROWS:
            return False
        kept.seen.move_to(now)
        for row_site, visitor, at in rows:
            kept.seen.see(row_site, visitor, at)
        return True

    def _lock_of(self, site: str | None) -> threading.Lock:
        return self._locks[hash(site) % LOCK_STRIPES]


def _read_whole(cur: psycopg.Cursor, site: str | None, now: datetime.datetime) -> Seen:
    seen = Seen(now - WINDOW, now)
    cur.execute(QUERIES["current_visitors_ids"], {"site": site, "start": seen.start, "now": now})
    for row_site, visitor, latest, ahead in cur.fetchall():
        if latest is not None:
            seen.see(row_site, visitor, latest)
        for at in ahead or ():
            seen.see(row_site, visitor, at)
    return seen


def _count_whole(cur: psycopg.Cursor, site: str | None, now: datetime.datetime) -> int:
    params: dict[str, Any] = {"site": site, "five_minutes_ago": now - WINDOW, "now": now}
    cur.execute(QUERIES["current_visitors"], params)
    return cur.fetchone()[0]
