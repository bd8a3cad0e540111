"""The dashboard in a real browser: Debian's Chromium, driven by Playwright (no browser
download: Playwright is pointed at /usr/bin/chromium). `.ci/run` installs Chromium;
where it is missing locally the test skips and says so (in CI it fails instead).

The owner logs in with the admin token, sees the numbers and the queue, logs out; a share
link shows the numbers and nothing of the queue."""

from __future__ import annotations

import json
import os
import shutil
import urllib.parse
import urllib.request

import psycopg
import pytest

from tally.dimensions import DIMENSIONS
from tally.web.dashboard import NONE, change
from tests.conftest import ROOT, defer_by_sql, free_port
from tests.test_web import make_failed_job
from tests.test_web_collect import BROWSER

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = ROOT / "tests" / "artifacts"
TOKEN = "browser-owner-token"
SHARE = "browser-share-token"
# Chromium as root in a sandbox-less container, and no calls home on a closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if CHROMIUM is None and os.environ.get("CI"):
    pytest.fail("Chromium is missing in CI: .ci/run must apt-get install chromium", pytrace=False)
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="Debian's chromium is not installed (apt-get install chromium); .ci/run installs it",
    ),
]


def serve_dashboard(start_process, **env: str) -> str:
    """`python web.py` with the owner's token (and `env`) on a free port; its address."""
    port = free_port()
    web = start_process(
        ["web.py"], {"PORT": str(port), "ADMIN_TOKEN": TOKEN, "PUBLIC_DASHBOARD": "false", **env}
    )
    web.wait_for_line("Serving on")
    return f"http://127.0.0.1:{port}"


def post_views(base: str, views: list[dict]) -> None:
    request = urllib.request.Request(
        f"{base}/api/pageviews",
        data=json.dumps(views).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 201


def test_dashboard_draws_real_data_without_console_errors(start_process, conn: psycopg.Connection):
    from playwright.sync_api import sync_playwright

    conn.execute(
        "INSERT INTO page_views (path, viewed_at)"
        " SELECT '/docs', now() - (n % 5) * interval '1 day' FROM generate_series(1, 40) n"
    )
    conn.execute("SELECT tally_rollup_page_views()")
    defer_by_sql(conn, "prune_finished_jobs")
    base = serve_dashboard(start_process)
    post_views(base, [{"path": "/home"}] * 3 + [{"path": "/pricing"}])

    problems: list[str] = []
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for name, viewport in [
                ("desktop", {"width": 1280, "height": 900}),
                ("phone", {"width": 375, "height": 812}),
            ]:
                owner = {"Authorization": f"Bearer {TOKEN}"}  # logging in has its own test below
                page = browser.new_page(viewport=viewport, extra_http_headers=owner)
                page.on(
                    "console",
                    lambda message: problems.append(message.text) if message.type == "error" else None,
                )
                page.on("pageerror", lambda error: problems.append(str(error)))
                page.on("requestfailed", lambda request: problems.append(f"request failed: {request.url}"))
                response = page.goto(f"{base}/?days=7", wait_until="load")
                assert response is not None and response.status == 200

                bars = page.locator("#daily-chart rect.bar")
                assert bars.count() == 7
                views = [int(bars.nth(i).get_attribute("data-views")) for i in range(7)]
                assert sum(views) == 44 and views[-1] == 4 + 8  # today: 4 posted + 8 loaded
                assert all(float(bars.nth(i).get_attribute("height")) > 0 for i in range(7) if views[i])
                assert page.locator("#top-paths").inner_text().splitlines()[1].startswith("/docs")
                assert "/home" in page.locator("#top-paths").inner_text()
                assert page.locator("#total-views").inner_text() == "44"
                assert "todo" in page.locator("#job-counts").inner_text()
                overflow = page.evaluate(
                    "document.documentElement.scrollWidth - document.documentElement.clientWidth"
                )
                assert overflow <= 0, f"{name}: the page scrolls sideways by {overflow}px"
                # Nor does a panel's table spill out of its card ("Conversion" did, by 8 px), nor a
                # column's head out of its column.
                spilled = page.evaluate(
                    "[...document.querySelectorAll('section.panel, section.panel th')]"
                    ".filter(e => e.scrollWidth > e.clientWidth).map(e => e.id || e.textContent)"
                )
                assert spilled == [], f"{name}: {spilled}"
                page.screenshot(path=str(SCREENSHOTS / f"dashboard-{name}.png"), full_page=True)
                page.close()
        finally:
            browser.close()
    assert problems == []


def watch(page, problems: list[str], with_address: bool = False) -> None:
    def console(message) -> None:
        if message.type == "error":
            address = message.location.get("url", "") if with_address else ""
            problems.append(f"{message.text} {address}".strip())

    page.on("console", console)
    page.on("pageerror", lambda error: problems.append(str(error)))


def test_owner_logs_in_sees_numbers_logs_out_and_a_share_link_shows_numbers_only(
    start_process, conn: psycopg.Connection
):
    from playwright.sync_api import sync_playwright

    conn.execute("INSERT INTO page_views (path) SELECT '/launch' FROM generate_series(1, 23)")
    make_failed_job(conn)  # its error, RuntimeError: boom, is for the owner's eyes
    base = serve_dashboard(start_process, SHARE_TOKEN=SHARE)

    problems: list[str] = []
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            watch(page, problems)
            response = page.goto(f"{base}/?days=7")
            assert response is not None and response.status == 401
            assert page.locator("#login-form").is_visible()
            assert page.locator("#total-views").count() == 0 and "23" not in page.content()
            page.screenshot(path=str(SCREENSHOTS / "login.png"), full_page=True)

            page.fill("#token", "not-the-token")
            page.click("#login-form button")
            assert "not the admin token" in page.locator("#login-message").inner_text()
            assert page.context.cookies() == []

            page.fill("#token", TOKEN)
            page.click("#login-form button")
            page.wait_for_selector("#total-views")
            assert page.url == f"{base}/?days=7"  # the page asked for, through the form's wrong token too
            assert page.locator("#total-views").inner_text() == "23"
            assert "/launch" in page.locator("#top-paths").inner_text()
            assert page.locator("#job-counts").count() == 1
            (cookie,) = page.context.cookies()
            assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["expires"] > 0
            assert page.evaluate("document.cookie") == ""  # HttpOnly: no script can read it
            page.goto(f"{base}/?days=7")  # the session holds across pages
            assert page.locator("#total-views").inner_text() == "23"
            page.screenshot(path=str(SCREENSHOTS / "dashboard-owner.png"), full_page=True)

            copy = browser.new_context()  # the cookie taken out of this browser, as a thief would
            copy.add_cookies([cookie])
            assert copy.request.get(f"{base}/api/stats").status == 200

            page.click("#logout-form button")
            page.wait_for_selector("#login-form")
            assert page.context.cookies() == []
            assert page.goto(f"{base}/").status == 401
            assert page.request.get(f"{base}/api/stats").status == 401  # the browser's own cookies
            assert copy.request.get(f"{base}/api/stats").status == 401  # ended on the server too
            copy.close()
            page.close()

            shared = browser.new_page(viewport={"width": 390, "height": 844})
            watch(shared, problems)
            response = shared.goto(f"{base}/?share={SHARE}")
            assert response is not None and response.status == 200
            assert shared.locator("#total-views").inner_text() == "23"
            assert shared.locator("#job-counts").count() == 0 and shared.locator("#logout-form").count() == 0
            assert "boom" not in shared.content()
            shared.click("text=7 days")  # the window links keep the share token
            assert shared.locator("#total-views").inner_text() == "23"
            assert f"share={SHARE}" in shared.url and "days=7" in shared.url
            assert shared.request.get(f"{base}/api/jobs?share={SHARE}").status == 401
            shared.screenshot(path=str(SCREENSHOTS / "dashboard-shared.png"), full_page=True)
            shared.close()
        finally:
            browser.close()
    # The 401 pages (login form, the refused API) are the only console errors a browser reports.
    assert [problem for problem in problems if "401" not in problem and "403" not in problem] == []


# --- issue 17: every panel, filtered by a click ------------------------------------------------

LONG_PATH = "/" + "a-very-long-slug-without-spaces" * 6
# (path, referrer, source, medium, campaign, country, browser, os, device, visitor), all a minute ago.
AUDIENCE = (
    [
        (
            "/pricing",
            "https://news.example/a",
            "newsletter",
            "email",
            "launch",
            "DE",
            "Firefox",
            "Linux",
            "desktop",
            1,
        )
    ]
    * 2
    + [
        (
            "/pricing",
            "https://news.example/b",
            "newsletter",
            "email",
            "launch",
            "DE",
            "Firefox",
            "Linux",
            "desktop",
            2,
        )
    ]
    * 2
    + [("/docs", None, None, None, None, "DE", "Chrome", "Windows", "laptop", 3)] * 2
    + [
        (
            "/docs",
            "https://blog.example/x",
            "twitter",
            "social",
            "spring",
            "FR",
            "Safari",
            "Mac OS X",
            "laptop",
            4,
        )
    ]
    * 3
    + [("/home", None, None, None, None, "US", "Chrome", "Android", "phone", 5)] * 3
    + [("/home", None, None, None, None, "US", "Chrome", "Android", "phone", 6)] * 2
    + [("/<script>alert(1)</script>", None, None, None, None, "US", "Chrome", "Android", "phone", 6)]
    + [
        (
            LONG_PATH,
            None,
            None,
            None,
            "a-campaign-name-that-goes-on-" * 4,
            "BR",
            "Edge",
            "Windows",
            "tablet",
            7,
        )
    ]
)
COLUMNS = ("path", "referrer", "source", "medium", "campaign", "country", "browser", "os", "device")
# What the referrer panel lists for each referring address: its domain.
DOMAINS = {"https://news.example/a": "news.example", "https://news.example/b": "news.example"}
DOMAINS["https://blog.example/x"] = "blog.example"


def expected_panels(views: list[tuple]) -> dict[str, dict[str, tuple[int, int]]]:
    """Brute force over the inserted views: per dimension, each value's (views, visitors)."""
    panels: dict[str, dict[str, tuple[int, int]]] = {}
    for dimension in DIMENSIONS:
        index = COLUMNS.index(dimension.name)
        counted: dict[str, tuple[int, set]] = {}
        for view in views:
            value = DOMAINS.get(view[index], view[index]) if dimension.name == "referrer" else view[index]
            if value is not None:
                count, visitors = counted.get(value, (0, set()))
                counted[value] = (count + 1, visitors | {view[-1]})
        panels[dimension.panel] = {
            value: (count, len(visitors)) for value, (count, visitors) in counted.items()
        }
    return panels


def shown_panels(page) -> dict[str, dict[str, tuple[int, int]]]:
    """Every panel on the page: each row's value and its (views, visitors)."""
    shown = {}
    for dimension in DIMENSIONS:
        rows = page.eval_on_selector_all(
            f"#{dimension.panel.replace('_', '-')} tr[data-value]",
            "rows => rows.map(row => [row.dataset.value,"
            " +row.querySelector('td.views').textContent, +row.querySelector('td.visitors').textContent])",
        )
        shown[dimension.panel] = {value: (views, visitors) for value, views, visitors in rows}
    return shown


def totals(page) -> tuple[str, str, str]:
    return (
        page.locator("#total-views").inner_text(),
        page.locator("#total-visitors").inner_text(),
        page.locator("#current-visitors").inner_text(),
    )


def test_a_click_on_a_country_narrows_every_panel_and_its_chip_brings_them_back(
    start_process, conn: psycopg.Connection
):
    from playwright.sync_api import sync_playwright

    insert = (
        "INSERT INTO page_views (path, referrer, source, medium, campaign, country, browser, os, device,"
        " visitor, viewed_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now() - interval '1 minute')"
    )
    half = len(AUDIENCE) // 2
    with conn.cursor() as cur:  # half rolled up, half in the tail
        cur.executemany(insert, AUDIENCE[:half])
        cur.execute("SELECT tally_rollup_page_views()")
        cur.executemany(insert, AUDIENCE[half:])
        # The period before: three views eight days ago.
        cur.execute(
            "INSERT INTO page_views (path, country, visitor, viewed_at)"
            " SELECT '/old', 'FR', 9, now() - interval '8 days' FROM generate_series(1, 3)"
        )
    german = [view for view in AUDIENCE if view[COLUMNS.index("country")] == "DE"]
    base = serve_dashboard(start_process, SHARE_TOKEN=SHARE, METRICS_TOKEN="", SITES="", TIMEZONE="UTC")

    problems: list[str] = []
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(
                viewport={"width": 1280, "height": 900},
                extra_http_headers={"Authorization": f"Bearer {TOKEN}"},
            )
            watch(page, problems)
            page.on("dialog", lambda dialog: problems.append(f"a script ran: {dialog.message}"))
            assert page.goto(f"{base}/?days=7").status == 200
            assert totals(page) == (str(len(AUDIENCE)), "7", "7")
            assert shown_panels(page) == expected_panels(AUDIENCE)
            assert page.locator("#views-change").inner_text() == change(
                round(100 * (len(AUDIENCE) - 3) / 3, 1)
            )
            assert page.locator("#previous-line").count() == 1
            assert page.locator("#filters").count() == 0
            # Two columns of panels on a wide screen.
            first, second = (page.locator(f"#panel-{name}").bounding_box() for name in ("path", "referrer"))
            assert first["y"] == second["y"] and second["x"] > first["x"] + first["width"]
            page.screenshot(path=str(SCREENSHOTS / "dashboard-panels.png"), full_page=True)

            germany = page.locator('#top-countries tr[data-value="DE"] a')
            assert germany.inner_text() == "Germany (DE)"
            with page.expect_navigation():
                germany.click()
            assert "country=DE" in page.url and "days=7" in page.url
            assert totals(page) == (str(len(german)), "3", "3")
            narrowed = shown_panels(page)
            assert narrowed == expected_panels(german)  # every panel, against the brute force
            assert narrowed["top_paths"] == {"/pricing": (4, 2), "/docs": (2, 1)}
            assert narrowed["top_browsers"] == {"Firefox": (4, 2), "Chrome": (2, 1)}
            assert page.locator("#views-change").inner_text() == NONE  # no German views before
            chip = page.locator('#filters .chip[data-filter="country"]')
            assert chip.inner_text().startswith("Country: Germany (DE)")
            assert "country=DE" in page.locator("#export").get_attribute("href")

            # A second filter from another panel: both chips, AND-ed.
            with page.expect_navigation():
                page.locator('#top-browsers tr[data-value="Chrome"] a').click()
            assert totals(page)[0] == "2" and page.locator("#filters .chip").count() == 2
            with page.expect_navigation():
                page.locator('#filters .chip[data-filter="browser"]').click()
            assert shown_panels(page) == expected_panels(german)

            with page.expect_navigation():
                page.locator('#filters .chip[data-filter="country"]').click()
            assert "country=" not in page.url and "days=7" in page.url
            assert page.locator("#filters").count() == 0
            assert totals(page) == (str(len(AUDIENCE)), "7", "7")
            assert shown_panels(page) == expected_panels(AUDIENCE)
            page.close()

            # A phone, through a share link with a filter: one column, no sideways scrolling.
            phone = browser.new_page(viewport={"width": 390, "height": 844})
            watch(phone, problems)
            phone.on("dialog", lambda dialog: problems.append(f"a script ran: {dialog.message}"))
            for name, query in [("phone-all", ""), ("phone-filtered", "&country=DE")]:
                assert phone.goto(f"{base}/?days=7&share={SHARE}{query}").status == 200
                width = phone.evaluate("document.documentElement.scrollWidth")
                phone.screenshot(path=str(SCREENSHOTS / f"dashboard-{name}.png"), full_page=True)
                assert width <= 390, f"{name}: the page is {width}px wide on a 390px screen"
                first, second = (
                    phone.locator(f"#panel-{panel}").bounding_box() for panel in ("path", "referrer")
                )
                assert second["y"] > first["y"] + first["height"] - 1  # one column
            assert totals(phone) == (str(len(german)), "3", "3")
            with phone.expect_navigation():
                phone.locator('#top-paths tr[data-value="/pricing"] a').click()
            assert (
                f"share={SHARE}" in phone.url and "country=DE" in phone.url and "path=%2Fpricing" in phone.url
            )
            assert totals(phone) == ("4", "2", "2")
            with phone.expect_navigation():
                phone.locator('#filters .chip[data-filter="country"]').click()
            assert f"share={SHARE}" in phone.url and "country=" not in phone.url
            assert totals(phone) == ("4", "2", "2")  # /pricing is German only
            phone.close()

            # A mistyped address: a page that says what is wrong, and ways out that open.
            lost = browser.new_page(viewport={"width": 390, "height": 844})
            errors: list[str] = []
            watch(lost, errors)
            assert lost.goto(f"{base}/?days=seven&share={SHARE}&country=DE").status == 400
            assert "days must be a whole number" in lost.locator("#error-message").inner_text()
            assert lost.evaluate("document.documentElement.scrollWidth") <= 390
            with lost.expect_navigation():
                lost.get_by_role("link", name="Without days=seven").click()
            assert f"share={SHARE}" in lost.url and "country=DE" in lost.url
            assert totals(lost) == (str(len(german)), "3", "3")
            # The browser reports the 400 itself; nothing else (a blocked style, a script).
            assert [error for error in errors if "status of 400" not in error] == []
            lost.close()
        finally:
            browser.close()
    assert problems == []


# --- long values that anyone can send: none widens the page ---------------------------------

# A host of three 63-character labels (196 characters) and a path of 2,048: the longest the API takes.
LONG_HOST = ".".join(letter * 63 for letter in "abc") + ".test"
LONG_PAGE = "/" + "x" * 2047
LONG_EVENT = "E" * 120
LONG_RECIPIENT = "r" * 64 + "@" + "m" * 63 + ".example.org"


def sticking_out(page) -> list[str]:
    """What reaches past the right edge of the window, or scrolls inside its card."""
    return page.evaluate(
        """() => {
            const past = [...document.querySelectorAll('body *')]
                .filter(e => e.getBoundingClientRect().right > innerWidth + 0.5)
                .map(e => `${e.tagName.toLowerCase()}.${e.className} in #${e.closest('[id]')?.id}`);
            const scrolled = [...document.querySelectorAll('section')]
                .filter(s => s.scrollWidth > s.clientWidth).map(s => 'scrolls: ' + s.id);
            const wide = document.documentElement.scrollWidth - document.documentElement.clientWidth;
            return [...past, ...scrolled, ...(wide > 0 ? [`the page scrolls by ${wide}px`] : [])];
        }"""
    )


def test_long_host_names_paths_and_events_wrap_inside_the_page_at_1280_and_375_px(
    start_process, conn: psycopg.Connection
):
    from playwright.sync_api import sync_playwright

    base = serve_dashboard(start_process, SITES="", TIMEZONE="UTC")
    for body in [
        {"url": f"https://{LONG_HOST}/"},
        {"url": f"https://{LONG_HOST}{LONG_PAGE[: 2048 - len(f'https://{LONG_HOST}')]}"},
        {"url": f"https://{LONG_HOST}/", "event": LONG_EVENT, "props": {"p" * 300: "v" * 2000}},
    ]:
        request = urllib.request.Request(
            f"{base}/api/collect",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "text/plain", "User-Agent": BROWSER},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 201, body
    post_views(base, [{"path": LONG_PAGE, "site": LONG_HOST}])
    # The owner's queue: a job's error and a report's recipient with no space to break at (the
    # card scrolled sideways by 2,700px at 375px to read them).
    job_id = make_failed_job(conn)
    conn.execute(
        "UPDATE tally_job_errors SET error = %s WHERE job_id = %s",
        (f"UnknownPeriod: period must be one of weekly, monthly, not '{'y' * 300}'", job_id),
    )
    conn.execute(
        "INSERT INTO tally_report_deliveries (site, period, recipient, message_id, status, error)"
        " VALUES (%s, 'weekly:2026-11-23', %s, '<m@tally.test>', 'failed', %s)",
        (LONG_HOST, LONG_RECIPIENT, f"SMTPRecipientsRefused: {{'{LONG_RECIPIENT}': (550, b'unknown')}}"),
    )

    addresses = {
        "all": "days=1",
        "a path": urllib.parse.urlencode({"days": 1, "site": LONG_HOST, "path": LONG_PAGE}),
        "an event": urllib.parse.urlencode({"days": 1, "site": LONG_HOST, "event": LONG_EVENT}),
    }
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        found = {}
        try:
            for width in (1280, 375):
                page = browser.new_page(
                    viewport={"width": width, "height": 900},
                    extra_http_headers={"Authorization": f"Bearer {TOKEN}"},
                )
                for name, query in addresses.items():
                    assert page.goto(f"{base}/?{query}").status == 200
                    assert page.locator(f'#site-switcher a[data-site="{LONG_HOST}"]').count() == 1
                    assert page.locator("#recent-failures td.failed").count() == 1
                    assert page.locator("#report-failures td.wrap").count() == 3
                    page.screenshot(
                        path=str(SCREENSHOTS / f"dashboard-long-{name.replace(' ', '-')}-{width}.png"),
                        full_page=True,
                    )
                    found[f"{name} at {width}px"] = sticking_out(page)
                page.close()
        finally:
            browser.close()
    assert found == {key: [] for key in found}


# --- a phone: the events panel's names, and entry and exit pages as filters --------------------

EVENT_NAMES = ("Signup", "Outbound Link", "File Download", "Newsletter")


def broken_words(page, selector: str) -> list[str]:
    """The words in `selector`'s cells that a line break cuts in two ("Sign/up")."""
    return page.evaluate(
        """selector => [...document.querySelectorAll(selector)].flatMap(cell => {
            const text = cell.firstChild;
            const cut = [];
            for (const match of text.textContent.matchAll(/\\S+/g)) {
                const range = document.createRange();
                range.setStart(text, match.index);
                range.setEnd(text, match.index + match[0].length);
                const tops = new Set([...range.getClientRects()].map(rect => Math.round(rect.top)));
                if (tops.size > 1) cut.push(match[0]);
            }
            return cut;
        })""",
        selector,
    )


def test_on_a_phone_event_names_keep_their_words_and_entry_and_exit_pages_filter_by_path(
    start_process, conn: psycopg.Connection
):
    from playwright.sync_api import sync_playwright

    with conn.cursor() as cur:  # each visitor lands on /landing and leaves from /thanks
        cur.executemany(
            "INSERT INTO page_views (path, visitor, viewed_at) VALUES (%s, %s, now() - %s::interval)",
            [
                (path, visitor, ago)
                for visitor in (1, 2)
                for path, ago in (("/landing", "3 min"), ("/thanks", "2 min"))
            ]
            + [("/about", 3, "2 min")],
        )
        cur.executemany(
            "INSERT INTO events (name, visitor, occurred_at) VALUES (%s, 1, now() - interval '2 minutes')",
            [(name,) for name in EVENT_NAMES],
        )
    base = serve_dashboard(start_process, TIMEZONE="UTC")

    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(
                viewport={"width": 375, "height": 812},
                extra_http_headers={"Authorization": f"Bearer {TOKEN}"},
            )
            page.set_default_timeout(5000)
            watch(page, problems)
            assert page.goto(f"{base}/?days=7").status == 200
            assert sorted(
                page.eval_on_selector_all(
                    "#top-events tr[data-value]", "rows => rows.map(r => r.dataset.value)"
                )
            ) == sorted(EVENT_NAMES)
            page.locator("#panel-events").screenshot(path=str(SCREENSHOTS / "dashboard-events-375.png"))
            assert broken_words(page, "#top-events td.value a") == []
            assert broken_words(page, "section.panel th") == []

            with page.expect_navigation():
                page.locator('#top-entry-pages tr[data-value="/landing"] a').click()
            assert "path=%2Flanding" in page.url and "days=7" in page.url
            assert (
                page.locator('#filters .chip[data-filter="path"]').inner_text().startswith("Path: /landing")
            )
            assert page.locator("#total-views").inner_text() == "2"
            assert "active" in page.locator('#top-entry-pages tr[data-value="/landing"]').get_attribute(
                "class"
            )
            with page.expect_navigation():
                page.locator('#filters .chip[data-filter="path"]').click()
            with page.expect_navigation():
                page.locator('#top-exit-pages tr[data-value="/thanks"] a').click()
            assert "path=%2Fthanks" in page.url
            assert page.locator("#total-views").inner_text() == "2"
            page.close()
        finally:
            browser.close()
    assert problems == []
