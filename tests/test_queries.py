"""Every named query of tally/queries.sql against the migrated schema, on each build.

Most queries are run by the tests of what calls them, but a query only a job runs once a day,
or only after some time, may never run in the suite: `delete_old_rollups` named a CTE
`overlaps`, a reserved word, and every minutely rollup job ended in an error after its fold
(migration 0020 to the fix). Here each query is prepared by the server, which parses,
analyses and plans it without running it.
"""

from __future__ import annotations

import re

import psycopg
import pytest

from tally.db import QUERIES

PARAMETER = re.compile(r"%\((\w+)\)s|%%")


def server_form(sql: str) -> str:
    """`sql` with psycopg's `%(name)s` as the server's `$n` (a name reused keeps its number)."""
    numbers: dict[str, int] = {}

    def number(match: re.Match) -> str:
        if match.group(1) is None:
            return "%"
        return f"${numbers.setdefault(match.group(1), len(numbers) + 1)}"

    return PARAMETER.sub(number, sql)


def test_parameters_become_numbered_once():
    assert server_form("a = %(x)s AND b = %(y)s OR a = %(x)s AND c LIKE '1%%'") == (
        "a = $1 AND b = $2 OR a = $1 AND c LIKE '1%'"
    )


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_every_query_parses_and_plans(conn: psycopg.Connection, name: str):
    result = conn.pgconn.prepare(f"check_{name}".encode(), server_form(QUERIES[name]).encode())
    message = (result.error_message or b"").decode(errors="replace").strip()
    assert result.status == psycopg.pq.ExecStatus.COMMAND_OK, f"{name}: {message}"


def test_old_rollups_go_by_the_utc_day_whatever_the_sessions_zone(conn: psycopg.Connection):
    """A database or role with another TimeZone (`ALTER DATABASE ... SET timezone`) moved the
    cutoff: with America/New_York it fell at 05:00 UTC, and took the cutoff day's first hours."""
    import datetime

    conn.execute("SET TimeZone = 'America/New_York'")
    day = datetime.date(2025, 1, 10)
    conn.execute(
        "INSERT INTO page_view_buckets (site, bucket, views) VALUES"
        " ('example.com', '2025-01-09 23:45+00', 1), ('example.com', '2025-01-10 02:00+00', 1)"
    )
    conn.execute(QUERIES["delete_old_rollups"], {"cutoff_day": day})
    kept = conn.execute("SELECT bucket FROM page_view_buckets ORDER BY bucket").fetchall()
    assert kept == [(datetime.datetime(2025, 1, 10, 2, tzinfo=datetime.UTC),)]
