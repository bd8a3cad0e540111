"""Visits: one visitor id's views on one UTC day with no gap over 30 minutes (migrations/0017).

The rollup forms them and keeps, per 15-minute bucket of their start, how many there were, how
many had one view (bounces), their views and the sum of their durations; their entry and exit
pages are the dimensions `entry` and `exit` of the top-list rollups, counting visits. A day in
any zone counts the visits that start on it. A stats request adds the tail's moves (visits
formed again with the views not rolled up yet, less the ones they replace); a filtered answer
forms them of the matching views alone (tally/queries.sql, filtered_visits).

    >>> day = datetime.date(2026, 1, 2)
    >>> answer = figures({day: VisitCounts(visits=4, bounces=1, views=10, duration_us=90_000_000)})
    >>> {key: value for key, value in answer.items() if key != EXACT}
    {'visits': 4, 'bounce_rate': 0.25, 'visit_duration_seconds': 22.5, 'views_per_visit': 2.5}
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import heapq
from typing import Any

import psycopg

from tally.db import QUERIES

# The top lists of visits' first and last pages: the rollups' dimension, the answer's key.
PAGE_PANELS = {"entry": "top_entry_pages", "exit": "top_exit_pages"}


@dataclasses.dataclass
class VisitCounts:
    visits: int = 0
    bounces: int = 0
    views: int = 0
    duration_us: int = 0

    def add(self, visits: int, bounces: int, views: int, duration_us: int) -> None:
        self.visits += visits
        self.bounces += bounces
        self.views += views
        self.duration_us += duration_us


def rolled_up(
    cur: psycopg.Cursor, start: datetime.datetime, end: datetime.datetime, site: str | None, tz: str
) -> dict[datetime.date, VisitCounts]:
    """Rolled-up visits per day (in `tz`) of their start in [start, end)."""
    cur.execute(QUERIES["stats_rolled_up_visits"], {"start": start, "end": end, "site": site, "tz": tz})
    return {day: VisitCounts(*counts) for day, *counts in cur.fetchall()}


def add_moves(
    rows: list[tuple],
    days: list[datetime.date],
    per_day: dict[datetime.date, VisitCounts],
    pages: dict[str, collections.Counter[str]],
) -> None:
    """Add rows of (day, entry, exit, visits, bounces, views, duration) on the window's `days`:
    the tail's moves (stats_tail_visits) or a filtered answer's visits (filtered_visits)."""
    for day, entry, exit_path, visits, bounces, views, duration_us in rows:
        if days[0] <= day <= days[-1]:
            per_day.setdefault(day, VisitCounts()).add(visits, bounces, views, duration_us)
            pages["entry"][entry] += visits
            pages["exit"][exit_path] += visits


# The answer's key for the unrounded figures per visit, which the change in percent is worked
# out from (1 visit of 1 view, then 3 of 5: views per visit 1.67, up 66.7%, not 67.0%); the
# answer leaves it out (tally/web/stats.py).
EXACT = "visit_figures_unrounded"
# Each figure per visit and the digits it is answered with.
PER_VISIT_DIGITS = {"bounce_rate": 4, "visit_duration_seconds": 1, "views_per_visit": 2}


def figures(per_day: dict[datetime.date, VisitCounts]) -> dict[str, Any]:
    """The answer's visit figures over the window's days (0 where there was no visit), and
    under EXACT the figures per visit unrounded."""
    total = VisitCounts()
    for counts in per_day.values():
        total.add(counts.visits, counts.bounces, counts.views, counts.duration_us)
    if not total.visits:
        return {
            "visits": 0,
            **dict.fromkeys(PER_VISIT_DIGITS, 0),
            EXACT: dict.fromkeys(PER_VISIT_DIGITS, 0.0),
        }
    exact = {
        "bounce_rate": total.bounces / total.visits,
        "visit_duration_seconds": total.duration_us / total.visits / 1e6,
        "views_per_visit": total.views / total.visits,
    }
    rounded = {key: round(value, PER_VISIT_DIGITS[key]) for key, value in exact.items()}
    return {"visits": total.visits, **rounded, EXACT: exact}


def page_rows(counts: dict[str, int], limit: int) -> list[dict[str, Any]]:
    """The `limit` pages with the most visits (then by path)."""
    ranked = heapq.nsmallest(limit, ((-n, path) for path, n in counts.items() if n > 0))
    return [{"path": path, "visits": -negated} for negated, path in ranked]
