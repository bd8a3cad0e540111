"""The report's preview page in a real browser (Debian's Chromium through Playwright, as in
tests/test_dashboard_browser.py) at a phone's width: it draws, the bar chart included,
with no console error and no sideways scrolling; the screenshot goes to a temporary folder."""

from __future__ import annotations

import psycopg

from tally import reports
from tests.conftest import free_port
from tests.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS, pytestmark  # noqa: F401
from tests.test_reports import SITE, TZ, local_today, views_over_weeks
from tests.test_web_exact import brute_force

TOKEN = "report-preview-token"


def test_the_preview_draws_at_phone_width(start_process, conn: psycopg.Connection, tmp_path):
    from playwright.sync_api import sync_playwright

    views_over_weeks(conn)
    port = free_port()
    env = {
        "PORT": str(port),
        "ADMIN_TOKEN": TOKEN,
        "TIMEZONE": TZ,
        "TALLY_URL": "https://tally.example.com",
        "PUBLIC_DASHBOARD": "false",
        "SMTP_URL": "",
        "REPORT_RECIPIENTS": "",
    }
    web = start_process(["web.py"], env)
    web.wait_for_line("Serving on")
    week = reports.last_full_period("weekly", local_today(conn))
    expected = brute_force(conn, 7, SITE, TZ, last_day=week.last_day)
    views = sum(v for v, _ in expected["daily"].values())

    problems: list[str] = []
    screenshot = tmp_path / "report-preview-phone.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(
                viewport={"width": 390, "height": 844},
                extra_http_headers={"Authorization": f"Bearer {TOKEN}"},
            )
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            response = page.goto(f"http://127.0.0.1:{port}/reports/preview?site={SITE}&period=weekly")
            assert response is not None and response.status == 200
            assert page.locator("#report").is_visible()
            assert page.locator('[data-total="views"]').inner_text() == f"{views:,}"
            bars = page.locator("#chart td.bar")
            assert bars.count() == sum(1 for v, _ in expected["daily"].values() if v) > 0
            heights = [bars.nth(i).bounding_box()["height"] for i in range(bars.count())]
            assert max(heights) >= reports.CHART_HEIGHT_PX - 1 and min(heights) > 0
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"the report scrolls sideways by {overflow}px at phone width"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
    assert problems == []
