"""The tail's moves of visitors and visits, carried forward from one request to the next.

Every stats answer adds to the rolled-up part how the tail (the views not yet rolled up) moves
each day's visitors and visits (stats_tail_visitors, stats_tail_visits): the moves of every
(id, UTC day) with views or events in the tail, read again from all of its views. On a live
site every view from a browser has an id, and reading them cost a request about 0.1 ms a view
of the tail: 100 ms for a tail of 900 views, where an answer whose tail has no ids takes 3 ms
(1M views rolled up, pip). The moves are sums over (id, day)s (an (id, day)'s moves depend
on its own views and, for the pairs, the day before's), so the web keeps them, per rollup
state, site and zone, with the snapshot they were read in; the next request reads again only
the (id, day)s with views or events recorded since: their moves now, less their moves as that
snapshot saw them. That is the whole tail's answer in this request's snapshot
(tests/test_web_tail_moves.py holds it to a full read). After a rollup the tail is a new one,
short, and read whole once.

The rules for using a kept one are those of filtered answers (tally/web/carried.py): nothing
has removed or changed raw rows since, and its snapshot saw nothing this one does not. A
standby's snapshot lists no transaction in progress, so on a replica the tail is read whole.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import psycopg

from tally.db import QUERIES
from tally.web.carried import add_counts
from tally.web.kept import KeptStore, Snapshot

# Kept per web process: a rollup state, site and zone each, the least recently read dropped first.
ENTRIES = 16
# Past this many changed (id, day)s, reading them twice costs more than reading the tail once.
MAX_CHANGED_DAYS = 2_000


@dataclasses.dataclass(frozen=True)
class Moves:
    """How the tail moves the rollups' figures: visitors per (dim, value, day) (dim and value
    None for the whole site), and (visits, bounces, views, duration_us) per (day, entry page,
    exit page)."""

    visitors: dict[tuple, int]
    visits: dict[tuple, tuple[int, ...]]

    @classmethod
    def read(cls, cur: psycopg.Cursor, bounds: dict[str, Any], days: str, as_of: str | None) -> Moves:
        """The moves of the (id, day)s `days` (stats_tail_days' text) as the snapshot `as_of`
        saw them (None: as this one does)."""
        params = {**bounds, "days": days, "as_of": as_of}
        cur.execute(QUERIES["stats_tail_visitors"], params)
        visitors = {(dim, value, day): moved for dim, value, day, moved in cur.fetchall()}
        cur.execute(QUERIES["stats_tail_visits"], params)
        visits = {tuple(row[:3]): tuple(row[3:]) for row in cur.fetchall()}
        return cls(visitors, visits)

    def plus(self, *parts: tuple[Moves, int]) -> Moves:
        """A new Moves: these, with each part added times its sign (+1 or -1)."""
        visitors, visits = dict(self.visitors), dict(self.visits)
        for part, sign in parts:
            add_counts(visitors, part.visitors, sign)
            add_counts(visits, part.visits, sign)
        return Moves(visitors, visits)

    def rows(self) -> tuple[list[tuple], list[tuple]]:
        """As stats_tail_visitors and stats_tail_visits return them."""
        return (
            [(*key, moved) for key, moved in self.visitors.items()],
            [(*key, *counts) for key, counts in self.visits.items()],
        )


def tail_days(
    cur: psycopg.Cursor, bounds: dict[str, Any], from_xid: object, running: Iterable
) -> tuple[str, int]:
    """The (id, UTC day)s with views or events in the tail recorded by transactions from
    `from_xid` on or in `running` (stats_tail_days), as an array's text, and how many."""
    cur.execute(
        QUERIES["stats_tail_days"],
        {**bounds, "from_xid": str(from_xid), "running": [str(xid) for xid in sorted(running, key=int)]},
    )
    return cur.fetchone()


class TailMoves:
    """The tails' moves one web process read last, each kept with its snapshot; safe across threads."""

    def __init__(self, entries: int = ENTRIES):
        self._kept: KeptStore[Moves] = KeptStore(entries)

    def read(
        self, cur: psycopg.Cursor, state: tuple, bounds: dict[str, Any]
    ) -> tuple[list[tuple], list[tuple]]:
        """The rows of stats_tail_visitors and stats_tail_visits for the tail of the rollup
        `state` in this transaction's snapshot: the kept moves carried forward when they can be."""
        cur.execute(QUERIES["filtered_snapshot"])
        text, changes, standby = cur.fetchone()
        now = Snapshot.parse(text)
        key = (state, bounds["site"], bounds["tz"])
        kept = None if standby else self._kept.usable(key, now, changes)
        moves = None if kept is None else self._carried(cur, bounds, kept.value, kept.snapshot)
        if moves is None:
            days, _ = tail_days(cur, bounds, bounds["watermark"], bounds["in_progress"])
            moves = Moves.read(cur, bounds, days, None)
        if not standby:
            self._kept.keep(key, moves, now, changes)
        return moves.rows()

    @staticmethod
    def _carried(cur: psycopg.Cursor, bounds: dict[str, Any], moves: Moves, since: Snapshot) -> Moves | None:
        """`moves` (read in the snapshot `since`) less those of the (id, day)s changed since, as
        that snapshot saw them, plus theirs now; None past MAX_CHANGED_DAYS."""
        days, count = tail_days(cur, bounds, since.xmax, since.running)
        if count == 0:
            return moves
        if count > MAX_CHANGED_DAYS:
            return None
        then = Moves.read(cur, bounds, days, since.text)
        return moves.plus((then, -1), (Moves.read(cur, bounds, days, None), 1))
