"""The dashboard in a real browser: Debian's Chromium, driven by Playwright (no browser
download: Playwright is pointed at /usr/bin/chromium). `.ci/run` installs Chromium;
where it is missing locally the test skips and says so (in CI it fails instead)."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request

import psycopg
import pytest

from tests.conftest import ROOT, defer_by_sql, free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = ROOT / "tests" / "artifacts"
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
    web = start_process(["web.py"], {"PORT": str(port)})
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
                page = browser.new_page(viewport=viewport)
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
