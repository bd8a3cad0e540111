"""Where visitors come from and what they use (issue 17): countries from addresses, browsers and
systems from user agents, devices from widths, campaigns from URLs; through the real WSGI app."""

from __future__ import annotations

import json
import re
import urllib.parse

import pytest

from tally.dimensions import DIMENSIONS
from tally.web.audience import audience_of, device_of
from tests.test_web import roll_up
from tests.test_web_collect import sites_client

FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko)"
    " Version/17.0 Mobile/15E148 Safari/604.1"
)
CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/120.0.0.0 Safari/537.36"
)


@pytest.fixture
def client(database_url, pool):
    return sites_client(database_url, pool)


def send(client, url: str, agent: str, address: str, width: object = None, status: int = 201):
    body = {"url": url, "referrer": ""}
    if width is not None:
        body["width"] = width
    headers = {"User-Agent": agent, "X-Forwarded-For": f"10.0.0.1, {address}"}
    return client.post(
        "/api/collect", json.dumps(body), headers=headers, content_type="text/plain", status=status
    )


def test_views_from_known_clients_land_in_the_right_panels(client, conn):
    send(client, "https://example.com/a?utm_source=news&utm_medium=email&utm_campaign=spring", FIREFOX_LINUX,
         "85.214.132.117", 1280)  # fmt: skip
    send(client, "https://example.com/b", FIREFOX_LINUX, "85.214.132.117", 1280)  # the same visitor
    roll_up(conn)
    send(client, "https://example.com/a", SAFARI_IPHONE, "8.8.8.8", 390)
    send(client, "https://example.com/a", CHROME_WINDOWS, "2a00:1450:4001::1", 1920)
    send(client, "https://example.com/a", CHROME_WINDOWS, "133.242.0.1", 800)
    stored = conn.execute(
        "SELECT country, browser, os, device, medium, campaign FROM page_views ORDER BY id"
    ).fetchall()
    assert stored == [
        ("DE", "Firefox", "Linux", "laptop", "email", "spring"),
        ("DE", "Firefox", "Linux", "laptop", None, None),
        ("US", "Mobile Safari", "iOS", "phone", None, None),
        ("IE", "Chrome", "Windows", "desktop", None, None),
        ("JP", "Chrome", "Windows", "tablet", None, None),
    ]
    body = client.get("/api/stats?days=1&site=example.com").json
    assert body["top_countries"][0] == {"country": "DE", "views": 2, "visitors": 1}
    assert {row["country"] for row in body["top_countries"]} == {"DE", "US", "IE", "JP"}
    assert body["top_browsers"][:2] == [
        {"browser": "Chrome", "views": 2, "visitors": 2},
        {"browser": "Firefox", "views": 2, "visitors": 1},
    ]
    assert body["top_os"][0] == {"os": "Linux", "views": 2, "visitors": 1}
    assert {row["device"]: row["views"] for row in body["top_devices"]} == {
        "laptop": 2, "phone": 1, "desktop": 1, "tablet": 1,
    }  # fmt: skip
    assert body["top_campaigns"] == [{"campaign": "spring", "views": 1, "visitors": 1}]
    assert body["top_mediums"] == [{"medium": "email", "views": 1, "visitors": 1}]
    assert body["current_visitors"] == 4
    narrowed = client.get("/api/stats?days=1&country=DE").json
    assert narrowed["total_views"] == 2 and narrowed["visitors"] == 1
    assert narrowed["top_paths"] == [
        {"path": "/a", "views": 1, "visitors": 1},
        {"path": "/b", "views": 1, "visitors": 1},
    ]
    assert narrowed["current_visitors"] == 1


@pytest.mark.parametrize("width", ["wide", -1, True, 1e9, [390], {"w": 1}])
def test_a_bad_width_is_a_400_and_nothing_is_stored(client, conn, width):
    response = send(client, "https://example.com/", FIREFOX_LINUX, "8.8.8.8", width, status=400)
    assert "width" in response.json["error"]
    assert conn.execute("SELECT count(*) FROM page_views").fetchone()[0] == 0


def test_server_side_views_have_no_audience(client, conn):
    client.post_json("/api/pageviews", {"path": "/server", "site": "example.com"}, status=201)
    assert conn.execute("SELECT country, browser, os, device FROM page_views").fetchall() == [
        (None, None, None, None)
    ]


def test_unknowns_are_stored_as_unknown():
    assert audience_of("203.0.113.77", "something/1.0 unheard-of", None).country is None
    assert audience_of("not an address", "", None) == audience_of("::1", "", None)
    assert audience_of("8.8.8.8", "", 575).device == "phone" and device_of(576) == "tablet"
    assert device_of(991) == "tablet" and device_of(1439) == "laptop" and device_of(1440) == "desktop"


def test_the_rollup_and_the_queries_name_every_dimension_and_only_those():
    """The VALUES lists that turn a view into a row per dimension are rendered from the table, in
    the rollup, the visitor moves (between the whole site's row and events') and filtered_answer."""
    from tally.db import QUERIES
    from tally.dimension_sql import dimension_functions

    names = [dimension.name for dimension in DIMENSIONS]
    lists = re.compile(r"CROSS JOIN LATERAL \(VALUES(.*?)\) AS dims", re.S)
    found = [re.findall(r"\('(\w*)', ", block) for block in lists.findall(dimension_functions())]
    assert found == [names, ["", *names, "event"]], found
    assert [re.findall(r"\('(\w+)', ", block) for block in lists.findall(QUERIES["filtered_answer"])] == [
        names
    ]
    for query in ("filtered_answer", "recent_visitors", "filtered_export"):
        assert all(f"%({name})s" in QUERIES[query] for name in names), query


def top_level_items(select: str) -> list[str]:
    """A select list's items: split at its commas outside parentheses, nested ones too
    (`coalesce(search_engine, tally_referrer_domain(referrer, site)) AS referrer`)."""
    items, depth, start = [], 0, 0
    for index, character in enumerate(select):
        depth += {"(": 1, ")": -1}.get(character, 0)
        if character == "," and depth == 0:
            items.append(select[start:index])
            start = index + 1
    return [*items, select[start:]]


def test_the_stats_tail_lists_the_dimensions_in_their_order():
    """tally/web/panels.py reads `stats_tail`'s rows in the table's order: the query's list is
    rendered from the table, so a dimension's values never land in another's panel."""
    from tally.db import QUERIES
    from tally.web.panels import TAIL_COLUMNS

    query = "\n".join(line for line in QUERIES["stats_tail"].splitlines() if not line.startswith("--"))
    select = query.split("\n  FROM", 1)[0].removeprefix("SELECT")
    columns = [re.split(r"\s+AS\s+", part.strip())[-1] for part in top_level_items(select)]
    names = [dimension.name for dimension in DIMENSIONS]
    assert columns == ["day", "recent", *names, "views", "with_visitor"] == list(TAIL_COLUMNS), columns


def test_a_medium_or_campaign_is_kept_as_the_source_is_and_only_a_control_character_leaves_it_out(
    client, conn
):
    """A no-break space (pasted from a document) and a zero-width non-joiner (written Persian) are
    text, not control characters: the source kept them, the medium and campaign were dropped."""
    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # "mi-khaham", with its ZWNJ
    query = urllib.parse.urlencode(
        {"utm_source": "spring\u00a0sale", "utm_medium": "spring\u00a0sale", "utm_campaign": persian}
    )
    send(client, f"https://example.com/a?{query}", FIREFOX_LINUX, "8.8.8.8")
    send(client, "https://example.com/a?utm_medium=mail%0Aer&utm_campaign=x%07y", FIREFOX_LINUX, "8.8.8.8")
    assert conn.execute("SELECT source, medium, campaign FROM page_views ORDER BY id").fetchall() == [
        ("spring\u00a0sale", "spring\u00a0sale", persian),
        (None, None, None),
    ]
