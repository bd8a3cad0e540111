"""The SQL rendered from tally/dimensions.py's table is the SQL that was written by hand (issue 17,
item 7): the refactor that made adding a dimension one line changed no plan and no number."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from migrations import MIGRATIONS_DIR
from tally import dimension_sql
from tally.db import QUERIES, load_queries
from tally.dimensions import DIMENSIONS, VIEW_FIELDS

# Each function's last definition before it became a template: file, and which of its CREATEs.
# Every one has changed since: the rollup (migrations/0031: the pairs held in the day's row),
# tally_visitor_moves (its views read through the index whatever the plan, as migrations/0035
# reads tally_visit_moves'), and tally_views_matching (a few ids' views, events and goal views
# read a probe an id, session 46: docs/ARCHITECTURE.md, "Plans and JIT"); the exact tests
# (tests/test_web_exact.py, tests/test_visitor_days.py, tests/test_web_carried.py) hold what they
# count. A function rendered from the table is compared here while it stays as written.
LAST_WRITTEN: dict[str, tuple[str, int]] = {}
TEMPLATES = ["tally_rollup_page_views", "tally_views_matching", "tally_visitor_moves"]


def words(sql: str) -> str:
    """SQL without its comments and with one space wherever there was any whitespace."""
    sql = re.sub(r"--[^\n]*", "", sql)
    return " ".join(sql.split()).replace("CREATE OR REPLACE FUNCTION", "CREATE FUNCTION")


def functions(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for match in re.finditer(r"CREATE (?:OR REPLACE )?FUNCTION (\w+)\(.*?\n\$\$;", text, re.S):
        found.setdefault(match.group(1), []).append(words(match.group()))
    return found


def test_the_rendered_functions_are_those_the_migrations_last_wrote():
    assert [dimension.name for dimension in DIMENSIONS] == [
        "path",
        "referrer",
        "source",
        "medium",
        "campaign",
        "country",
        "browser",
        "os",
        "device",
    ], "the table changed: this test holds the nine dimensions the migrations wrote out"
    rendered = functions(dimension_sql.dimension_functions())
    assert sorted(rendered) == sorted([*LAST_WRITTEN, *TEMPLATES])
    for name, (file, which) in LAST_WRITTEN.items():
        written = functions((MIGRATIONS_DIR / file).read_text(encoding="utf-8"))[name][which]
        assert rendered[name] == [written], name


def test_insert_page_views_stores_each_field_of_a_view_in_its_column():
    """The one query whose text moved: the visitor's id is a View's fourth field, after the
    site (it was fifth, after the source), the same column gets the same value; then
    `viewed_at`, from the day of the id's salt that follows them (tally/web/visitors.py)."""
    sql = words(QUERIES["insert_page_views"])
    columns = re.search(r"INSERT INTO page_views \((.*?)\)", sql).group(1).split(", ")
    values = re.search(r"SELECT (.*?) FROM jsonb_array_elements", sql).group(1).split(", ")
    assert columns == [*VIEW_FIELDS, "viewed_at"]
    fields = columns[: len(VIEW_FIELDS)]
    assert values[: len(fields)] == [
        f"(v->>{i})::bigint" if c == "visitor" else f"v->>{i}" for i, c in enumerate(fields)
    ]
    assert f"(v->>{len(VIEW_FIELDS)})::date" in " ".join(values[len(fields) :])


def test_an_unknown_or_unclosed_marker_is_an_error_at_load(tmp_path: Path):
    bad = tmp_path / "queries.sql"
    bad.write_text("-- one --\n-- Says what.\nSELECT {{dimension_value}} FROM page_views\n")
    with pytest.raises(
        dimension_sql.UnknownMarker, match=r"queries.sql, one: unknown marker \{\{dimension_value\}\}"
    ):
        load_queries(bad)
    bad.write_text("-- one --\n-- Says what.\nSELECT {{dimension_values FROM page_views\n")
    with pytest.raises(dimension_sql.UnknownMarker, match="not closed"):
        load_queries(bad)
    assert not any("{{" in sql or "}}" in sql for sql in QUERIES.values())


def test_a_dimension_names_only_plain_columns():
    from tally.dimensions import Dimension

    with pytest.raises(ValueError, match="plain lower-case SQL name"):
        Dimension("lang", "top_langs", "Languages", column="lang; DROP TABLE page_views")
    with pytest.raises(ValueError, match="plain lower-case SQL name"):
        Dimension("lang", "top_langs", "Languages", reads="lower({row}Lang)")
