"""Filtered answers carried forward: counted once, then kept current by the ids that changed.

A filtered answer counts the matching raw views (tally/web/filtered.py): seconds for a large
slice of a large site. Every figure in it is a sum over visitors (an id counts once a day per
site, a visit is one id's, an event counts for its sender), plus the views that carry no id.
So the web keeps an answer's counts with the snapshot they were counted in, and the next
request for the same answer:

1. reads which ids have views or events in the answer's days recorded since that snapshot
   (through the indexes on recorded_xid: a few rows on a live site);
2. counts those ids again, as they are now, and takes off what the same ids counted as that
   snapshot saw them (`as_of`: their views, events and goals then);
3. adds the views without an id recorded since.

The result is the answer a full count would give in this request's snapshot (tests/
test_web_carried.py holds it to one), and it is kept in turn. A kept answer is used only when
nothing has removed or changed raw rows since (migrations/0033 counts such statements:
retention, a rebuild, an operator's DELETE) and when its snapshot saw nothing this request's
does not (a request that began earlier than the one that kept it counts afresh). A streaming
replica's snapshot lists no transaction in progress, so an answer counted there is kept as of
the transactions that had ended before its xmin: the ids with rows from later ones are taken
off again and counted as that saw them.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from tally.db import QUERIES
from tally.web.kept import Kept, KeptStore, Snapshot

T = TypeVar("T")
logger = logging.getLogger("tally.web.carried")

# Answers kept per web process, the least recently asked dropped first; one is a few thousand
# small entries (the top lists are ranked from every value, not the first rows).
ENTRIES = 8
# And the values those answers hold together, about 300 bytes each: on a site whose paths
# carry ids a filter on a twelfth of 600,000 views holds 150,000 (entry and exit pages too), and
# eight such answers would keep 400 MB. The least recently asked go first; an answer past it
# alone is counted afresh at each request.
KEPT_VALUES = 250_000
# Past this many changed ids, counting them twice costs more than counting everything again.
MAX_CHANGED_IDS = 20_000
# Up to this many changed ids (about 70 ms to carry), an answer is carried forward without
# asking whether a fresh count would cost less. Past it, it is carried only while the ids at
# this process's measured cost per id (a first guess: the slower build's, 1M realistic views)
# cost less than the answer's last fresh count took: a burst of 10,000 ids on a slice of 4,000
# views took 1.45 s carried on PostgreSQL 18, 0.36 s counted afresh (docs/BENCHMARKS.md,
# "Carried or counted afresh").
CARRIED_WITHOUT_ASKING = 500
FIRST_SECONDS_PER_ID = 0.000_14
# What the key leaves out: the rollup state and the clock, which a filtered count never reads.
NOT_COUNTED = frozenset({"watermark", "in_progress", "tail_from", "tail_to", "now"})


@dataclasses.dataclass
class Counts:
    """What a filtered answer is made of, in sums over visitors: views and visitors per day and
    per (dimension, value); visits, bounces, views and duration per day and visits per entry and
    exit page; events and their visitors per name and per (prop, value) of the event filtered on;
    and views per 15-minute bucket (numbered since 1970), for the last 24 hours."""

    days: dict[datetime.date, tuple[int, int]] = dataclasses.field(default_factory=dict)
    values: dict[str, dict[str, tuple[int, int]]] = dataclasses.field(default_factory=dict)
    visits: dict[datetime.date, tuple[int, int, int, int]] = dataclasses.field(default_factory=dict)
    pages: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    events: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    props: dict[tuple[str, str], tuple[int, int]] = dataclasses.field(default_factory=dict)
    buckets: dict[int, int] = dataclasses.field(default_factory=dict)  # views per 15 minutes

    def plus(self, *parts: tuple[Counts, int]) -> Counts:
        """A new Counts: these, with each part added times its sign (+1 or -1)."""
        combined = Counts(
            dict(self.days),
            {dim: dict(values) for dim, values in self.values.items()},
            dict(self.visits),
            {dim: dict(pages) for dim, pages in self.pages.items()},
            dict(self.events),
            dict(self.props),
            dict(self.buckets),
        )
        for part, sign in parts:
            add_counts(combined.days, part.days, sign)
            for dim, values in part.values.items():
                add_counts(combined.values.setdefault(dim, {}), values, sign)
            add_counts(combined.visits, part.visits, sign)
            for dim, pages in part.pages.items():
                add_counts(combined.pages.setdefault(dim, {}), pages, sign)
            add_counts(combined.events, part.events, sign)
            add_counts(combined.props, part.props, sign)
            add_counts(combined.buckets, part.buckets, sign)
        return combined

    def size(self) -> int:
        """How many entries these counts hold, of every kind."""
        kinds = (self.days, self.visits, self.events, self.props, self.buckets)
        return sum(map(len, kinds)) + sum(map(len, self.values.values())) + sum(map(len, self.pages.values()))


def add_counts(into: dict, part: dict, sign: int) -> None:
    """`part` added into `into` times `sign`, key by key (an int or a tuple of them); keys whose
    counts come to nothing dropped."""
    for key, counts in part.items():
        had = into.get(key)
        if had is None:
            # A key `into` lacks, as most values of a chunk of ids do (chunks share few): the
            # part's counts as they are, 1.25 -> 0.6 s for two chunks' 986,000 keys
            # (docs/BENCHMARKS.md, "A filtered slice of a wide site").
            if isinstance(counts, int):
                if counts:
                    into[key] = sign * counts
            elif any(counts):
                into[key] = counts if sign == 1 else tuple(-b for b in counts)
            continue
        if isinstance(counts, int):
            total: Any = had + sign * counts
            zero = total == 0
        else:
            total = tuple(a + sign * b for a, b in zip(had, counts, strict=True))
            zero = not any(total)
        if zero:
            into.pop(key, None)
        else:
            into[key] = total


class CarriedAnswers:
    """The filtered answers of one web process, each kept with its snapshot; safe across threads."""

    def __init__(self, entries: int = ENTRIES):
        self._kept: KeptStore[Counts] = KeptStore(entries, Counts.size, KEPT_VALUES)
        self.seconds_per_id = FIRST_SECONDS_PER_ID  # what carrying a changed id costs, as measured

    def counts(
        self,
        cur: psycopg.Cursor,
        span: dict[str, Any],
        read_from: datetime.datetime,
        read_to: datetime.datetime,
        count: Callable[[dict[str, Any]], Counts],
    ) -> Counts:
        """The counts of the filtered answer `span` in this transaction's snapshot: the kept ones
        carried forward when they can be and cost less than a fresh count, else `count(span)`.
        The answer reads rows in [read_from, read_to)."""
        cur.execute(QUERIES["filtered_snapshot"])
        text, changes, standby = cur.fetchone()
        now = Snapshot.parse(text)
        if standby:  # a standby's: kept as of what it surely saw, the rest counted again (below)
            now = now.before_xmin()
        key = tuple(sorted((name, _frozen(value)) for name, value in span.items() if name not in NOT_COUNTED))
        kept = self._kept.usable(key, now, changes)
        counts = None if kept is None else self._carried(cur, span, read_from, read_to, kept, count)
        fresh_seconds = 0.0 if kept is None else kept.fresh_seconds
        if counts is None:
            started = time.monotonic()
            counts = count(span)
            fresh_seconds = time.monotonic() - started
        keep = counts if not standby else self._as_of(cur, span, read_from, read_to, now, counts, count)
        if keep is not None:
            self._kept.keep(key, keep, now, changes, fresh_seconds)
        return counts

    @staticmethod
    def _changed(
        cur: psycopg.Cursor,
        span: dict[str, Any],
        read_from: datetime.datetime,
        read_to: datetime.datetime,
        since: Snapshot,
    ) -> tuple[dict[str, Any], bool] | None:
        """The ids with views or events recorded after `since` (as `of_sites` and `of_visitors`),
        and whether views without an id were; None past MAX_CHANGED_IDS."""
        cur.execute(
            QUERIES["filtered_changed_ids"],
            {
                "start": read_from,
                "end": read_to,
                "site": span["site"],
                "since_xmax": str(since.xmax),
                "since_xip": [str(xid) for xid in sorted(since.running)],
            },
        )
        changed = cur.fetchall()
        ids = [(site, visitor) for site, visitor in changed if visitor is not None]
        if len(ids) > MAX_CHANGED_IDS:
            return None
        narrowed = {"of_sites": [site for site, _ in ids], "of_visitors": [visitor for _, visitor in ids]}
        return narrowed, len(ids) < len(changed)

    def _carried(
        self,
        cur: psycopg.Cursor,
        span: dict[str, Any],
        read_from: datetime.datetime,
        read_to: datetime.datetime,
        kept: Kept[Counts],
        count: Callable[[dict[str, Any]], Counts],
    ) -> Counts | None:
        """The kept counts less what the changed ids counted as its snapshot saw them, plus what
        they and the views without an id recorded since count now; None past MAX_CHANGED_IDS, or
        when the ids at the cost measured would take longer than the answer's last fresh count,
        or past the statement timeout (the answer is then counted afresh, in chunks that each
        end within it). In a savepoint, so that the snapshot stays."""
        try:
            with cur.connection.transaction():
                changed = self._changed(cur, span, read_from, read_to, kept.snapshot)
                if changed is None:
                    return None
                narrowed, anonymous = changed
                ids = len(narrowed["of_visitors"])
                guess = ids * self.seconds_per_id
                if ids > CARRIED_WITHOUT_ASKING and guess > kept.fresh_seconds:
                    logger.debug(
                        "a filtered answer counted afresh: its %d changed ids would take about %.2f s, its"
                        " last count took %.2f s", ids, guess, kept.fresh_seconds,
                    )  # fmt: skip
                    return None
                if not narrowed["of_visitors"] and not anonymous:
                    return kept.value
                started = time.monotonic()
                parts = []
                if narrowed["of_visitors"]:
                    parts.append((count({**span, **narrowed, "as_of": kept.snapshot.text}), -1))
                now = count({**span, **narrowed, **(kept.snapshot.later() if anonymous else {})})
                if ids > CARRIED_WITHOUT_ASKING:  # enough ids that their cost is not the statements'
                    self.seconds_per_id = (self.seconds_per_id + (time.monotonic() - started) / ids) / 2
                return kept.value.plus(*parts, (now, 1))
        except psycopg.errors.QueryCanceled:
            # The cancel can land on the savepoint's rollback too: the transaction is lost then.
            if cur.connection.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
                raise
            logger.info("a filtered answer's changed ids passed the statement timeout: counted afresh")
            return None

    @classmethod
    def _as_of(
        cls,
        cur: psycopg.Cursor,
        span: dict[str, Any],
        read_from: datetime.datetime,
        read_to: datetime.datetime,
        surely_seen: Snapshot,
        counts: Counts,
        count: Callable[[dict[str, Any]], Counts],
    ) -> Counts | None:
        """`counts` (of this snapshot) as `surely_seen` saw them: less what the ids with rows
        recorded after it count now, plus what they counted then (a standby's answer is kept so)."""
        changed = cls._changed(cur, span, read_from, read_to, surely_seen)
        if changed is None:
            return None
        narrowed, anonymous = changed
        if not narrowed["of_visitors"] and not anonymous:
            return counts
        parts = [(count({**span, **narrowed, **(surely_seen.later() if anonymous else {})}), -1)]
        if narrowed["of_visitors"]:
            parts.append((count({**span, **narrowed, "as_of": surely_seen.text}), 1))
        return counts.plus(*parts)


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
