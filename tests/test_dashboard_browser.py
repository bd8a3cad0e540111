"""The dashboard in a real browser: Debian's Chromium, driven by Playwright (no browser
download: Playwright is pointed at /usr/bin/chromium). `.ci/run` installs Chromium;
where it is missing locally the test skips and says so (in CI it fails instead).

The owner logs in with the admin token, sees the numbers and the queue, logs out; a share
link shows the numbers and nothing of the queue."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request

import psycopg
import pytest

from tests.conftest import ROOT, defer_by_sql, free_port
from tests.test_web import make_failed_job

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
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed (apt-get install chromium); .ci/run installs it",
)


def post_views(port: int, views: list[dict]) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/pageviews",
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
    port = free_port()
    web = start_process(["web.py"], {"PORT": str(port), "ADMIN_TOKEN": TOKEN})
    web.wait_for_line("Serving on")
    post_views(port, [{"path": "/home"}] * 3 + [{"path": "/pricing"}])

    problems: list[str] = []
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for name, viewport in [
                ("desktop", {"width": 1280, "height": 900}),
                ("phone", {"width": 390, "height": 844}),
            ]:
                owner = {"Authorization": f"Bearer {TOKEN}"}  # logging in has its own test below
                page = browser.new_page(viewport=viewport, extra_http_headers=owner)
                page.on(
                    "console",
                    lambda message: problems.append(message.text) if message.type == "error" else None,
                )
                page.on("pageerror", lambda error: problems.append(str(error)))
                page.on("requestfailed", lambda request: problems.append(f"request failed: {request.url}"))
                response = page.goto(f"http://127.0.0.1:{port}/?days=7", wait_until="load")
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
    port = free_port()
    web = start_process(["web.py"], {"PORT": str(port), "ADMIN_TOKEN": TOKEN, "SHARE_TOKEN": SHARE})
    web.wait_for_line("Serving on")
    base = f"http://127.0.0.1:{port}"

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
            assert page.url == f"{base}/"
            assert page.locator("#total-views").inner_text() == "23"
            assert "/launch" in page.locator("#top-paths").inner_text()
            assert page.locator("#job-counts").count() == 1
            (cookie,) = page.context.cookies()
            assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["expires"] > 0
            assert page.evaluate("document.cookie") == ""  # HttpOnly: no script can read it
            page.goto(f"{base}/?days=7")  # the session holds across pages
            assert page.locator("#total-views").inner_text() == "23"
            page.screenshot(path=str(SCREENSHOTS / "dashboard-owner.png"), full_page=True)

            page.click("#logout-form button")
            page.wait_for_selector("#login-form")
            assert page.context.cookies() == []
            assert page.goto(f"{base}/").status == 401
            assert page.request.get(f"{base}/api/stats").status == 401  # the browser's own cookies
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
