"""The SQL that names every dimension, rendered from tally/dimensions.py's table.

A query of tally/queries.sql, or a function of migrations/dimension_functions.sql, writes a
marker where it lists the dimensions: `{{dimension_values}}`, or with an argument,
`{{dimension_values:v}}` (qualified by the alias `v`), `{{dimension_positions:4}}` (GROUP BY
positions from 4 on). `render` fills each from DIMENSIONS; an unknown marker, or braces left
over, is an error when the text is loaded, never a query sent with a hole in it. Every name
written comes from the table, whose names tally/dimensions.py checks are plain identifiers;
nothing here is formatted from a request.

Rendered with the nine dimensions of before, each query and function is the SQL that was typed
out by hand (tests/test_dimension_sql.py holds the functions to their last migrations).

>>> render("SELECT {{dimension_values:v}} FROM page_views v")[:62]
'SELECT v.path, coalesce(v.search_engine, tally_referrer_domain'
>>> render("GROUP BY 1, 2, {{dimension_positions:3}}")
'GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11'
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

from tally.dimensions import DIMENSIONS, STORED_COLUMNS, VIEW_FIELDS, Dimension

FUNCTIONS_FILE = Path(__file__).resolve().parent.parent / "migrations" / "dimension_functions.sql"
MARKER = re.compile(r"\{\{([a-z_]+)(?::([a-z0-9]+))?\}\}")
# The fields of a view that are not text (insert_page_views casts them from JSON's text).
VIEW_CASTS = {"visitor": "bigint"}


class UnknownMarker(ValueError):
    """A `{{...}}` that names nothing to render, or braces left in the rendered text."""


def _joined(items: Iterable[object]) -> str:
    return ", ".join(str(item) for item in items)


def _value(dimension: Dimension, row: str) -> str:
    """One dimension's value as a column of the select list, named as the dimension."""
    sql = dimension.value_sql(row)
    return sql if sql == row + dimension.name else f"{sql} AS {dimension.name}"


def _inputs() -> tuple[str, ...]:
    """Every column the dimensions' values read, in the table's order (the referrer's site too)."""
    return tuple(dict.fromkeys(column for dimension in DIMENSIONS for column in dimension.inputs))


def _positions(count: int, start: str | None) -> str:
    first = int(start or 1)
    return _joined(range(first, first + count))


def _qualifier(alias: str | None) -> str:
    return f"{alias}." if alias else ""


def _filter_parameter(dimension: Dimension) -> str:
    """The name of tally_views_matching's argument for a dimension's filter."""
    return f"{dimension.name}s" if dimension.any_of else f"of_{dimension.name}"


def _filter_condition(dimension: Dimension) -> str:
    parameter = _filter_parameter(dimension)
    match = f"= ANY ({parameter})" if dimension.any_of else f"= {parameter}"
    return f"AND ({parameter} IS NULL OR {dimension.value_sql('v.')} {match})"


def _view_value(index: int, field: str) -> str:
    cast = VIEW_CASTS.get(field)
    return f"(v->>{index})::{cast}" if cast else f"v->>{index}"


# Each marker's text, from its argument (None when it has none).
RENDERERS: dict[str, Callable[[str | None], str]] = {
    # The stored columns: path, referrer, source, ..., search_engine (STORED_COLUMNS)
    "dimension_columns": lambda alias: _joined(_qualifier(alias) + column for column in STORED_COLUMNS),
    # The values: path, coalesce(search_engine, tally_referrer_domain(referrer, site)) AS referrer, ...
    "dimension_values": lambda alias: _joined(_value(d, _qualifier(alias)) for d in DIMENSIONS),
    # The columns the values read: path, referrer, site, source, ...
    "dimension_inputs": lambda alias: _joined(_qualifier(alias) + column for column in _inputs()),
    # A NULL per dimension: a row of something else (an event) beside the views' values.
    "dimension_nulls": lambda _: _joined("NULL" for _d in DIMENSIONS),
    # A VALUES row per dimension, its name and its value: ('path', path), ...
    "dimension_pairs": lambda _: _joined(f"('{d.name}', {d.name})" for d in DIMENSIONS),
    # GROUP BY positions, from the argument on: one per dimension (its value), one per stored
    # column (dimension_columns), or one per column the values read.
    "dimension_positions": lambda start: _positions(len(DIMENSIONS), start),
    "column_positions": lambda start: _positions(len(STORED_COLUMNS), start),
    "input_positions": lambda start: _positions(len(_inputs()), start),
    # tally_views_matching's arguments for the filters (of_path text, referrers text[], ...),
    # its conditions (AND (of_path IS NULL OR v.path = of_path) ...), and a call's parameters.
    "filter_parameters": lambda _: _joined(
        f"{_filter_parameter(d)} {'text[]' if d.any_of else 'text'}" for d in DIMENSIONS
    ),
    "filter_conditions": lambda _: "\n       ".join(_filter_condition(d) for d in DIMENSIONS),
    "filter_arguments": lambda _: _joined(
        f"%({d.name})s::text[]" if d.any_of else f"%({d.name})s" for d in DIMENSIONS
    ),
    # insert_page_views' columns and their values in a view's JSON array (VIEW_FIELDS' order).
    "view_columns": lambda _: _joined(VIEW_FIELDS),
    "view_values": lambda _: _joined(_view_value(index, field) for index, field in enumerate(VIEW_FIELDS)),
    # Where a view's JSON array holds the day of its visitor id's salt: after VIEW_FIELDS.
    "view_salt_day": lambda _: str(len(VIEW_FIELDS)),
}


def render(sql: str, where: str = "SQL") -> str:
    """`sql` with every marker filled from DIMENSIONS; UnknownMarker names `where` and the marker."""

    def fill(match: re.Match[str]) -> str:
        renderer = RENDERERS.get(match.group(1))
        if renderer is None:
            raise UnknownMarker(
                f"{where}: unknown marker {match.group()}; markers are {', '.join(RENDERERS)}"
            )
        return renderer(match.group(2))

    rendered = MARKER.sub(fill, sql)
    if "{{" in rendered or "}}" in rendered:
        left = rendered[max(rendered.find("{{"), rendered.find("}}")) - 20 :][:60]
        raise UnknownMarker(f"{where}: a marker is not closed or not understood near {left!r}")
    return rendered


def dimension_functions(path: Path = FUNCTIONS_FILE) -> str:
    """The rollup's and the filters' functions (migrations/dimension_functions.sql), rendered."""
    return render(path.read_text(encoding="utf-8"), path.name)


def dimension_columns() -> tuple[str, ...]:
    """The columns of page_views the dimensions are stored in and read, in the table's order."""
    return STORED_COLUMNS
