"""The dashboard page: server-rendered HTML with an inline SVG chart, no external assets.

The owner sees the job queue, its errors and the processes; a share link or a public
dashboard shows the numbers only (tally/web/auth.py decides who is reading).
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import bottle

from tally.web.sessions import PAGE_HEADERS

TEMPLATE = bottle.SimpleTemplate(Path(__file__).with_name("dashboard.tpl").read_text(encoding="utf-8"))
REFRESH_SECONDS = 30
CHART_WIDTH = 720
CHART_HEIGHT = 220
CHART_TOP = 10
CHART_BOTTOM = 24  # room for the day labels
HEADERS = PAGE_HEADERS
WINDOWS = ((7, "7 days"), (30, "30 days"), (90, "90 days"), (366, "a year"))


def chart_bars(daily: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One bar per day, scaled to the busiest day, with its label and tooltip."""
    peak = max((day["views"] for day in daily), default=0) or 1
    plot_height = CHART_HEIGHT - CHART_TOP - CHART_BOTTOM
    slot = CHART_WIDTH / max(len(daily), 1)
    label_every = max(1, len(daily) // 8)
    bars = []
    for index, day in enumerate(daily):
        height = round(plot_height * day["views"] / peak, 1)
        bars.append(
            {
                "x": round(index * slot + slot * 0.1, 1),
                "y": round(CHART_TOP + plot_height - height, 1),
                "width": round(max(slot * 0.8, 1), 1),
                "height": height,
                "day": day["day"],
                "views": day["views"],
                "label": day["day"][5:] if index % label_every == 0 or index == len(daily) - 1 else "",
                "label_x": round(index * slot + slot / 2, 1),
            }
        )
    return bars


def age(seconds: float | None) -> str:
    """Say how long ago, for people: '4 s ago', '3 min ago', 'never'."""
    if seconds is None:
        return "never"
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def window_links(share: str | None) -> list[tuple[str, str]]:
    """The window links; a share link's reader keeps the share token in each."""
    links = []
    for days, label in WINDOWS:
        query = {"days": days} if share is None else {"days": days, "share": share}
        links.append(("/?" + urllib.parse.urlencode(query), label))
    return links


def render(
    stats: dict[str, Any],
    queue: dict[str, Any] | None,
    processes: dict[str, Any] | None,
    dyno: str,
    *,
    owner: bool = True,
    logout_token: str | None = None,
    share: str | None = None,
) -> str:
    """The page; `queue` and `processes` (owner only) are None for anyone else."""
    return TEMPLATE.render(
        stats=stats,
        queue=queue,
        processes=processes,
        dyno=dyno,
        owner=owner,
        logout_token=logout_token,
        windows=window_links(share),
        bars=chart_bars(stats["daily"]),
        age=age,
        refresh=REFRESH_SECONDS,
        width=CHART_WIDTH,
        height=CHART_HEIGHT,
        baseline=CHART_HEIGHT - CHART_BOTTOM,
    )
