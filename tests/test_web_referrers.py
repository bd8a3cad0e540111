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
