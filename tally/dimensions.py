"""The dimensions of a page view: what stats rank, filter and export by, in one table.

Each row says how a dimension is named in the API (the filter parameter, the `top_*` panel
and its rows' key), which column of `page_views` holds it (or the SQL expression that
derives it), and how the dashboard titles it. Collecting fills the columns
(tally/web/audience.py), the rollup folds every dimension into the same tables
(migrations/0007: its VALUES list names these, tests/test_dimensions.py keeps them equal),
and stats, filters, the dashboard and the export read this table. Adding a dimension is a
column, a line here and a line in the rollup's list.

>>> [dimension.name for dimension in DIMENSIONS][:3]
['path', 'referrer', 'source']
>>> BY_NAME["country"].panel
'top_countries'
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Dimension:
    name: str  # the filter's query parameter, the rollups' `dim`, the panel rows' key
    panel: str  # the stats answer's list of the top values
    title: str  # the dashboard's heading
    column: str  # SQL over a page_views row (a column name, or an expression of columns)


DIMENSIONS: tuple[Dimension, ...] = (
    Dimension("path", "top_paths", "Top paths", "path"),
    # The referring page's domain, www. folded, the site's own pages left out (migrations/0005).
    Dimension("referrer", "top_referrers", "Referrers", "tally_referrer_domain(referrer, site)"),
    Dimension("source", "top_sources", "Sources", "source"),
    Dimension("medium", "top_mediums", "Mediums", "medium"),
    Dimension("campaign", "top_campaigns", "Campaigns", "campaign"),
    Dimension("country", "top_countries", "Countries", "country"),
    Dimension("browser", "top_browsers", "Browsers", "browser"),
    Dimension("os", "top_os", "Operating systems", "os"),
    Dimension("device", "top_devices", "Devices", "device"),
)
BY_NAME = {dimension.name: dimension for dimension in DIMENSIONS}
