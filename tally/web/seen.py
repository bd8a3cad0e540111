"""What collect knows of one view, and how it makes the View to store of it.

Each dimension's `collect` (tally/dimensions.py) takes a `Seen` and returns the view's value:
`seen.beacon.path`, `seen.audience.country`, `seen.header("Accept-Language")`. VIEW_FILLS puts
them in VIEW_FIELDS' order, with the site and the visitor's id, so a dimension added to the
table is collected with no line here.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from tally.dimensions import DIMENSIONS, VIEW_FIELDS
from tally.search_engines import search_engine

if TYPE_CHECKING:
    import bottle

    from tally.web.audience import Audience
    from tally.web.beacon import Beacon


class Seen(NamedTuple):
    """One view as collect saw it: the beacon's fields, the sender as categories, the visitor's id
    and the request itself (its address and user agent belong in `audience` and nowhere else)."""

    beacon: Beacon
    audience: Audience
    visitor: int
    request: bottle.BaseRequest

    def header(self, name: str) -> str | None:
        """A header of the request, None when it was not sent."""
        return self.request.get_header(name)


# A View's fields, in VIEW_FIELDS' order: the site and the id from what the request said, the
# search engine's name from the referrer, every other field a dimension's value by its own
# `collect`. A tuple of callables called in a list comprehension: about 1 us a view for eleven
# fields.
_OWN_FIELDS: dict[str, Callable[[Seen], object]] = {
    "site": operator.attrgetter("beacon.site"),
    "visitor": operator.attrgetter("visitor"),
    "search_engine": lambda seen: search_engine(seen.beacon.referrer, seen.beacon.site),
}
_COLLECTED = {dimension.column: dimension.collect for dimension in DIMENSIONS}
VIEW_FILLS: tuple[Callable[[Seen], object], ...] = tuple(
    _OWN_FIELDS.get(field) or _COLLECTED[field] for field in VIEW_FIELDS
)
