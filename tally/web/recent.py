"""The figures of a stats answer about now: views of the last 24 hours, visitors of the last 5 minutes.

Unfiltered, the 24 hours come from the rollups and the tail (tally/web/stats.py) and the
visitors from what tally/web/current_visitors.py keeps; filtered, they are counted from the
matching raw views, the full 15-minute buckets from the filtered answer's own and only the
minutes at either end read again (`filtered_recent_edges`).
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

import psycopg

from tally.db import QUERIES
from tally.web.current_visitors import CurrentVisitors
from tally.web.filtered import bounds_of, bucket_number, planned_for_few_ids

if TYPE_CHECKING:
    from tally.web.windows import Window


def recent_figures(
    cur: psycopg.Cursor,
    params: dict[str, Any],
    with_day: bool,
    current: CurrentVisitors,
    window: Window | None = None,
    buckets: dict[int, int] | None = None,
) -> dict[str, int]:
    """Distinct visitors of the last 5 minutes and (`with_day`) views of the last 24 hours. Under
    `event` or `goal_path` their visitors are those who reached the goal in `window`, as for
    every other figure of the answer (not in the 24 hours: a visitor who signed up two days ago
    and came back an hour ago is in today's views, so in the last 24 hours' too); under goals
    alone (`goals_only`) one that sent events and no view in the 5 minutes is one of them too.
    With the filtered answer's `buckets` the 24 hours' full buckets come from them, and only
    the minutes at either end are read. Unfiltered, the visitors come from `current`, which
    keeps them (tally/web/current_visitors.py)."""
    now = params["now"]
    times = {"now": now, "five_minutes_ago": now - datetime.timedelta(minutes=5)}
    if not with_day:  # unfiltered: the last 24 hours come from the rollups, the visitors are kept
        return {"views_last_24h": 0, "current_visitors": current.count(cur, params["site"], now)}
    since = now - datetime.timedelta(hours=24)
    goals = window is not None and (params.get("event") is not None or params.get("goal_path") is not None)
    goals_from, goals_until = bounds_of(cur, window, params["tz"]) if goals else (since, None)
    span = {**params, **times, "since": since, "goals_from": goals_from, "goals_until": goals_until}
    if buckets is None or window is None:
        cur.execute(QUERIES["recent_visitors"], span)
        views, current = cur.fetchone()
    else:
        edges = {"first_full_bucket": window.first_full_bucket, "now_bucket": window.now_bucket}
        edges.update(goals_until=goals_until or "infinity", of_sites=None, of_visitors=None)
        with planned_for_few_ids(cur):  # a few minutes' views, and with goals a few ids'
            if goals:  # the ids of those minutes that reached the goals, not every sender's of the window
                cur.execute(QUERIES["recent_edge_ids"], {**span, **edges})
                reached = goal_reached(cur, cur.fetchall(), span)
                edges.update(ids_of(reached), event=None, goal_path=None)
            cur.execute(QUERIES["filtered_recent_edges"], {**span, **edges})
            views, current = cur.fetchone()
        first, last = (bucket_number(edges["first_full_bucket"]), bucket_number(edges["now_bucket"]))
        views += sum(count for bucket, count in buckets.items() if first <= bucket < last)
    if goals and params["goals_only"]:
        cur.execute(QUERIES["recent_senders_without_views"], {**params, **times})
        current += len(goal_reached(cur, cur.fetchall(), span))
    return {"views_last_24h": views, "current_visitors": current}


def goal_reached(
    cur: psycopg.Cursor, ids: list[tuple[str, int]], span: dict[str, Any]
) -> list[tuple[str, int]]:
    """Of `ids` (site, visitor), those that reached the goals of `span` (`event`, `goal_path`) in
    [goals_from, goals_until)."""
    cur.execute(QUERIES["goal_reached_ids"], {**span, **ids_of(ids)})
    return cur.fetchall()


def ids_of(ids: list[tuple[str, int]]) -> dict[str, list]:
    """The parameters `of_sites` and `of_visitors` that name `ids` (site, visitor)."""
    return {"of_sites": [site for site, _ in ids], "of_visitors": [visitor for _, visitor in ids]}
