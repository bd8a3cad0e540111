"""The dashboard's panels, filter links and chips, and the period before, as HTML (WebTest).

Every value on the page comes from a beacon, so from anyone: it must render as text, and go
into links only through urlencode."""

from __future__ import annotations

import html
import re
import urllib.parse

import psycopg
import pytest
import webtest

from tally.dimensions import DIMENSIONS
from tally.web.dashboard import NONE
from tests.test_web import TOKEN, make_client

SHARE = "filters-share-token"
SCRIPT = "/<script>alert(1)</script>"
QUOTE = '"><img src=x onerror=alert(2)>'


@pytest.fixture
def owner(database_url, pool) -> webtest.TestApp:
    return make_client(database_url, pool, owner=True, ADMIN_TOKEN=TOKEN, PUBLIC_DASHBOARD="false")


@pytest.fixture
def reader(database_url, pool) -> webtest.TestApp:
    """A share link's reader: no admin token sent."""
    return make_client(database_url, pool, ADMIN_TOKEN=TOKEN, SHARE_TOKEN=SHARE, PUBLIC_DASHBOARD="false")


def insert(conn: psycopg.Connection, rows: list[tuple], ago: str = "1 hour") -> None:
    """(path, referrer, country, browser, os, device, visitor) views, `ago` before now."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO page_views (path, referrer, country, browser, os, device, visitor, viewed_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, now() - %s::interval)",
            [(*row, ago) for row in rows],
        )


def hrefs(page: str) -> list[str]:
    return [html.unescape(href) for href in re.findall(r'href="([^"]*)"', page)]


def query_of(href: str) -> dict[str, list[str]]:
    return urllib.parse.parse_qs(urllib.parse.urlsplit(href).query)


def test_every_dimension_is_a_panel_with_views_visitors_and_country_names(owner, conn):
    insert(
        conn,
        [("/a", None, "DE", "Firefox", "Linux", "desktop", 1)] * 3
        + [("/b", None, "TW", "Chrome", "Android", "phone", 2)]
        + [("/b", None, "XK", "Chrome", "Android", "phone", 3)],
    )
    page = owner.get("/?days=7").text
    for dimension in DIMENSIONS:
        assert f'id="{dimension.panel.replace("_", "-")}"' in page, dimension
        assert f"<h2>{dimension.title}</h2>" in page
    assert page.count('<th class="num">Visitors</th>') == len(DIMENSIONS) + 1  # and the events
    countries = re.search(r'<table id="top-countries".*?</table>', page, re.S).group(0)
    assert "Germany (DE)" in countries and "Taiwan (TW)" in countries
    assert ">XK</a>" in countries  # a code pycountry does not know shows as itself
    row = re.search(r'<tr[^>]*data-value="DE".*?</tr>', countries, re.S).group(0)
    assert re.findall(r'<td class="num \w+">(\d+)</td>', row) == ["3", "1"]  # views, visitors
    assert 'id="current-visitors">0<' in page  # an hour ago is not now


def test_attacker_values_render_as_text_and_reach_links_encoded(owner, conn):
    insert(conn, [(SCRIPT, None, "DE", QUOTE, "Linux", "desktop", 7)])
    page = owner.get("/?days=7").text
    assert "<script>" not in page and "<img" not in page
    assert html.escape(SCRIPT) in page and html.escape(QUOTE) in page
    links = hrefs(page)
    assert f"/?days=7&{urllib.parse.urlencode({'path': SCRIPT})}" in links
    assert f"/?days=7&{urllib.parse.urlencode({'browser': QUOTE})}" in links

    # Filtered by those values: the chips show them as text, and link to the page without them.
    filtered = owner.get("/", {"days": "7", "path": SCRIPT, "browser": QUOTE}).text
    assert "<script>" not in filtered and "<img" not in filtered
    chips = re.findall(r'<a class="chip" href="([^"]*)" data-filter="(\w+)"[^>]*>(.*?) <span', filtered)
    assert [(name, html.unescape(label)) for _, name, label in chips] == [
        ("path", "Path: /%3Cscript%3Ealert(1)%3C/script%3E"),  # as a browser addresses the page
        ("browser", f"Browser: {QUOTE}"),
    ]
    assert query_of(html.unescape(chips[0][0])) == {"days": ["7"], "browser": [QUOTE]}
    assert query_of(html.unescape(chips[1][0])) == {
        "days": ["7"],
        "path": ["/%3Cscript%3Ealert(1)%3C/script%3E"],
    }
    assert 'id="total-views">1<' in filtered
    # Its row is the one filtered by, though the filter holds the path as browsers send it.
    assert f'<tr class="active" data-value="{html.escape(SCRIPT)}">' in filtered


def test_rows_add_a_filter_and_chips_remove_it_keeping_the_share_token_and_the_rest(reader, conn):
    insert(
        conn,
        [("/a", "https://news.example/x", "DE", "Firefox", "Linux", "desktop", 1)] * 3
        + [("/b", None, "FR", "Chrome", "Windows", "laptop", 2)] * 2,
    )
    page = reader.get(f"/?days=30&share={SHARE}&country=DE&browser=Firefox").text
    assert 'id="total-views">3<' in page and 'id="total-visitors">1<' in page
    chips = dict(
        (name, (html.unescape(href), html.unescape(label)))
        for href, name, label in re.findall(
            r'<a class="chip" href="([^"]*)" data-filter="(\w+)"[^>]*>(.*?) <span', page
        )
    )
    assert chips == {
        "country": (f"/?days=30&share={SHARE}&browser=Firefox", "Country: Germany (DE)"),
        "browser": (f"/?days=30&share={SHARE}&country=DE", "Browser: Firefox"),
    }
    links = hrefs(page)
    assert f"/?days=30&share={SHARE}&country=DE&browser=Firefox&os=Linux" in links  # a row: one more
    assert f"/?days=7&share={SHARE}&country=DE&browser=Firefox" in links  # the window links keep filters
    assert not any("/api/export" in link for link in links)  # the export is the owner's
    assert "job-counts" not in page

    # Following the chip shows the views without that filter, and the share token still works.
    unfiltered = reader.get(chips["browser"][0]).text
    assert 'id="total-views">3<' in unfiltered and 'data-filter="country"' in unfiltered
    everything = reader.get(re.search(r'class="clear" href="([^"]*)"', page).group(1).replace("&amp;", "&"))
    assert 'id="total-views">5<' in everything.text and 'class="chip"' not in everything.text


def test_the_export_link_keeps_the_filters(owner, conn):
    insert(
        conn,
        [
            ("/a", None, "DE", "Firefox", "Linux", "desktop", 1),
            ("/b", None, "FR", "Chrome", "Linux", "laptop", 2),
        ],
    )
    page = owner.get("/?days=7&tz=Europe/Berlin&country=DE").text
    export = html.unescape(re.search(r'id="export" href="([^"]*)"', page).group(1))
    assert export == "/api/export?days=7&tz=Europe%2FBerlin&country=DE"
    csv = owner.get(export).text
    assert "/a" in csv and "/b" not in csv


def test_the_chart_and_cards_show_the_period_before(owner, conn):
    insert(conn, [("/a", None, "DE", "Firefox", "Linux", "desktop", 1)] * 4, ago="1 hour")
    insert(conn, [("/a", None, "DE", "Firefox", "Linux", "desktop", 2)] * 2, ago="7 days")
    insert(conn, [("/b", None, "DE", "Firefox", "Linux", "desktop", 3)], ago="2 minutes")
    page = owner.get("/?days=7").text
    assert 'id="views-change" class="change">+150%<' in page  # 5 views against 2
    assert 'id="visitors-change" class="change">+100%<' in page  # 2 visitors against 1
    assert 'id="current-visitors">1<' in page
    assert 'id="previous-line"' in page
    previous = re.findall(r'<circle class="previous"[^>]*data-views="(\d+)"', page)
    assert len(previous) == 7 and sum(map(int, previous)) == 2

    # Nothing before: no change to show.
    page = owner.get("/?days=7&path=/b").text
    assert f'id="views-change" class="change">{NONE}<' in page
    assert f'id="visitors-change" class="change">{NONE}<' in page
    assert f'id="crawlers-filtered">{NONE}<' in page  # not counted under a filter


def test_an_unknown_filter_is_a_400_and_an_unknown_value_an_empty_page(owner, conn):
    insert(conn, [("/a", None, "DE", "Firefox", "Linux", "desktop", 1)])
    owner.get("/?days=7&colour=red", status=400)
    page = owner.get("/?days=7&country=ZZ").text
    assert 'id="total-views">0<' in page and "Country: ZZ" in page
    assert page.count("None in this window.") == len(DIMENSIONS) + 2  # and entry and exit pages


def test_escaped_letters_of_a_path_show_as_letters_and_the_link_keeps_the_path_as_stored(owner, conn):
    """Browsers send /%C3%BCber for /über; the page shows /über, filters by what is stored."""
    insert(
        conn,
        [("/%C3%BCber", None, None, None, None, None, 7), ("/a%2Fb%FF", None, None, None, None, None, 8)],
    )
    page = owner.get("/?days=2").text  # an hour ago may be yesterday
    rows = dict(
        re.findall(r'<tr class="[^"]*" data-value="([^"]*)"><td class="value"><a [^>]*>([^<]*)</a>', page)
    )
    assert rows["/%C3%BCber"] == "/über"
    assert rows["/a%2Fb%FF"] == "/a%2Fb%FF"  # ASCII escapes and bytes that are not UTF-8 kept
    for table in ("top-entry-pages", "top-exit-pages"):  # the entry and exit pages too
        rows = re.search(rf'<table id="{table}".*?</table>', page, re.S).group(0)
        assert 'data-value="/%C3%BCber"' in rows and ">/über</a>" in rows
    link = next(href for href in hrefs(page) if query_of(href).get("path") == ["/%C3%BCber"])
    narrowed = owner.get(link).text
    assert re.search(r'id="total-views">1<', narrowed) and "Path: /über" in html.unescape(narrowed)


def test_the_dashboards_title_says_one_view_in_one_day(owner, conn):
    conn.execute("INSERT INTO page_views (path) VALUES ('/a')")
    assert "<title>Tally: 1 view in 1 day</title>" in owner.get("/", {"days": "1"}).text
    conn.execute("INSERT INTO page_views (path) VALUES ('/b')")
    assert "<title>Tally: 2 views in 7 days</title>" in owner.get("/", {"days": "7"}).text


RLO = "\u202e"  # RIGHT-TO-LEFT OVERRIDE: the text after it shows reversed


def text_of(page: str) -> str:
    """What a reader sees of `page`: its text, without tags (a data-value keeps the value as stored)."""
    return html.unescape(re.sub(r"<[^>]*>", "", page))


def test_characters_that_reorder_or_hide_text_show_escaped_and_links_keep_the_value(owner, conn):
    """A stranger's "\\u202emoc.elgoog" showed as "google.com", "/rtl\\u202egnp.exe" as "/rtlexe.png":
    every value a beacon chose shows its bidirectional controls and invisible characters as an
    address bar does, escaped; its link still filters by the value as stored."""
    source, path, event = f"{RLO}moc.elgoog", f"/rtl{RLO}gnp.exe", f"{RLO}pugniS"
    prop, value = f"{RLO}nalp", "o\u200brp"
    conn.execute(
        "INSERT INTO page_views (path, source, visitor, viewed_at)"
        " VALUES (%s, %s, 7, now() - interval '1 hour')",
        (path, source),
    )
    conn.execute(
        "INSERT INTO events (name, props, path, visitor, occurred_at)"
        " VALUES (%s, %s, '/', 7, now() - interval '1 hour')",
        (event, psycopg.types.json.Jsonb({prop: value})),
    )
    page = text_of(owner.get("/?days=2").text)
    assert RLO not in page
    assert "%E2%80%AEmoc.elgoog" in page and "/rtl%E2%80%AEgnp.exe" in page and "%E2%80%AEpugniS" in page
    links = hrefs(owner.get("/?days=2").text)
    assert any(query_of(href).get("source") == [source] for href in links)
    assert any(query_of(href).get("event") == [event] for href in links)

    narrowed = owner.get("/", {"days": "2", "event": event, "source": source}).text
    assert 'id="total-views">1<' in narrowed
    narrowed = text_of(narrowed)
    assert RLO not in narrowed and "\u200b" not in narrowed
    assert "Source: %E2%80%AEmoc.elgoog" in narrowed and "Event: %E2%80%AEpugniS" in narrowed  # the chips
    assert "%E2%80%AEnalp = o%E2%80%8Brp" in narrowed  # the event's props
