"""Stats of the views that match filters, counted from the raw views.

The rollups are kept per dimension, so they answer "views per country" but not "views per
path among the views from Germany"; a filtered answer counts the matching rows of
`page_views` instead, in the same REPEATABLE READ snapshot as the rest of the request. It is
exact by construction (every committed view is a row until cleanup deletes it) and reaches
back as far as the raw views do: RETENTION_DAYS (README, "Filters").

A referrer filter names what the referrer panel lists: a domain, or a search engine's name
(tally/web/referrers.py), which stands for every domain of that engine the rollups or the
tail know.
"""

from __future__ import annotations

import collections
import datetime
from typing import TYPE_CHECKING, Any

import psycopg

from tally.db import QUERIES
from tally.dimensions import DIMENSIONS
from tally.web import events, visits
from tally.web.filters import GOAL_FILTERS, sql_parameters
from tally.web.referrers import SEARCH_ENGINES, referrer_name
from tally.web.windows import TOP_ROWS

if TYPE_CHECKING:
    from tally.web.stats import Window

EVENT_PROP_ROWS = 100  # the most sent (prop, value) pairs of the event filtered on
# The memory of each sort and hash of a filtered answer, for its transaction only: where a filter
# matches many views, PostgreSQL's default 4 MB spills them to disk (docs/BENCHMARKS.md, "Filters").
WORK_MEM = "32MB"
SEARCH_ENGINE_NAMES = frozenset(SEARCH_ENGINES.values())


def parameters(
    cur: psycopg.Cursor, filters: dict[str, str], bounds: dict[str, Any], since: datetime.date | None = None
) -> dict[str, Any]:
    """The query parameters of a filtered read: the site and zone, one per dimension, and
    `goals_only`: goals (`event`, `goal_path`) and no filter on a view's own values, an answer
    of the goals' visitors with their events (an event holds none of a view's values)."""
    params = {**bounds, **sql_parameters(filters)}
    params["goals_only"] = bool(filters) and all(name in GOAL_FILTERS for name in filters)
    name = filters.get("referrer")
    if name is not None:
        domains = [name]
        if name in SEARCH_ENGINE_NAMES:
            cur.execute(QUERIES["referrer_domains"], {**bounds, "since": since or datetime.date.min})
            domains = [domain for (domain,) in cur.fetchall() if domain and referrer_name(domain) == name]
        params["referrer"] = domains
    return params


def bounds_of(cur: psycopg.Cursor, window: Window, tz: str) -> tuple[datetime.datetime, datetime.datetime]:
    """The instants the window starts and ends: its first day's local midnight, and the one after
    its last day (today's too: a view dated later, a clock far off, counts on its own day)."""
    cur.execute(QUERIES["local_midnight"], {"day": window.days[0], "tz": tz})
    start = cur.fetchone()[0]
    cur.execute(QUERIES["local_midnight"], {"day": window.days[-1] + datetime.timedelta(days=1), "tz": tz})
    return start, cur.fetchone()[0]


def stats(
    cur: psycopg.Cursor, window: Window, params: dict[str, Any], retention_days: int, panels: bool = True
) -> dict[str, Any]:
    """The stats answer's days, totals and (with `panels`) top values of the matching views."""
    start, end = bounds_of(cur, window, params["tz"])
    span = {**params, "start": start, "end": end, "panels": panels}
    cur.execute(QUERIES["set_local_work_mem"], {"work_mem": WORK_MEM})
    cur.execute(QUERIES["filtered_answer"], span)
    values: dict[str, dict[str, tuple[int, int]]] = collections.defaultdict(dict)
    by_day: dict[datetime.date, tuple[int, int]] = {}
    visit_rows, event_rows, prop_rows = [], [], []
    for part, day, name, detail, *counts in cur.fetchall():
        if part == "day":
            by_day[day] = (counts[0], counts[1])
        elif part == "value":
            values[name][detail] = (counts[0], counts[1])
        elif part == "visits":
            visit_rows.append((day, name, detail, *counts))
        elif part == "event":
            event_rows.append((name, counts[0], counts[1]))
        else:
            prop_rows.append({"prop": name, "value": detail, "events": counts[0], "visitors": counts[1]})
    visits_by_day: dict[datetime.date, visits.VisitCounts] = {}
    pages: dict[str, collections.Counter[str]] = {dim: collections.Counter() for dim in visits.PAGE_PANELS}
    visits.add_moves(visit_rows, window.days, visits_by_day, pages)
    daily = [
        {
            "day": day.isoformat(),
            "views": by_day.get(day, (0, 0))[0],
            "visitors": by_day.get(day, (0, 0))[1],
            "visits": visits_by_day.get(day, visits.VisitCounts()).visits,
        }
        for day in window.days
    ]
    answer: dict[str, Any] = {
        "days": len(window.days),
        "first_day": window.days[0].isoformat(),
        "last_day": window.days[-1].isoformat(),
        "total_views": sum(day["views"] for day in daily),
        "visitors": sum(day["visitors"] for day in daily),
        "daily": daily,
        "generated_at": window.now.astimezone(datetime.UTC).isoformat(),
        **visits.figures(visits_by_day),
    }
    if panels:
        values["referrer"] = _by_name(values.get("referrer", {}))
        for dimension in DIMENSIONS:
            answer[dimension.panel] = top(values.get(dimension.name, {}), dimension.name)
        for dim, panel in visits.PAGE_PANELS.items():
            answer[panel] = visits.page_rows(pages[dim], TOP_ROWS)
        ranked = sorted(event_rows, key=lambda row: (-row[1], row[0]))[:TOP_ROWS]
        rows = [{events.DIM: name, "views": count, "visitors": who} for name, count, who in ranked]
        answer["top_events"] = events.top_rows(rows, answer["visitors"])
        if params.get("event") is not None:
            prop_rows.sort(key=lambda row: (-row["events"], row["prop"], row["value"]))
            answer["event_props"] = prop_rows[:EVENT_PROP_ROWS]
        answer["crawlers_filtered"] = None  # crawlers are counted per site and day, not per view
    return answer


def recent(
    cur: psycopg.Cursor, params: dict[str, Any], with_day: bool, window: Window | None = None
) -> dict[str, int]:
    """Distinct visitors of the last 5 minutes and (`with_day`) views of the last 24 hours. Under
    `event` or `goal_path` their visitors are those who reached the goal in `window`, as for
    every other figure of the answer (not in the 24 hours: a visitor who signed up two days ago
    and came back an hour ago is in today's views, so in the last 24 hours' too); under goals
    alone (`goals_only`) one that sent events and no view in the 5 minutes is one of them too."""
    now = params["now"]
    times = {"now": now, "five_minutes_ago": now - datetime.timedelta(minutes=5)}
    if not with_day:  # unfiltered: the last 24 hours come from the rollups
        cur.execute(QUERIES["current_visitors"], {"site": params["site"], **times})
        return {"views_last_24h": 0, "current_visitors": cur.fetchone()[0]}
    since = now - datetime.timedelta(hours=24)
    goals = window is not None and (params.get("event") is not None or params.get("goal_path") is not None)
    goals_from, goals_until = bounds_of(cur, window, params["tz"]) if goals else (since, None)
    cur.execute(
        QUERIES["recent_visitors"],
        {**params, **times, "since": since, "goals_from": goals_from, "goals_until": goals_until},
    )
    views, current = cur.fetchone()
    if goals and params["goals_only"]:
        cur.execute(
            QUERIES["recent_goal_senders"],
            {**params, **times, "goals_from": goals_from, "goals_until": goals_until},
        )
        current += cur.fetchone()[0]
    return {"views_last_24h": views, "current_visitors": current}


def top(values: dict[str, tuple[int, int]], key: str) -> list[dict[str, Any]]:
    """The TOP_ROWS values with the most views (then by name), with their views and visitors."""
    ranked = sorted((name for name in values if name != ""), key=lambda name: (-values[name][0], name))[
        :TOP_ROWS
    ]
    return [{key: name, "views": values[name][0], "visitors": values[name][1]} for name in ranked]


def _by_name(domains: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    named: dict[str, tuple[int, int]] = {}
    for domain, (views, visitors) in domains.items():
        name = referrer_name(domain)
        had_views, had_visitors = named.get(name, (0, 0))
        named[name] = (had_views + views, had_visitors + visitors)
    return named
