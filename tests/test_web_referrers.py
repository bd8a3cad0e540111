"""Referring domains as stats show them (tally/web/referrers.py, tally/search_engines.py,
`tally_referrer_domain`)."""

from __future__ import annotations

import html
import re
import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tally.search_engines import (
    REPORTED_DOMAINS,
    SEARCH_ENGINE_NAMES,
    SEARCH_ENGINES,
    referrer_domain,
    referrer_name,
    search_engine,
)
from tally.web.filters import InvalidFilter, parse_filters
from tally.web.openapi_inputs import REFERRER_FILTER
from tally.web.pageviews import MAX_TEXT
from tally.web.referrers import stored_referrer
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
        "https://[1::2::3]/",
        "https://bücher.de/",  # browsers send xn--bcher-kva.de
        "not a url",
    ],
)
def test_a_referrer_whose_host_is_no_host_is_refused_and_nothing_stored(client, conn, referrer):
    """They were stored, and shown as referring domains ("exa mple.com", "."). The OpenAPI
    document's pattern says the same (tests/test_openapi.py)."""
    answer = client.post_json("/api/pageviews", {"path": "/a", "referrer": referrer}, status=400)
    assert '"referrer" must be a URL' in answer.json["error"]
    assert beacon(client, "https://example.com/a", referrer, status=400).json["error"] == answer.json["error"]
    assert conn.execute("SELECT count(*) FROM page_views").fetchone()[0] == 0
    if not referrer.isascii():  # how to write it, as the `site` parameter's refusal says
        assert answer.json["error"].endswith(
            "An international name in its xn-- form: bücher.de is xn--bcher-kva.de."
        )


@pytest.mark.parametrize(
    ("referrer", "domain"),
    [
        ("https://foo-.blogspot.com/post", "foo-.blogspot.com"),  # Blogger made such names
        ("https://-bad-.com/", "-bad-.com"),
        ("http://a..b/", "a..b"),  # WHATWG's URL test data has such hosts
    ],
)
def test_a_host_browsers_open_that_no_dns_name_is_is_kept_from_a_beacon_refused_by_the_api(
    client, conn, referrer, domain
):
    """A beacon was refused with them, and its view lost: the tracker cannot see the 400, and
    the page does not choose its referrer. A server-side sender reads the 400."""
    client.post_json("/api/pageviews", {"path": "/a", "referrer": referrer}, status=400)
    beacon(client, "https://example.com/a", referrer, status=201)
    assert conn.execute("SELECT referrer FROM page_views").fetchall() == [(referrer,)]
    body = client.get("/api/stats?days=1&site=example.com").json
    assert body["top_referrers"] == [{"referrer": domain, "views": 1, "visitors": 1}]
    filtered = client.get("/api/stats", {"days": "1", "site": "example.com", "referrer": domain})
    assert filtered.json["total_views"] == 1
    assert referrer_rows(client.get("/?days=1&site=example.com").text) == {domain: domain}


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


# --- a search engine's name, stored with the view ---------------------------------------------

# Referrers as they are stored, of every shape: each engine's hosts and others under its name,
# addresses, ports, a user name left by SQL, final dots, `www.` twice, the site's own pages.
STORED_REFERRERS = [
    *(
        f"https://{host}.{name}.{suffix}/x"
        for name in SEARCH_ENGINES
        for host in ("www", "mail", "search", "uk.search", "m")
        for suffix in ("com", "co.uk", "de")
    ),
    *(
        f"https://{name}.{suffix}/"
        for name in SEARCH_ENGINES
        for suffix in ("com", "com.br", "co.jp", "blogspot.com", "example.net", "ck")
    ),
    "https://www.www.google.com/",
    "https://GOOGLE.DE./search",
    "https://me:pw@google.fr:8443/",
    "http://[2001:db8::5]:80/x",
    "http://127.0.0.1:8080/",
    "android-app://com.google.android.gm/",
    "https://example.com/",
    "https://www.example.com/a",
    "https://shop.example.com/",
    "https://google/",
    "https://.../",
    "not a url",
]


@pytest.mark.parametrize("site", ["example.com", "www.example.com", "google.com"])
def test_the_web_reads_a_referrers_domain_and_engine_as_sql_does(conn, site):
    """`referrer_domain` is tally_referrer_domain in Python; `search_engine` names what
    `referrer_name` calls an engine's search of that domain, and nothing else."""
    in_sql = dict(
        conn.execute(
            "SELECT r, tally_referrer_domain(r, %s) FROM unnest(%s::text[]) r", (site, STORED_REFERRERS)
        ).fetchall()
    )
    assert {r: referrer_domain(r, site) for r in STORED_REFERRERS} == in_sql
    for referrer, domain in in_sql.items():
        name = referrer_name(domain) if domain else None
        assert search_engine(referrer, site) == (name if name != domain else None), referrer
    assert search_engine("https://www.google.co.uk/", site) == "Google"
    assert search_engine("https://google.com/", site) == (None if site == "google.com" else "Google")
    assert search_engine(stored_referrer("https://Search.Brave.com/search?q=x"), site) == "Brave Search"


def test_each_search_engine_is_reported_by_a_domain_of_its_search_that_filters_by_it():
    """The API lists an engine under one domain (DESIGN.md: referrers by domain), the dashboard
    under its name; that domain given back as a filter must be the engine's, as any of its
    search's domains is."""
    assert set(REPORTED_DOMAINS) == SEARCH_ENGINE_NAMES
    for name, domain in REPORTED_DOMAINS.items():
        assert referrer_name(domain) == name, domain
        assert parse_filters({"referrer": [domain]}) == {"referrer": name}
        assert parse_filters({"referrer": [name]}) == {"referrer": name}


def test_a_server_side_senders_view_stores_its_search_engine(client, conn):
    views = [
        {"path": "/a", "referrer": "https://www.google.de/", "site": "example.com"},
        {"path": "/b", "referrer": "https://mail.google.com/", "site": "example.com"},
        {"path": "/c", "referrer": "https://google.com/", "site": "google.com"},  # its own page
    ]
    client.post_json("/api/pageviews", views, status=201)
    stored = conn.execute("SELECT path, search_engine FROM page_views ORDER BY path").fetchall()
    assert stored == [("/a", "Google"), ("/b", None), ("/c", None)]


# --- international domains: read in Unicode, filtered in either form ---------------------------

BUCHER = "xn--bcher-kva.de"  # bücher.de, as browsers send it
SPOOFS = {
    "xn--pple-43d.com": "apple.com with a Cyrillic a (U+0430) among Latin letters",
    "xn--80ak6aa92e.com": "apple.com in Cyrillic letters that all look Latin, under .com",
    "xn--zz.de": "no Punycode at all",
    "xn--fu-hia.de": "fuß.de, which IDNA 2003 read as fuss.de",
}


def referrer_rows(page: str) -> dict[str, str]:
    """The referrer panel's rows: each stored value (`data-value`) and the text shown."""
    panel = re.search(r'<table id="top-referrers".*?</table>', page, re.S).group(0)
    return {
        html.unescape(value): html.unescape(label)
        for value, label in re.findall(r'data-value="([^"]*)"><td class="value"><a [^>]*>([^<]*)</a>', panel)
    }


def test_an_international_referrer_reads_in_unicode_and_a_deceptive_one_as_sent(client, conn):
    """Browsers send xn--bcher-kva.de, which the panel showed as such: its owner reads
    bücher.de. A label that could pass for another name stays in its xn-- form, as Chromium's
    address bar shows it, and so does one that does not decode; the API, the links and the
    filters keep the stored value."""
    beacon(client, "https://site6.test/a", f"https://{BUCHER}/x", status=201)
    roll_up(conn)  # rolled up and in the tail alike
    beacon(client, "https://site6.test/b", f"https://www.{BUCHER}/y", status=201)
    for spoof in SPOOFS:
        beacon(client, "https://site6.test/c", f"https://{spoof}/", status=201)
    body = client.get("/api/stats?days=1&site=site6.test").json
    assert {row["referrer"]: row["views"] for row in body["top_referrers"]} == {BUCHER: 2} | {
        spoof: 1 for spoof in SPOOFS
    }
    page = client.get("/?days=1&site=site6.test").text
    assert referrer_rows(page) == {BUCHER: "bücher.de"} | {spoof: spoof for spoof in SPOOFS}
    assert f"/?days=1&site=site6.test&referrer={BUCHER}" in [
        html.unescape(h) for h in re.findall(r'href="([^"]*)"', page)
    ]
    for spoof in ("\u0430pple", "\u0430\u0440\u0440\u04cf\u0435", "fu\u00df"):  # each decoded
        assert spoof not in page


@pytest.mark.parametrize("written", ["bücher.de", "BÜCHER.DE", "ｂüｃｈｅｒ.de.", BUCHER, BUCHER.upper()])
def test_a_referrer_filter_in_unicode_matches_the_stored_ascii_form(client, conn, written):
    """`?referrer=bücher.de` counted nothing: the views are stored as browsers send the domain.
    It is read as typed into an address bar (case and full-width forms folded, a final dot
    dropped), on the stats, the export and the page."""
    beacon(client, "https://site7.test/a", f"https://{BUCHER}/x", status=201)
    beacon(client, "https://site7.test/b", "https://example.org/", status=201)
    roll_up(conn)
    beacon(client, "https://site7.test/c", f"https://{BUCHER}/z", status=201)
    query = {"days": "1", "site": "site7.test", "referrer": written}
    body = client.get("/api/stats", query).json
    assert body["total_views"] == 2 and body["filters"] == {"referrer": BUCHER}
    assert [row["path"] for row in body["top_paths"]] == ["/a", "/c"]
    export = client.get("/api/export", query).text
    assert "/a," in export and "/c," in export and "/b," not in export
    page = client.get("/", query).text
    assert 'id="total-views">2<' in page
    chip = re.search(r'<a class="chip"[^>]*data-filter="referrer"[^>]*>(.*?) <span', page).group(1)
    assert html.unescape(chip) == "Referrer: bücher.de"
    assert re.search(rf'<tr class="active" data-value="{re.escape(BUCHER)}">', page)


@pytest.mark.parametrize(
    "written", ["bü cher.de", "bücher..de", "-bücher.de", "bücher.de/x", "bü@cher.de", ".bücher.de"]
)
def test_a_referrer_filter_past_ascii_that_is_no_domain_is_a_400(client, written):
    """Not a 500 from the IDNA codec, nor a silent empty answer: the error says what it takes,
    as the OpenAPI document's pattern does (tests/test_openapi.py)."""
    for route in ("/api/stats", "/api/export", "/"):
        error = client.get(route, {"days": "1", "referrer": written}, status=400).json["error"]
        assert error.startswith("The filter 'referrer' must be a domain such as bücher.de"), route


def test_a_domain_shaped_referrer_filter_that_idna_refuses_is_a_value_nobody_has(client, conn):
    """A symbol (`★`), a leading mark, a joiner out of place: IDNA 2008 refuses them, so no
    stored domain has them. An empty answer, as for any value no view has: what the OpenAPI
    document calls valid is never refused."""
    beacon(client, "https://site8.test/a", f"https://{BUCHER}/x", status=201)
    for written in ("ä★.de", "\u0301ä.de", "ä\u200d.de"):
        body = client.get("/api/stats", {"days": "1", "site": "site8.test", "referrer": written}).json
        assert body["total_views"] == 0 and body["filters"] == {"referrer": written}


REFERRER_PATTERN = re.compile(REFERRER_FILTER["pattern"])


@settings(max_examples=200, deadline=None)
@given(st.from_regex(REFERRER_PATTERN, fullmatch=True).filter(lambda value: len(value) <= MAX_TEXT))
def test_every_referrer_filter_the_document_calls_valid_is_taken(value):
    """The OpenAPI document's pattern and the parser are one set (Schemathesis checks both ways
    with a few examples; this with many, and no server)."""
    parse_filters({"referrer": [value]})


@settings(max_examples=3000, deadline=None)
@given(st.text(st.characters(exclude_categories=("Cc",)), max_size=40))
def test_every_referrer_filter_the_document_calls_invalid_is_refused(value):
    try:
        parse_filters({"referrer": [value]})
    except InvalidFilter:
        assert REFERRER_PATTERN.search(value) is None
    else:
        assert REFERRER_PATTERN.search(value) is not None


def test_an_international_site_reads_in_unicode_in_the_switcher_the_title_and_its_report(client, conn):
    """The site switcher, the page's title and the emailed report named a site as beacons send
    it (xn--bcher-kva.de); its links and the API keep that form."""
    import datetime

    from tally import reports

    beacon(client, f"https://{BUCHER}/a", "", status=201)
    page = client.get(f"/?days=1&site={BUCHER}").text
    assert "<title>Tally: 1 view in 1 day on bücher.de</title>" in page
    assert f'data-site="{BUCHER}">bücher.de</a>' in page
    assert client.get("/api/sites").json["sites"][0]["site"] == BUCHER
    week = reports.Period("weekly", datetime.date(2026, 11, 23), datetime.date(2026, 11, 29))
    report = reports.Report(BUCHER, week, {"total_views": 3, "tz": "UTC"}, {}, "https://tally/")
    assert report.subject.startswith("Tally: bücher.de, week of") and report.site_label == "bücher.de"
    spoof = reports.Report("xn--80ak6aa92e.com", week, {"total_views": 3}, {}, "https://tally/")
    assert spoof.site_label == "xn--80ak6aa92e.com"  # Cyrillic letters that all read as "apple"


def test_a_site_written_in_unicode_is_refused_with_its_xn_form(client):
    """The dashboard names the site bücher.de; `?site=bücher.de` answered "site must be one host
    name such as example.com", which did not say what to write instead."""
    site = urllib.parse.quote("bücher.de")
    refused = client.get(f"/api/stats?days=1&site={site}", status=400).json["error"]
    assert refused.endswith("An international name in its xn-- form: bücher.de is xn--bcher-kva.de.")
    page = client.get(f"/?days=1&site={site}", status=400).text
    assert "xn--bcher-kva.de" in page
    plain = client.get("/api/stats?days=1&site=exa%20mple.com", status=400).json["error"]
    assert "xn--" not in plain
    sent = client.post_json("/api/pageviews", {"path": "/a", "site": "bücher.de"}, status=400).json["error"]
    assert sent.endswith("An international name in its xn-- form: bücher.de is xn--bcher-kva.de.")
