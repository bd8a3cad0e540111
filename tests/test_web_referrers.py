"""Referring domains as stats show them (tally/web/referrers.py, `tally_referrer_domain`)."""

from __future__ import annotations

import pytest

from tests.test_web import TOKEN, make_client, roll_up
from tests.test_web_collect import beacon


@pytest.fixture
def client(database_url, pool):
    """The owner's app, any site accepted."""
    return make_client(database_url, pool, owner=True, ADMIN_TOKEN=TOKEN)


def test_an_ipv6_referrer_is_its_whole_address_and_a_final_dot_is_no_other_host(client, conn):
    """The domain ended at the first colon ("[2001", one row for every IPv6 referrer, and a
    filter on the address matched nothing); "site5.test." was a domain of its own, the site's
    own pages among them (migrations/0039)."""
    beacon(client, "https://www.site5.test/a", "https://[2001:db8::5]/x", status=201)
    beacon(client, "https://www.site5.test/b", "http://[2001:DB8::7]:8080/page", status=201)
    roll_up(conn)  # rolled up and in the tail alike
    beacon(client, "https://www.site5.test/c", "https://[2001:db8::5]/y", status=201)
    beacon(client, "https://www.site5.test/d", "https://site5.test./x", status=201)  # the site's own
    beacon(client, "https://www.site5.test/e", "https://news.example.org./", status=201)
    body = client.get("/api/stats?days=1&site=www.site5.test").json
    assert [(row["referrer"], row["views"]) for row in body["top_referrers"]] == [
        ("[2001:db8::5]", 2),
        ("[2001:db8::7]", 1),
        ("news.example.org", 1),
    ]
    filtered = client.get("/api/stats", {"days": "1", "site": "www.site5.test", "referrer": "[2001:db8::5]"})
    assert filtered.json["total_views"] == 2


@pytest.mark.parametrize(
    "referrer",
    [
        "https://exa mple.com/",
        "https://./",
        "https://ex%41mple.com/",
        "https://-bad-.com/",
        "https://a..b/",
        "https://[1::2::3]/",
        "https://bücher.de/",  # browsers send xn--bcher-kva.de
    ],
)
def test_a_referrer_whose_host_is_no_host_is_refused_and_nothing_stored(client, conn, referrer):
    """They were stored, and shown as referring domains ("exa mple.com", "."). The OpenAPI
    document's pattern says the same (tests/test_openapi.py)."""
    answer = client.post_json("/api/pageviews", {"path": "/a", "referrer": referrer}, status=400)
    assert '"referrer" must be a URL' in answer.json["error"]
    assert beacon(client, "https://example.com/a", referrer, status=400).json["error"] == answer.json["error"]
    assert conn.execute("SELECT count(*) FROM page_views").fetchone()[0] == 0


def test_referrers_of_every_kind_of_host_are_kept(client, conn):
    """An app's referrer (android-app://), an IPv6 or IPv4 address, an international name, a
    final dot."""
    kept = [
        "android-app://com.google.android.gm/",
        "https://[2001:db8::5]/x",
        "http://127.0.0.1:8080/",
        "https://xn--bcher-kva.de/x",
        "https://x.com./",
    ]
    client.post_json(
        "/api/pageviews", [{"path": "/a", "referrer": referrer} for referrer in kept], status=201
    )
    stored = [row[0] for row in conn.execute("SELECT referrer FROM page_views ORDER BY id")]
    assert stored == kept
