"""What the web keeps from one request to the next with the snapshot it was read in: filtered
answers (tally/web/carried.py), the tail's moves (tally/web/tail_moves.py), the current
visitors (tally/web/current_visitors.py). A later request may carry it forward only if its
own snapshot sees everything the kept one saw.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A pg_snapshot: transactions below xmin had ended, those from xmax on had not begun, and
    those of `running` were running."""

    text: str
    xmin: int
    xmax: int
    running: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        xmin, xmax, running = text.split(":")
        return cls(text, int(xmin), int(xmax), frozenset(int(xid) for xid in running.split(",") if xid))

    def before_xmin(self) -> Snapshot:
        """The transactions this one surely saw: those that had ended before its xmin. A
        standby's snapshot lists none running (PostgreSQL keeps them in another array there),
        so of the ones from its xmin on it cannot say which it saw."""
        return Snapshot(f"{self.xmin}:{self.xmin}:", self.xmin, self.xmin, frozenset())

    def later(self) -> dict[str, Any]:
        """filtered_answer's parameters for the views without an id recorded after this snapshot:
        by transactions from its xmax on, or running then."""
        return {
            "anonymous_from": str(self.xmax),
            "anonymous_running": [str(xid) for xid in sorted(self.running)],
        }

    def seen_by(self, later: Snapshot) -> bool:
        """Whether `later` sees every transaction this one sees."""
        return self.xmax <= later.xmax and all(
            xid in self.running for xid in later.running if xid < self.xmax
        )


@dataclasses.dataclass(frozen=True)
class Kept(Generic[T]):
    value: T
    snapshot: Snapshot
    changes: int | None  # statements that had removed or changed raw rows (migrations/0033)
    fresh_seconds: float = 0.0  # what its last fresh count took


class KeptStore(Generic[T]):
    """What a web process keeps per key, each with the snapshot it was read in; the least
    recently kept or asked for dropped first, past `entries` or past `budget` of what `weigh`
    says they hold together; safe across threads."""

    def __init__(self, entries: int, weigh: Callable[[T], int] | None = None, budget: int = 0):
        self.entries = entries
        self.weigh, self.budget = weigh, budget
        self._kept: collections.OrderedDict[tuple, Kept[T]] = collections.OrderedDict()
        self._weights: dict[tuple, int] = {}
        self._lock = threading.Lock()

    def usable(self, key: tuple, now: Snapshot, changes: int | None) -> Kept[T] | None:
        """What is kept under `key`, if a request in the snapshot `now` may carry it forward:
        nothing has removed or changed raw rows since, and its snapshot saw nothing `now` does not."""
        with self._lock:
            kept = self._kept.get(key)
        if kept is None or changes is None or kept.changes != changes or not kept.snapshot.seen_by(now):
            return None
        return kept

    def keep(
        self, key: tuple, value: T, now: Snapshot, changes: int | None, fresh_seconds: float = 0.0
    ) -> None:
        """`value`, read in the snapshot `now`, kept under `key` unless what another request kept
        meanwhile is newer."""
        weight = self.weigh(value) if self.weigh else 0
        with self._lock:
            held = self._kept.get(key)
            if held is None or held.changes != changes or held.snapshot.seen_by(now):
                if self.weigh and weight > self.budget:
                    self._drop(key)  # too large to keep: the next request counts it again
                    return
                self._kept[key] = Kept(value, now, changes, fresh_seconds)
                self._weights[key] = weight
            self._kept.move_to_end(key)
            while len(self._kept) > self.entries or sum(self._weights.values()) > self.budget > 0:
                self._drop(next(iter(self._kept)))

    def _drop(self, key: tuple) -> None:
        self._kept.pop(key, None)
        self._weights.pop(key, None)
