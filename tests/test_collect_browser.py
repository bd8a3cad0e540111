"""tally.js in a real browser: Debian's Chromium, driven by Playwright, loads pages of a site
served on another origin (its own port and host name) that carry the script tag.

Two things about a browser driven by automation, and how this test handles them:
- Playwright starts Chromium with --enable-automation, which sets navigator.webdriver, and
  tally.js sends nothing then (crawlers drive browsers too). The browser that plays a person
  is launched with --disable-blink-features=AutomationControlled, which clears the flag; the
  rule itself is tested with the flag set. Real crawlers' browsers are not changed by this.
- Headless Chromium's user agent says "HeadlessChrome", which the crawler list catches. The
  person's pages are opened with the same agent saying "Chrome".
Host names: Chromium maps site.test and other.test to 127.0.0.1 (--host-resolver-rules).
"""

from __future__ import annotations

import contextlib
import http.server
import re
import string
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

from tally.paths import stored_path
from tests.conftest import free_port, wait_until
from tests.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="Debian's chromium is not installed (apt-get install chromium); .ci/run installs it",
    ),
]

PERSON_ARGS = [*CHROMIUM_ARGS, "--disable-blink-features=AutomationControlled"]
HOSTS = "--host-resolver-rules=MAP site.test 127.0.0.1, MAP other.test 127.0.0.1"
OWNER_TOKEN = "collect-browser-owner-token"  # the dashboard is the owner's
CRAWLER = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
# Long enough for a beacon that was going to arrive to arrive, before saying none did.
SETTLE_SECONDS = 1.5


def page_html(tally_port: int, attributes: str = "") -> bytes:
    return (
        "<!doctype html><html><head><title>A page of a site</title>"
        f'<script defer src="http://127.0.0.1:{tally_port}/tally.js"{attributes}></script>'
        "</head><body><h1>Hello</h1><a id='next' href='/next'>next</a></body></html>"
    ).encode()


def events_html(tally_port: int, other_port: int) -> bytes:
    """A page with custom events: a tagged button and a link to another host (kept from leaving)."""
    return (
        "<!doctype html><html><head><title>Pricing</title>"
        "<script>window.tally = window.tally || {q: [], track: function () { this.q.push(arguments); }};"
        " tally.track('Early', {when: 'before the tag'});</script>"  # the README's stub
        f'<script defer src="http://127.0.0.1:{tally_port}/tally.js" data-track-outbound></script>'
        "</head><body><h1>Pricing</h1>"
        "<button id='buy' data-tally-event='Buy' data-tally-prop-plan='team' data-tally-prop-seats='3'>"
        "<span>Buy</span></button>"
        f"<a id='out' href='http://other.test:{other_port}/docs' onclick='event.preventDefault()'>Docs</a>"
        "<a id='in' href='/next' onclick='event.preventDefault()'>Next</a>"
        "<a id='tagged' href='/signup' data-tally-event='Signup link' onclick='event.preventDefault()'>"
        "<b>Sign up</b></a>"
        "</body></html>"
    ).encode()


@pytest.fixture
def site_server(tally_port: int) -> Iterator[int]:
    """The measured site: the same page at every path; /local.html asks to be counted on localhost."""

    class Pages(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            attributes = " data-allow-local" if self.path.startswith("/local") else ""
            body = page_html(tally_port, attributes)
            if self.path.startswith("/events"):
                body = events_html(tally_port, self.server.server_address[1])
            if self.path.startswith("/twice"):  # a theme's tag and a tag manager's
                tag = f"<script src='http://127.0.0.1:{tally_port}/tally.js'></script>"
                body = body.replace(
                    b"</body>", f"<button id='buy' data-tally-event='Buy'>Buy</button>{tag}</body>".encode()
                )
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def tally_port() -> int:
    return free_port()


@pytest.fixture
def tally(start_process, tally_port: int) -> int:
    web = start_process(
        ["web.py"], {"PORT": str(tally_port), "SITES": "site.test,localhost", "ADMIN_TOKEN": OWNER_TOKEN}
    )
    web.wait_for_line("Serving on")
    return tally_port


def log_in(page, tally: int) -> None:
    """Log the page's browser in as the owner, with the dashboard's form."""
    page.goto(f"http://127.0.0.1:{tally}/login", wait_until="load")
    page.fill("#token", OWNER_TOKEN)
    page.click("#login-form button")
    page.wait_for_selector("#total-views")


def views(conn: psycopg.Connection) -> list[tuple[str, str]]:
    return conn.execute("SELECT site, path FROM page_views ORDER BY id").fetchall()


def crawler_hits(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT coalesce(sum(hits), 0) FROM crawler_hits_daily").fetchone()[0]


def views_become(conn: psycopg.Connection, expected: list[tuple[str, str]], ordered: bool = True) -> None:
    """Wait for exactly `expected`, then check that nothing more arrives. `ordered=False` where
    nothing orders the beacons of two pages (the first page's still on its way as the next shows)."""
    wait_until(lambda: len(views(conn)) >= len(expected), timeout=10, message=f"{len(expected)} views")
    time.sleep(SETTLE_SECONDS)
    stored = views(conn)
    assert (stored if ordered else sorted(stored)) == (expected if ordered else sorted(expected))


def test_a_page_with_the_tag_counts_its_view_and_each_navigation(tally, site_server, conn):
    from playwright.sync_api import sync_playwright

    site = f"http://site.test:{site_server}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[*PERSON_ARGS, HOSTS])
        try:
            person = browser.new_context(user_agent=browser_agent(browser))
            page = person.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto(f"{site}/index.html?utm_source=newsletter", wait_until="load")
            assert page.evaluate("navigator.webdriver") is False
            views_become(conn, [("site.test", "/index.html")])

            page.evaluate("history.pushState({}, '', '/next')")  # a single-page app's navigation
            views_become(conn, [("site.test", "/index.html"), ("site.test", "/next")])
            page.go_back()  # popstate
            views_become(
                conn, [("site.test", "/index.html"), ("site.test", "/next"), ("site.test", "/index.html")]
            )
            sources = conn.execute("SELECT source FROM page_views ORDER BY id").fetchall()
            assert sources == [("newsletter",), (None,), ("newsletter",)]
            # In-page anchors (and Back across them) fire popstate too: the same page, no new view.
            page.evaluate("location.hash = 'install'")
            page.evaluate("location.hash = 'usage'")
            page.go_back()
            views_become(
                conn, [("site.test", "/index.html"), ("site.test", "/next"), ("site.test", "/index.html")]
            )

            # A JSON POST from the page needs the CORS preflight: it is answered, and the view stored.
            status = page.evaluate(
                """url => fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
                                      body: JSON.stringify({url: location.origin + "/json"})})
                         .then(response => response.status)""",
                f"http://127.0.0.1:{tally}/api/collect",
            )
            assert status == 201
            assert views(conn)[-1] == ("site.test", "/json")
            assert problems == []

            # Localhost sends nothing unless the tag asks for it.
            page.goto(f"http://localhost:{site_server}/quiet.html", wait_until="load")
            page.goto(f"http://localhost:{site_server}/local.html", wait_until="load")
            wait_until(
                lambda: views(conn)[-1] == ("localhost", "/local.html"), timeout=10, message="local view"
            )
            time.sleep(SETTLE_SECONDS)
            assert [row for row in views(conn) if row[0] == "localhost"] == [("localhost", "/local.html")]

            # The owner's dashboard (logged in with the form): the site switcher lists both
            # sites; one site's page shows its views and its one visitor, on the chart too.
            log_in(page, tally)
            page.goto(f"http://127.0.0.1:{tally}/?days=7", wait_until="load")
            switcher = page.locator("#site-switcher")
            assert switcher.locator("[data-site='site.test']").count() == 1
            assert switcher.locator("[data-site='localhost']").count() == 1
            switcher.locator("[data-site='site.test']").click()
            page.wait_for_url("**site=site.test**")
            assert page.locator("#total-views").inner_text() == "4"
            assert page.locator("#total-visitors").inner_text() == "1"
            today = page.locator("#daily-chart rect.visitors").last
            assert today.get_attribute("data-visitors") == "1" and float(today.get_attribute("height")) > 0
            assert "newsletter" in page.locator("#top-sources").inner_text()
            # Its four views within seconds are one visit, entered on the first page, left on the last.
            assert page.locator("#visits").inner_text() == "1"
            assert page.locator("#bounce-rate").inner_text() == "0%"
            assert page.locator("#top-entry-pages [data-value='/index.html'] .visits").inner_text() == "1"
            assert page.locator("#top-exit-pages [data-value='/json'] .visits").inner_text() == "1"
            page.screenshot(path=str(SCREENSHOTS / "dashboard-site.png"), full_page=True)
            assert problems == []
            person.close()
        finally:
            browser.close()
    stats_visitors = conn.execute("SELECT count(DISTINCT visitor) FROM page_views WHERE site = 'site.test'")
    assert stats_visitors.fetchone()[0] == 1  # one browser: one visitor


def test_a_push_state_that_changes_only_the_query_is_no_new_view(tally, site_server, conn):
    """A search box or a filter that writes ?q=a, ?q=ab ... with history.pushState on each
    keystroke sent a view each time, and Tally stores the path without its query: the one page
    counted once per keystroke. A view is a new path; the query, utm_* parameters too, makes
    none (the landing counted with its source). Back and Forward count where the path changes."""
    from playwright.sync_api import sync_playwright

    site = f"http://site.test:{site_server}"
    search, results = ("site.test", "/search.html"), ("site.test", "/results")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[*PERSON_ARGS, HOSTS])
        try:
            page = browser.new_context(user_agent=browser_agent(browser)).new_page()
            page.goto(f"{site}/search.html", wait_until="load")
            views_become(conn, [search])
            for query in ("?q=a", "?q=ab", "?q=ab&utm_source=newsletter"):
                page.evaluate("query => history.pushState({}, '', query)", query)
            page.evaluate("history.pushState({}, '', '/results?q=ab')")
            views_become(conn, [search, results])
            page.go_back()  # popstate to /search.html?q=ab&utm_source=newsletter: another path
            views_become(conn, [search, results, search])
            page.go_back()  # ?q=ab: the same path
            page.go_back()  # ?q=a
            page.go_forward()
            assert page.evaluate("location.search") == "?q=ab"
            views_become(conn, [search, results, search])
        finally:
            browser.close()
    sources = conn.execute("SELECT source FROM page_views ORDER BY id").fetchall()
    assert sources == [(None,), (None,), ("newsletter",)]  # a view's source: its URL's


def test_a_path_past_ascii_is_stored_as_chromium_sends_it_and_shown_and_found_as_it_reads(
    tally, site_server, conn
):
    """Chromium encodes a page's address past ASCII (UTF-8, upper case) and keeps a link's own
    escapes as written: Tally stores the first as sent and the second's escapes in upper case
    (tally/paths.py), so a link written `/caf%c3%a9` and the page typed as `/café` are one
    page. The dashboard lists it as it reads, and a filter typed so finds it."""
    from playwright.sync_api import sync_playwright

    site = f"http://site.test:{site_server}"
    page_path, cafe = "/%C3%BCber/%E6%97%A5%E6%9C%AC%20a.html", "/caf%C3%A9"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[*PERSON_ARGS, HOSTS])
        try:
            page = browser.new_context(user_agent=browser_agent(browser)).new_page()
            page.goto(f"{site}/über/日本 a.html", wait_until="load")
            assert page.evaluate("location.pathname") == page_path
            views_become(conn, [("site.test", page_path)])
            page.evaluate("history.pushState({}, '', '/caf%c3%a9')")
            assert page.evaluate("location.pathname") == "/caf%c3%a9"  # the browser keeps it
            page.goto(f"{site}/café", wait_until="load")
            views_become(conn, [("site.test", page_path), ("site.test", cafe), ("site.test", cafe)])

            log_in(page, tally)
            page.goto(f"http://127.0.0.1:{tally}/?days=7&site=site.test", wait_until="load")
            paths = page.locator("#top-paths")
            assert paths.locator(f"[data-value='{cafe}'] .value").inner_text() == "/café"
            assert paths.locator(f"[data-value='{cafe}'] .views").inner_text() == "2"
            assert (
                paths.locator(f"[data-value='{page_path}'] .value").inner_text() == "/über/日本%20a.html"
            )  # ASCII escapes shown
            paths.locator(f"[data-value='{page_path}'] a").click()
            page.wait_for_url("**path=**")
            assert page.locator("#total-views").inner_text() == "1"
            page.goto(f"http://127.0.0.1:{tally}/?days=7&site=site.test&path=/café", wait_until="load")
            assert page.locator("#total-views").inner_text() == "2"
        finally:
            browser.close()


# Paths as a server may send them, each a page a browser would address: past ASCII (composed and
# not), spaces, the ASCII a browser encodes and the ASCII it leaves, escapes in either case, and
# every printable ASCII character at a path's end but those a browser reads as no path's ("?",
# "#", "\\", and a space, which a URL's end drops; "/a b" has one inside).
SERVER_PATHS = [
    "/über", "/日本 語", "/a b", '/"q"', "/<x>", "/`t`", "/{c}", "/a|b", "/a^b", "/[x]", "/100%",
    "/%zz", "/%c3%bc", "/%C3%BC", "/😀", "/e\u0301", "/\u202eabc", "/\u00a0x", "/~user", "/a;b=c",
    "/@x", "/a:b", "/%2f", "/it's", "/a+b", "/a,b!*()$&'",
    *("/x" + character for character in string.printable[:95] if character not in "?#\\ "),
]  # fmt: skip


def test_a_path_a_server_sends_is_stored_as_chromium_addresses_the_page(tally, site_server):
    """What Chromium makes of each path (`new URL(path, page).pathname`, as it sends
    `location.href`) is stored as it is, and the path as a server sends it is stored as that:
    one page, one row, from both. Escapes Chromium keeps in lower case Tally writes in upper
    case; the rest is Chromium's own encoding."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[*PERSON_ARGS, HOSTS])
        try:
            page = browser.new_page()
            page.goto(f"http://site.test:{site_server}/index.html", wait_until="load")
            addressed = page.evaluate(
                "paths => paths.map(path => new URL(path, location.href).pathname)", SERVER_PATHS
            )
        finally:
            browser.close()
    for path, pathname in zip(SERVER_PATHS, addressed, strict=True):
        as_sent = re.sub("%[0-9a-f]{2}", lambda escape: escape.group().upper(), pathname)
        assert stored_path(pathname) == as_sent, (path, pathname)
        assert stored_path(path) == as_sent, (path, pathname)


def test_crawlers_other_sites_and_automated_browsers_store_nothing(tally, site_server, conn):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[*PERSON_ARGS, HOSTS])
        try:
            crawler = browser.new_page(user_agent=CRAWLER)
            crawler.goto(f"http://site.test:{site_server}/", wait_until="load")
            wait_until(lambda: crawler_hits(conn) == 1, timeout=10, message="the crawler's hit counted")

            person = browser.new_page(user_agent=browser_agent(browser))
            with person.expect_response(lambda response: "/api/collect" in response.url) as answer:
                person.goto(f"http://other.test:{site_server}/", wait_until="load")
            assert answer.value.status == 403  # other.test is not in SITES
        finally:
            browser.close()
        # Playwright's own launch: navigator.webdriver is set, and the tracker stays silent.
        automated = playwright.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, HOSTS])
        try:
            page = automated.new_page(user_agent=browser_agent(automated))
            page.goto(f"http://site.test:{site_server}/", wait_until="load")
            assert page.evaluate("navigator.webdriver") is True
            time.sleep(SETTLE_SECONDS)
        finally:
            automated.close()
    assert views(conn) == []
    assert crawler_hits(conn) == 1


def browser_agent(browser) -> str:
    """This Chromium's own user agent, as a person's browser sends it (not "HeadlessChrome")."""
    page = browser.new_page()
    try:
        return page.evaluate("navigator.userAgent").replace("HeadlessChrome", "Chrome")
    finally:
        page.close()


def test_custom_events_from_the_page_a_tagged_click_and_an_outbound_link(tally, site_server, conn):
    from playwright.sync_api import sync_playwright

    site = f"http://site.test:{site_server}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[*PERSON_ARGS, HOSTS])
        try:
            page = browser.new_context(user_agent=browser_agent(browser)).new_page()
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(str(error)))
            beacons: list[str] = []
            page.on("request", lambda sent: "/api/collect" in sent.url and beacons.append(sent.post_data))
            # A fragment stays in the browser (it may carry a token the site passes its own script).
            page.goto(f"{site}/events.html#access_token=secret", wait_until="load")
            views_become(conn, [("site.test", "/events.html")])
            page.evaluate("tally.track('Signup', {plan: 'pro'})")
            page.click("#buy span")  # a click inside the tagged element counts for it
            page.click("#out")
            page.click("#in")  # a link on the same host is no outbound link
            wait_until(lambda: event_count(conn) >= 4, timeout=10, message="4 events")
            time.sleep(SETTLE_SECONDS)
            assert problems == []
            assert len(beacons) == 5 and not any("secret" in beacon for beacon in beacons), beacons
        finally:
            browser.close()
    rows = conn.execute("SELECT name, props, path, visitor FROM events ORDER BY id").fetchall()
    view_visitor = conn.execute("SELECT visitor FROM page_views").fetchone()[0]
    assert [row[:3] for row in rows] == [
        ("Early", {"when": "before the tag"}, "/events.html"),
        ("Signup", {"plan": "pro"}, "/events.html"),
        ("Buy", {"plan": "team", "seats": "3"}, "/events.html"),
        ("Outbound Link", {"url": f"other.test:{site_server}"}, "/events.html"),
    ]
    assert {row[3] for row in rows} == {view_visitor}  # the page's visitor, no cookie


def test_a_middle_click_on_an_outbound_link_counts_a_right_click_does_not(tally, site_server, conn):
    """A middle click opens a link in a new tab and fires `auxclick`, not `click`: it was not
    counted, on a tagged link neither. A right click (also `auxclick`) opens nothing, nor does a
    middle click on a button."""
    from playwright.sync_api import sync_playwright

    site = f"http://site.test:{site_server}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[*PERSON_ARGS, HOSTS])
        try:
            page = browser.new_context(user_agent=browser_agent(browser)).new_page()
            page.goto(f"{site}/events.html", wait_until="load")
            views_become(conn, [("site.test", "/events.html")])
            page.click("#out", button="right")
            page.click("#buy span", button="middle")
            page.click("#out", button="middle")
            page.click("#tagged b", button="middle")  # a tagged link opens too: counted
            page.click("#tagged", button="right")
            # Safari before 18.2 sent a middle click as a click event too (then auxclick): once.
            page.dispatch_event("#out", "click", {"button": 1})
            page.evaluate("tally.track('Done')")  # sent after the clicks' events
            wait_until(lambda: event_count(conn) >= 4, timeout=10, message="4 events")
            time.sleep(SETTLE_SECONDS)
        finally:
            browser.close()
    names = sorted(row[0] for row in conn.execute("SELECT name FROM events"))
    assert names == ["Done", "Early", "Outbound Link", "Signup link"]


def event_count(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM events").fetchone()[0]


def test_track_without_a_name_sends_nothing_and_says_why_in_the_console(tally, site_server, conn):
    """tally.track() and tally.track({...}) (the props given first) were sent as events named
    "undefined" and "[object Object]": counted, and shown on the dashboard as goals."""
    from playwright.sync_api import sync_playwright

    site = f"http://site.test:{site_server}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[*PERSON_ARGS, HOSTS])
        try:
            page = browser.new_context(user_agent=browser_agent(browser)).new_page()
            warnings: list[str] = []
            page.on("console", lambda msg: warnings.append(msg.text) if msg.type == "warning" else None)
            page.goto(f"{site}/events.html", wait_until="load")
            views_become(conn, [("site.test", "/events.html")])
            nameless = ("tally.track()", "tally.track(null)", "tally.track({plan: 'pro'})", "tally.track('')")
            for call in nameless:
                page.evaluate(call)
            page.evaluate("tally.track('Signup', {plan: 'pro'})")
            wait_until(lambda: event_count(conn) >= 2, timeout=10, message="2 events")
            time.sleep(SETTLE_SECONDS)
        finally:
            browser.close()
    names = [row[0] for row in conn.execute("SELECT name FROM events ORDER BY id")]
    assert names == ["Early", "Signup"]
    assert len(warnings) == 4 and all("tally.track" in warning for warning in warnings)


def test_an_app_that_posts_its_own_json_beacon_with_credentials_is_counted(tally, site_server, conn):
    """README invites a single-page app to post the beacon itself. `navigator.sendBeacon` with a
    JSON Blob always sends credentials (and so a preflight), as does `fetch` with `credentials:
    'include'`; the answers' `Access-Control-Allow-Origin: *` refused both: the views were lost,
    with a console error. The page's origin is answered back with credentials allowed."""
    from playwright.sync_api import sync_playwright

    site = f"http://site.test:{site_server}"
    endpoint = f"http://127.0.0.1:{tally}/api/collect"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[*PERSON_ARGS, HOSTS])
        try:
            page = browser.new_context(user_agent=browser_agent(browser)).new_page()
            page.goto(f"{site}/events.html", wait_until="load")
            views_become(conn, [("site.test", "/events.html")])
            beacon = f"{site}/app/beacon"
            sent = page.evaluate(
                "([endpoint, url]) => navigator.sendBeacon(endpoint, new Blob("
                "[JSON.stringify({url: url, referrer: ''})], {type: 'application/json'}))",
                [endpoint, beacon],
            )
            assert sent is True
            answer = page.evaluate(
                "async ([endpoint, url]) => { const r = await fetch(endpoint, {method: 'POST',"
                " credentials: 'include', headers: {'Content-Type': 'application/json'},"
                " body: JSON.stringify({url: url})}); return [r.status, await r.json()]; }",
                [endpoint, f"{site}/app/fetched"],
            )
            assert answer == [201, {"stored": 1}]
        finally:
            browser.close()
    wait_until(lambda: len(views(conn)) >= 3, timeout=10, message="3 views")
    time.sleep(SETTLE_SECONDS)
    assert sorted(views(conn)) == [
        ("site.test", path) for path in ("/app/beacon", "/app/fetched", "/events.html")
    ]


# /a prerenders /b and /c (speculation rules), and goes to /b once the site answers /ready "yes".
PRERENDER_B_AND_C = (
    '<script type="speculationrules">{"prerender": [{"source": "list", "urls": ["/b", "/c"]}]}</script>'
    "<script>setInterval(() => fetch('/ready').then(r => r.text())"
    ".then(t => t == 'yes' && location.assign('/b')), 200)</script>"
)


def fetched(seen: list[tuple[str, str | None]], path: str) -> int:
    return [each for each, _ in seen].count(path)


@contextlib.contextmanager
def chromium_alone_on_a(
    tmp_path, pages: dict[str, str], ready: Callable[[list], bool]
) -> Iterator[list[tuple[str, str | None]]]:
    """Serve `pages` as site.test (any other path: "yes" once `ready(seen)`, else "no") and open
    its /a in Chromium run alone, headless: Playwright cannot show a prerender, as Chromium
    prerenders nothing in a page DevTools is attached to ("PrerenderingDisabledByDevTools"), so
    the pages drive it. Yields the requests seen, (path, Sec-Purpose), as they come."""
    import subprocess

    seen: list[tuple[str, str | None]] = []

    class Pages(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Sec-Purpose")))
            body = pages.get(self.path, "yes" if ready(seen) else "no").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Pages)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    chromium = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            *PERSON_ARGS,
            HOSTS,
            f"--user-agent={BROWSER_AGENT}",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--remote-debugging-port=0",
            f"http://site.test:{server.server_address[1]}/a",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield seen
    finally:
        chromium.terminate()
        chromium.wait(10)
        server.shutdown()
        server.server_close()


def test_a_prerendered_page_counts_once_shown_and_never_before(tally, conn, tmp_path):
    """Chromium prerenders the pages that speculation rules name (and those the address bar
    guesses): it runs them, tally.js too, before the visitor sees them, and most are never
    shown. /a prerenders /b and /c, then goes to /b: /b counts once, /c never. Each prerendered
    page says when its scripts ran (tally.js is deferred, so it has run by DOMContentLoaded),
    and /a goes to /b once both did."""
    tag = f'<script defer src="http://127.0.0.1:{tally}/tally.js"></script>'
    ran = (
        "<script>document.prerendering && addEventListener('DOMContentLoaded', () => fetch('/ran'))</script>"
    )
    pages = {"/a": tag + PRERENDER_B_AND_C, "/b": tag + ran, "/c": tag + ran}
    with chromium_alone_on_a(tmp_path, pages, ready=lambda seen: fetched(seen, "/ran") >= 2) as seen:
        wait_until(lambda: len(views(conn)) >= 2, timeout=20, message="two views")
        # /a goes to /b as soon as the prerenders ran: /a's beacon may still be on its way (a CI
        # run stored /b's first).
        views_become(conn, [("site.test", "/a"), ("site.test", "/b")], ordered=False)
    prerendered = [path for path, purpose in seen if purpose and "prerender" in purpose]
    assert sorted(set(prerendered)) == ["/b", "/c", "/ran"]  # its requests say so too
    assert fetched(seen, "/b") == 1  # shown from its prerender, not loaded again


def test_events_tracked_while_prerendering_wait_until_the_page_is_shown(tally, conn, tmp_path):
    """tally.track() (and the calls queued in window.tally.q) in a page that Chromium prerenders
    were sent at once, although the page may never be shown; its view already waited. /a
    prerenders /b and /c, whose scripts track two events while prerendering; nothing is sent
    until /a goes to /b, then /b's view and its two events in order; /c's never.

    As in the test above, Chromium runs alone, driven by the pages; each of /b and /c logs every
    beacon to the site's server (`navigator.sendBeacon` wrapped before tally.js runs), with
    whether the page was still prerendering then."""
    import json
    from urllib.parse import unquote

    go = threading.Event()
    tag = f'<script defer src="http://127.0.0.1:{tally}/tally.js"></script>'
    prerendered = (
        "<script>window.tally = window.tally || {q: [], track: function () { this.q.push(arguments); }};"
        " tally.track('Queued');"  # the README's stub, before the tag
        " var n = 0, beacon = navigator.sendBeacon;"
        " navigator.sendBeacon = function (url, body) {"
        "   var what = JSON.parse(body).event || 'view';"
        "   fetch('/sent?' + encodeURIComponent(JSON.stringify("
        "     [location.pathname, n++, !!document.prerendering, what])));"
        "   return beacon.call(navigator, url, body); };"
        " addEventListener('DOMContentLoaded', function () {"  # after the deferred tally.js
        "   tally.track('Tracked', {on: location.pathname});"
        "   document.prerendering && fetch('/ran'); });</script>"
    ) + tag
    pages = {"/a": tag + PRERENDER_B_AND_C, "/b": prerendered, "/c": prerendered}

    def sent(seen: list) -> list[list]:  # [page, n, prerendering, what] per beacon, as the page logged it
        return [json.loads(unquote(path[6:])) for path, _ in seen if path.startswith("/sent?")]

    with chromium_alone_on_a(tmp_path, pages, ready=lambda seen: go.is_set()) as seen:
        wait_until(
            lambda: fetched(seen, "/ran") >= 2,
            timeout=20,
            message="/b and /c prerendered, their events tracked",
        )
        views_become(conn, [("site.test", "/a")])
        assert sent(seen) == [] and event_count(conn) == 0  # nothing of /b or /c before it is shown
        go.set()
        wait_until(lambda: event_count(conn) >= 2, timeout=20, message="/b's two events")
        views_become(conn, [("site.test", "/a"), ("site.test", "/b")])
    prerendered_paths = {path for path, purpose in seen if purpose and "prerender" in purpose}
    assert {"/b", "/c"} <= prerendered_paths
    assert sorted(sent(seen), key=lambda beacon: beacon[1]) == [
        ["/b", 0, False, "view"],
        ["/b", 1, False, "Queued"],
        ["/b", 2, False, "Tracked"],
    ]
    rows = conn.execute("SELECT name, props, path FROM events ORDER BY name").fetchall()
    assert rows == [("Queued", {}, "/b"), ("Tracked", {"on": "/b"}, "/b")]


BROWSER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/140.0.0.0 Safari/537.36"
)


def test_a_page_the_back_forward_cache_restores_counts_again(tally, site_server, conn):
    """Back to a page of another document: a browser loads it again (and tally.js counts it) or
    restores it from the back-forward cache, where no script runs again and nothing was sent.
    The same visit counted 3 or 2 views by the browser's cache. Playwright turns the cache
    off (--disable-back-forward-cache): it is let on here, as every browser has it."""
    from playwright.sync_api import sync_playwright

    site = f"http://site.test:{site_server}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[*PERSON_ARGS, HOSTS],
            ignore_default_args=["--disable-back-forward-cache"],
        )
        try:
            page = browser.new_context(user_agent=browser_agent(browser)).new_page()
            page.add_init_script("addEventListener('pageshow', e => { window.restored = e.persisted; })")
            page.goto(f"{site}/index.html", wait_until="load")
            page.click("#next")
            views_become(conn, [("site.test", "/index.html"), ("site.test", "/next")])
            page.evaluate("history.back()")  # no load event: page.go_back() would wait for one
            page.wait_for_function("location.pathname == '/index.html' && window.restored === true")
            views_become(
                conn, [("site.test", "/index.html"), ("site.test", "/next"), ("site.test", "/index.html")]
            )
        finally:
            browser.close()


def test_the_tag_twice_on_a_page_counts_once(tally, site_server, conn):
    """A theme's tag and a tag manager's: each copy sent the view, each single-page-app
    navigation and each tagged click, so every number doubled."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[*PERSON_ARGS, HOSTS])
        try:
            page = browser.new_context(user_agent=browser_agent(browser)).new_page()
            page.goto(f"http://site.test:{site_server}/twice.html", wait_until="load")
            assert page.locator("script[src$='/tally.js']").count() == 2
            page.evaluate("history.pushState({}, '', '/later')")
            page.click("#buy")
            wait_until(lambda: event_count(conn) >= 1, timeout=10, message="the click's event")
            views_become(conn, [("site.test", "/twice.html"), ("site.test", "/later")])
        finally:
            browser.close()
    assert event_count(conn) == 1
