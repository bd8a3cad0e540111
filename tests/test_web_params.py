"""The query parameters that routes share (tally/web/params.py), through the real WSGI app: a
parameter given twice says so, and every route that takes parameters refuses an unknown one."""

from __future__ import annotations

import re

import pytest

from tests.test_web import TOKEN, make_client


@pytest.fixture
def owner(database_url, pool):
    return make_client(database_url, pool, owner=True, ADMIN_TOKEN=TOKEN)


# (route, the parameter given twice, the rest of the query); each route's other parameters
# are valid, so the repeated one is what the answer is about.
REPEATED = [
    *(
        (route, name, value)
        for route in ("/api/stats", "/api/export", "/")
        for name, value in (("days", "7"), ("site", "example.com"), ("tz", "Europe/Paris"))
    ),
    ("/api/stats", "compare", "previous"),
    ("/", "compare", "previous"),
    ("/jobs", "status", "failed"),
    ("/jobs", "task", "send_reports"),
    ("/jobs", "queue", "default"),
    ("/jobs", "before", "5"),
    ("/reports/preview", "site", "example.com"),
    ("/reports/preview", "period", "weekly"),
]


@pytest.mark.parametrize(("route", "name", "value"), REPEATED)
@pytest.mark.parametrize("second", ["same", "empty"])
def test_a_parameter_given_twice_says_give_it_once(owner, route, name, value, second):
    """`?days=7&days=7` was "days must be a whole number from 1 to 366." (and `?site=a&site=a`
    "site must be one host name"), which sent the reader looking at a value that is right.
    An empty copy too: which of the two was meant is not known (as for filters)."""
    query = f"{name}={value}&{name}={value if second == 'same' else ''}"
    if route == "/reports/preview" and name != "site":
        query += "&site=example.com"
    answer = owner.get(f"{route}?{query}", status=400)
    assert answer.json == {"error": f"Give {name} once."}


def test_the_jobs_bulk_actions_say_so_too(owner):
    answer = owner.post("/api/jobs/bulk/retry?status=failed&status=failed", status=400)
    assert answer.json == {"error": "Give status once."}


def test_a_bad_single_value_still_says_what_a_good_one_is(owner):
    assert owner.get("/api/stats?days=0", status=400).json == {
        "error": "days must be a whole number from 1 to 366."
    }
    assert "one host name" in owner.get("/api/stats?site=a:b", status=400).json["error"]
    assert owner.get("/reports/preview?site=example.com&period=daily", status=400).json == {
        "error": "period must be weekly or monthly."
    }


@pytest.mark.parametrize(
    ("route", "query"),
    [
        ("/api/stats", "days=7&x=1"),
        ("/api/export", "days=7&x=1"),
        ("/jobs", "status=failed&x=1"),
        ("/reports/preview", "site=example.com&period=weekly&x=1"),
    ],
)
def test_an_unknown_parameter_is_a_400_that_names_it_on_every_route(owner, route, query):
    """The report's preview answered 200 to `&x=1` (a misspelt `perod=monthly` showed the week)."""
    error = owner.get(f"{route}?{query}", status=400).json["error"]
    assert re.match(r"Unknown parameter '?x'?[;:] ", error)


def test_the_preview_names_what_it_takes(owner):
    assert owner.get("/reports/preview?site=example.com&perod=monthly", status=400).json == {
        "error": "Unknown parameter perod: the report's preview takes site and period."
    }
