"""Custom events in stats: `top_events` with their conversion rates, and `event_props`.

Events fold into the top-list rollups as the dimension `event` (migrations/0017): per name,
their count (the rollups' `views`) and the visitors who sent them, per day as for any panel
row. A name's conversion rate is its visitors over all the visitors of the period. With
`?event=NAME` every panel counts the visitors who sent it, an id that sent it and no view too
(tally/web/filtered.py), and `event_props` breaks their sends of it down by each prop and
value, from the raw events.

    >>> top_rows([{"event": "Signup", "views": 12, "visitors": 5}], visitors=50)
    [{'event': 'Signup', 'events': 12, 'visitors': 5, 'conversion_rate': 0.1}]
"""

from __future__ import annotations

from typing import Any

DIM = "event"


def conversion_rate(event_visitors: int, visitors: int) -> float:
    """The share of the period's visitors who sent the event, 0 to 1 (0 without visitors)."""
    return round(min(event_visitors / visitors, 1.0), 4) if visitors else 0


def top_rows(rows: list[dict[str, Any]], visitors: int) -> list[dict[str, Any]]:
    """Ranked rows of the `event` dimension (name, views, visitors) as the answer's top_events."""
    return [
        {
            "event": row[DIM],
            "events": row["views"],
            "visitors": row["visitors"],
            "conversion_rate": conversion_rate(row["visitors"], visitors),
        }
        for row in rows
    ]
