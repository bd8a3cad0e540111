"""The dashboard's chart: a bar a day for views with a narrower one for visitors inside it, the
previous period as a dashed line over them, and day labels that fit (an inline SVG the
template draws from these numbers; no script, no external asset).
"""

from __future__ import annotations

from typing import Any

CHART_WIDTH = 720
CHART_HEIGHT = 220
CHART_TOP = 10
CHART_BOTTOM = 24  # room for the day labels
LABEL_WIDTH = 36  # a day's label ("11-06") in the chart's 11 px type, with a little room
# The previous period's days get a marker (with its tooltip) up to this many; past it the line alone.
MARKERS_UP_TO = 92


def chart_bars(
    daily: list[dict[str, Any]], previous: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """One bar per day for views and a narrower one inside it for visitors, scaled to the
    busiest day (of either period), with its label and tooltip; with `previous` (the period
    before, day by day), each bar also carries the same-numbered day of that period. The first
    and last labels end at the chart's edges (centred under their bars, they were cut off):

    >>> days = [{"day": f"2026-01-0{n}", "views": n} for n in (1, 2, 3)]
    >>> [(bar["label"], bar["label_at"], bar["label_anchor"]) for bar in chart_bars(days)]
    [('01-01', 0.0, 'start'), ('01-02', 360.0, 'middle'), ('01-03', 720.0, 'end')]

    A label that the last one, at the edge, would overlap is left out (at 90 days, 12-04 was
    written over 12-05):

    >>> import datetime
    >>> start = datetime.date(2026, 9, 7)
    >>> days = [{"day": str(start + datetime.timedelta(n)), "views": 1} for n in range(90)]
    >>> [bar["label"] for bar in chart_bars(days) if bar["label"]][-2:]
    ['11-23', '12-05']
    """
    previous = previous or []
    peak = (
        max(
            [max(day["views"], day.get("visitors", 0)) for day in daily]
            + [day["views"] for day in previous[: len(daily)]],
            default=0,
        )
        or 1
    )
    plot_height = CHART_HEIGHT - CHART_TOP - CHART_BOTTOM
    slot = CHART_WIDTH / max(len(daily), 1)
    label_every = max(1, len(daily) // 8)
    bars = []
    for index, day in enumerate(daily):
        centre = round(index * slot + slot / 2, 1)
        # The last label ends at the right edge; one centred within its width of it would overlap.
        labelled = index == len(daily) - 1 or (
            index % label_every == 0 and centre + LABEL_WIDTH / 2 <= CHART_WIDTH - LABEL_WIDTH
        )
        height = round(plot_height * day["views"] / peak, 1)
        visitors = day.get("visitors", 0)
        visitors_height = round(plot_height * visitors / peak, 1)
        bar = {
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
            "label": day["day"][5:] if labelled else "",
            "label_x": centre,  # the bar's centre (the previous period's point stands there)
            "label_at": centre,
            "label_anchor": "middle",
            "previous": None,
        }
        if len(daily) > 1 and index in (0, len(daily) - 1):
            bar["label_at"] = 0.0 if index == 0 else float(CHART_WIDTH)
            bar["label_anchor"] = "start" if index == 0 else "end"
        if index < len(previous):
            before = previous[index]
            bar["previous"] = {
                "day": before["day"],
                "views": before["views"],
                "y": round(CHART_TOP + plot_height - plot_height * before["views"] / peak, 1),
            }
        bars.append(bar)
    return bars


def previous_line(bars: list[dict[str, Any]]) -> str:
    """The SVG polyline points of the previous period's views, one per day, at each bar's middle."""
    return " ".join(f"{bar['label_x']},{bar['previous']['y']}" for bar in bars if bar["previous"])
