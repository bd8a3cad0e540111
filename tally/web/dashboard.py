"""The dashboard page: server-rendered HTML with an inline SVG chart, no external assets."""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import bottle

TEMPLATE = bottle.SimpleTemplate(Path(__file__).with_name("dashboard.tpl").read_text(encoding="utf-8"))
REFRESH_SECONDS = 30
CHART_WIDTH = 720
CHART_HEIGHT = 220
CHART_TOP = 10
CHART_BOTTOM = 24  # room for the day labels


def chart_bars(daily: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One bar per day for views and a narrower one inside it for visitors, scaled to the
    busiest day, with its label and tooltip."""
    peak = max((max(day["views"], day.get("visitors", 0)) for day in daily), default=0) or 1
    plot_height = CHART_HEIGHT - CHART_TOP - CHART_BOTTOM
    slot = CHART_WIDTH / max(len(daily), 1)
    label_every = max(1, len(daily) // 8)
    bars = []
    for index, day in enumerate(daily):
        height = round(plot_height * day["views"] / peak, 1)
        visitors = day.get("visitors", 0)
        visitors_height = round(plot_height * visitors / peak, 1)
        bars.append(
            {
                "x": round(index * slot + slot * 0.1, 1),
                "y": round(CHART_TOP + plot_height - height, 1),
                "width": round(max(slot * 0.8, 1), 1),
                "height": height,
                "visitors_x": round(index * slot + slot * 0.3, 1),
                "visitors_y": round(CHART_TOP + plot_height - visitors_height, 1),
                "visitors_width": round(max(slot * 0.4, 1), 1),
                "visitors_height": visitors_height,
                "day": day["day"],
                "views": day["views"],
                "visitors": visitors,
                "label": day["day"][5:] if index % label_every == 0 or index == len(daily) - 1 else "",
                "label_x": round(index * slot + slot / 2, 1),
            }
        )
    return bars


def query_string(days: int, site: str | None, tz: str = "UTC") -> str:
    """The dashboard's address for a window, a site (None: every site) and a zone."""
    parameters = {"days": days, **({"site": site} if site else {}), **({"tz": tz} if tz != "UTC" else {})}
    return "?" + urllib.parse.urlencode(parameters)


def age(seconds: float | None) -> str:
    """Say how long ago, for people: '4 s ago', '3 min ago', 'never'."""
    if seconds is None:
        return "never"
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def render(
    stats: dict[str, Any],
    queue: dict[str, Any],
    processes: dict[str, Any],
    dyno: str,
    sites: list[dict[str, Any]] | None = None,
) -> str:
    return TEMPLATE.render(
        stats=stats,
        sites=sites or [],
        query=query_string,
        queue=queue,
        processes=processes,
        dyno=dyno,
        bars=chart_bars(stats["daily"]),
        age=age,
        refresh=REFRESH_SECONDS,
        width=CHART_WIDTH,
        height=CHART_HEIGHT,
        baseline=CHART_HEIGHT - CHART_BOTTOM,
    )
