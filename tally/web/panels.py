"""The panels of an unfiltered stats answer: every dimension's top values, with views and visitors.

A panel ranks the values by their rolled-up views plus the tail's (tally/web/windows.py,
`Ranking`), and then counts the visitors of the ten it shows only: per day in the zone, from the
rollups' cells (`stats_rolled_up_dim_visitors`, kept with the rolled-up part of the window:
tally/web/values.py, `Values.visitors_of`) and the tail's moves. The referrer panel lists
search engines by name (tally/search_engines.py), each the sum of its domains.
"""

from __future__ import annotations

import collections
import threading
from typing import TYPE_CHECKING, Any

import psycopg

from tally.dimensions import DIMENSIONS
from tally.search_engines import by_name, referrer_name
from tally.web import events
from tally.web.windows import Window, count_days

if TYPE_CHECKING:
    from tally.web.rolled_up import RolledUp

# A `stats_tail` row's columns, as the query lists them (its list is rendered from the table):
# the day, whether in the last 24 hours, each dimension's value, the views and how many had an id.
TAIL_COLUMNS = ("day", "recent", *(dimension.name for dimension in DIMENSIONS), "views", "with_visitor")
TAIL = {name: index for index, name in enumerate(TAIL_COLUMNS)}


def top_values(
    cur: psycopg.Cursor,
    bounds: dict,
    window: Window,
    rolled_up: RolledUp,
    tail: list,
    tail_visitors: list,
    tail_events: collections.Counter[str],
    lock: threading.Lock,
) -> dict[str, list[dict[str, Any]]]:
    """Every dimension's top values with their views (rollups and tail) and visitors, and the
    top event names (under events.DIM) with their events and visitors."""
    tail_values: dict[str, collections.Counter[str]] = {d.name: collections.Counter() for d in DIMENSIONS}
    places = [(dimension.name, TAIL[dimension.name]) for dimension in DIMENSIONS]
    day, views = TAIL["day"], TAIL["views"]
    for row in tail:
        if not window.days[0] <= row[day] <= window.days[-1]:
            continue
        for name, index in places:
            if row[index] is not None:
                tail_values[name][row[index]] += row[views]
    tail_values["referrer"] = by_name(tail_values["referrer"])
    tops = {
        name: rolled_up.tops[name].top(
            counts, name, rolled_up.lookup(cur, name, lock), rolled_up.whole_ranking(cur, name, lock)
        )
        for name, counts in (*tail_values.items(), (events.DIM, tail_events))
    }
    wanted = {(name, row[name]) for name, rows in tops.items() for row in rows}
    per_value = rolled_up.visitors_of(cur, bounds["tz"], window, wanted, lock)
    for dim, value, day, count in tail_visitors:
        if dim is not None:
            key = (dim, referrer_name(value) if dim == "referrer" else value)
            if key in per_value:
                count_days(per_value[key], window, day, count)
    panels = {}
    for name, panel in (*((d.name, d.panel) for d in DIMENSIONS), (events.DIM, events.DIM)):
        rows = tops[name]
        for row in rows:
            row["visitors"] = sum(per_value[(name, row[name])].values())
        panels[panel] = rows
    return panels
