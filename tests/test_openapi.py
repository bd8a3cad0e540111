"""GET /api/openapi.json: a valid OpenAPI 3.1 document of exactly the app's routes, and a
Schemathesis run driven by it against a live `python web.py` that finds no 5xx and no
answer the document does not allow."""

from __future__ import annotations

import json
import re
import subprocess
import time

import jsonschema
import pytest
from openapi_spec_validator import validate

import jobs
from tally.config import from_env
from tally.web.app import build_app
from tally.web.beacon import Refused, parse_collect_body
from tests.conftest import VENV_BIN, free_port, process_environment
from tests.test_web import TOKEN as WEB_TOKEN
from tests.test_web import make_client

TOKEN = "openapi-owner-token"
METHODS = {"get", "post", "put", "patch", "delete", "options", "head"}
# Per operation; the run stays far under a minute on a busy 2-core machine.
MAX_EXAMPLES = 12


def normalized(route: str) -> str:
    """/api/jobs/<job_id:int>/retry and /api/jobs/{job}/retry both as /api/jobs/{}/retry."""
    return re.sub(r"<[^>]+>|\{[^}]+\}", "{}", route)


def test_the_document_is_valid_openapi_3_1(database_url, pool):
    document = make_client(database_url, pool).get("/api/openapi.json", status=200).json
    assert document["openapi"].startswith("3.1")
    validate(document)
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"]["scheme"] == "bearer"
    assert schemes["session"]["in"] == "cookie" and schemes["shareLink"]["in"] == "query"


def test_every_route_of_the_app_is_in_the_document_and_the_reverse(database_url, pool):
    app = build_app(from_env({"DATABASE_URL": database_url}, process_type="web"), pool, jobs.app)
    in_app = {(route.method.lower(), normalized(route.rule)) for route in app.routes}
    document = make_client(database_url, pool).get("/api/openapi.json").json
    in_document = {
        (method, normalized(path))
        for path, operations in document["paths"].items()
        for method in operations
        if method in METHODS
    }
    assert in_app - in_document == set(), "routes missing from the document"
    assert in_document - in_app == set(), "operations in the document that the app lacks"
    names = {route.callback.__name__ for route in app.routes}
    ids = {op["operationId"] for ops in document["paths"].values() for op in ops.values()}
    assert ids <= names  # each operationId is the route function's name


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_document(start_process, tmp_path):
    port = free_port()
    env = {"PORT": str(port), "ADMIN_TOKEN": TOKEN, "SHARE_TOKEN": "openapi-share", "WEB_THREADS": "4"}
    web = start_process(["web.py"], env)
    web.wait_for_line("Serving on")
    started = time.monotonic()
    result = subprocess.run(
        [
            str(VENV_BIN / "schemathesis"),
            "run",
            f"http://127.0.0.1:{port}/api/openapi.json",
            # Every check, both ways: what the document calls valid is taken, what it calls
            # invalid is refused. But ignored_auth: its wrong tokens trip the failed-login limit
            # (tally/web/auth.py), after which every answer is a 429 and nothing is tested.
            "--checks",
            "all",
            "--exclude-checks",
            "ignored_auth",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            "20",
            # One worker: two threads of Hypothesis's lambda-source reader meet a CPython 3.11
            # bug ("AST constructor recursion depth mismatch", a Runtime Error of the run).
            "--workers",
            "1",
            "--request-timeout",
            "20",
            # Hypothesis's "too slow" and the like judge the machine, not the API.
            "--suppress-health-check",
            "all",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--max-redirects",
            "0",
            "--no-color",
        ],
        env=process_environment({"SCHEMATHESIS_HOOKS": ""}),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        # 47 s alone; its generating is CPU-bound, and beside make test's five other parts on two
        # cores it passed 120 s once (a CI run whose machine was busier still).
        timeout=300,
    )
    took = time.monotonic() - started
    print(f"schemathesis: {took:.1f} s\n{result.stdout[-1500:]}")
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert "Traceback" not in web.output() and " 500 " not in web.output()


def test_every_time_zone_the_document_lists_is_one_postgresql_knows(database_url, pool, conn):
    """The document's TimeZone enum is what ?tz= and TIMEZONE accept (tally.env.time_zone_names);
    each must be a zone of the server's own database too, on every build."""
    document = make_client(database_url, pool).get("/api/openapi.json").json
    zones = [zone for zone in document["components"]["schemas"]["TimeZone"]["enum"] if zone]
    assert {"UTC", "Europe/Paris", "Asia/Kathmandu", "America/Argentina/Buenos_Aires"} <= set(zones)
    assert "localtime" not in zones and "posixrules" not in zones
    unknown = conn.execute(
        "SELECT array_agg(zone) FROM unnest(%s::text[]) zone"
        " WHERE NOT EXISTS (SELECT FROM pg_timezone_names WHERE name = zone)",
        (zones,),
    ).fetchone()[0]
    assert unknown is None


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("site=", 200),
        ("site=Example.COM.", 200),
        ("site=%20example.com", 400),  # the document's pattern has no spaces, nor does the app
        ("site=a..", 400),
        ("tz=", 200),
        ("tz=localtime", 400),
        ("tz=Europe/Paris", 200),
        ("campaign=%C2%B6%C3%AB", 200),  # not ASCII, no control character
        ("campaign=%C2%85", 400),  # a C1 control
    ],
)
def test_what_the_document_calls_valid_the_stats_take(database_url, pool, query, status):
    client = make_client(database_url, pool, owner=True, ADMIN_TOKEN=WEB_TOKEN)
    client.get(f"/api/stats?{query}", status=status)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"path": "/", "site": None, "referrer": None}, 201),
        ({"path": "/", "site": "Example.com."}, 201),
        ({"path": "/", "site": " example.com"}, 400),
        ({"path": "/", "extra": 1}, 400),
        ([], 400),
    ],
)
def test_what_the_document_calls_valid_pageviews_take(database_url, pool, body, status):
    client = make_client(database_url, pool, owner=True, ADMIN_TOKEN=WEB_TOKEN)
    client.post_json("/api/pageviews", body, status=status)


BEACONS = [
    {"url": "https://example.com/"},
    {"url": "HTTP://Example.COM:0080/a?utm_source=x#top"},
    {"url": "https://user:pw@example.com/a"},
    {"url": "https://example.com"},
    {"url": "https://example.com:99999/"},
    {"url": "https://-bad/"},
    {"url": "ftp://example.com/"},
    {"url": "https://example.com/\u0085"},
    {"url": "https://example.com/", "referrer": None, "width": None, "event": None, "props": None},
    {"url": "https://example.com/", "referrer": "android-app://com.google.android.gm/"},
    {"url": "https://example.com/", "referrer": "https://u@h.example/p?q=1"},
    {"url": "https://example.com/", "referrer": "mailto:someone@example.com"},
    {"url": "https://example.com/", "referrer": "not a url"},
    {"url": "https://example.com/", "width": 390.5},
    {"url": "https://example.com/", "width": -1},
    {"url": "https://example.com/", "width": True},
    {"url": "https://example.com/", "event": "Signup", "props": {"plan": "pro", "n": 3, "yes": True}},
    {"url": "https://example.com/", "event": "   "},
    {"url": "https://example.com/", "event": "x" * 121},
    {"url": "https://example.com/", "event": "Sign\u0007up"},
    {"url": "https://example.com/", "props": {"plan": "pro"}},
    {"url": "https://example.com/", "props": {}},
    {"url": "https://example.com/", "event": "E", "props": {"": "empty key"}},
    {"url": "https://example.com/", "event": "E", "props": {"nested": {"a": 1}}},
    {"url": "https://example.com/", "event": "E", "props": {str(n): n for n in range(31)}},
    {"url": "https://example.com/", "extra": 1},
]


@pytest.mark.parametrize("beacon", BEACONS, ids=range(len(BEACONS)))
def test_the_beacon_schema_and_the_collector_agree(database_url, pool, beacon):
    """What the document's Beacon schema calls valid, POST /api/collect takes, and only that."""
    document = make_client(database_url, pool).get("/api/openapi.json").json
    schema = {**document["components"]["schemas"]["Beacon"], "components": document["components"]}
    valid = jsonschema.Draft202012Validator(schema).is_valid(beacon)
    try:
        parse_collect_body(json.dumps(beacon).encode())
        taken = True
    except Refused:
        taken = False
    assert valid == taken, (beacon, valid, taken)
