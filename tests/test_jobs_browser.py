"""The jobs page in a real browser (Debian's Chromium through Playwright, as in
tests/test_dashboard_browser.py) against a live web.py and worker.py: the owner logs in,
filters the failed jobs, retries one and sees it succeed, cancels a waiting one, pauses a
queue, runs a task into it and sees it wait, resumes and sees it run. A form without the
CSRF token, a share link, or a form on another origin changes nothing."""

from __future__ import annotations

import http.server
import threading
import time

import psycopg
import pytest

from tests.conftest import free_port, wait_until
from tests.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, watch
from tests.test_queue_pause import defer_to, status
from tests.test_web import make_failed_job

TOKEN = "jobs-browser-owner"
SHARE = "jobs-browser-share"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed"),
]


def defer_later(conn: psycopg.Connection, task: str) -> int:
    """A job of `task` that waits an hour before it may run: it stays waiting."""
    return conn.execute(
        "SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[ROW('default', %s, 0, NULL, NULL, '{}'::jsonb,"
        " now() + interval '1 hour')::procrastinate_job_to_defer_v1]))",
        (task,),
    ).fetchone()[0]


def see(page, url: str, selector: str, text: str, timeout: float = 15.0) -> None:
    """Reload `url` until `selector` shows `text` (a job's status changes on the worker's time)."""

    def shows() -> bool:
        page.goto(url)
        return page.locator(selector).inner_text().strip() == text

    wait_until(shows, timeout, 0.2, f"{selector} to show {text!r} on {url}")


class OtherSite:
    """A page on another origin (another port) with a form that posts to Tally."""

    def __init__(self, action: str, csrf: str):
        body = (
            f'<!doctype html><form id="evil" method="post" action="{action}">'
            f'<input type="hidden" name="csrf" value="{csrf}"><button>go</button></form>'
        ).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_the_owner_runs_the_queue_from_the_page(start_process, conn: psycopg.Connection):
    from playwright.sync_api import sync_playwright

    failed = make_failed_job(conn)
    waiting = defer_later(conn, "cleanup_old_page_views")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    web = start_process(["web.py"], {"PORT": str(port), "ADMIN_TOKEN": TOKEN, "SHARE_TOKEN": SHARE})
    worker = start_process(["worker.py"], {"POLL_INTERVAL_SECONDS": "120"})
    web.wait_for_line("Serving on")
    worker.wait_for_line("Starting worker")

    problems: list[str] = []
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            watch(page, problems, with_address=True)
            assert page.goto(f"{base}/jobs").status == 401
            page.fill("#token", TOKEN)
            page.click("#login-form button")
            page.wait_for_selector("#jobs")
            assert page.url == f"{base}/jobs"  # the page asked for, not the dashboard
            page.goto(f"{base}/")
            page.click("#jobs-link")
            page.wait_for_selector("#jobs")

            # Filter the failed jobs.
            page.select_option("#job-filter select[name=status]", "failed")
            page.click("#job-filter button")
            page.wait_for_url("**/jobs?status=failed**")
            rows = page.locator("#jobs tr[data-job-id]")
            assert rows.count() == 1 and rows.first.get_attribute("data-job-id") == str(failed)
            page.screenshot(path=str(SCREENSHOTS / "jobs-failed.png"), full_page=True)
            # On a phone the row's action is in sight (it was past a sideways scroll, x 539 of 375).
            page.set_viewport_size({"width": 375, "height": 800})
            button = page.locator(f'tr[data-job-id="{failed}"] .retry-form button').bounding_box()
            assert button is not None and button["x"] + button["width"] <= 375, button
            run_now = page.locator('tr[data-task="rotate_visitor_salts"] .run-now-form button').bounding_box()
            assert run_now is not None and run_now["x"] + run_now["width"] <= 375, run_now
            page.screenshot(path=str(SCREENSHOTS / "jobs-phone.png"), full_page=True)
            page.set_viewport_size({"width": 1280, "height": 900})

            # Retry it, and see it succeed.
            page.click(f'tr[data-job-id="{failed}"] .retry-form button')
            page.wait_for_selector("#notice")
            assert "waits to run again" in page.locator("#notice").inner_text()
            assert "status=failed" in page.url
            see(page, f"{base}/jobs/{failed}", "#job-status", "succeeded")
            assert "retried" in page.locator("#events").inner_text()

            # Cancel the waiting one.
            page.goto(f"{base}/jobs?status=todo")
            page.click(f'tr[data-job-id="{waiting}"] .cancel-form button')
            page.wait_for_selector("#notice")
            assert status(conn, waiting) == "cancelled"

            # Pause the default queue, run a task into it: it waits while another queue runs.
            page.goto(f"{base}/jobs")
            page.click('tr[data-queue="default"] .pause-form button')
            page.wait_for_selector('tr[data-queue="default"][data-paused="true"]')
            page.click('tr[data-task="rotate_visitor_salts"] .run-now-form button')
            page.wait_for_selector("#notice")
            (held,) = conn.execute(
                "SELECT id FROM procrastinate_jobs WHERE task_name = 'rotate_visitor_salts'"
            ).fetchone()
            other = defer_to(conn, "other")
            wait_until(lambda: status(conn, other) == "succeeded", 15, message="the other queue's job")
            page.goto(f"{base}/jobs/{held}")
            assert page.locator("#job-status").inner_text() == "todo"
            page.goto(f"{base}/")
            assert "default" in page.locator("#paused-queues").inner_text()

            # A form without the token, from another origin, or with a share link: nothing.
            csrf = page.locator("#logout-form input[name=csrf]").get_attribute("value")
            resume = f"{base}/api/queues/default/resume"
            assert page.request.post(resume, form={}, headers={"Origin": base}).status == 403
            assert page.request.post(resume, form={"csrf": "guess"}, headers={"Origin": base}).status == 403
            other_site = OtherSite(resume, csrf)
            try:
                page.goto(other_site.url)
                with page.expect_response(resume) as refused:
                    page.click("#evil button")
                assert refused.value.status == 403
            finally:
                other_site.close()
            stranger = browser.new_context()
            answer = stranger.request.post(f"{resume}?share={SHARE}", form={"csrf": csrf})
            assert answer.status == 401
            stranger.close()
            assert conn.execute("SELECT queue_name FROM tally_paused_queues").fetchall() == [("default",)]
            assert status(conn, held) == "todo"

            # Resume: the held job runs (by NOTIFY: the worker polls every 120 s).
            page.goto(f"{base}/jobs")
            resumed_at = time.monotonic()
            page.click('tr[data-queue="default"] .resume-form button')
            page.wait_for_selector('tr[data-queue="default"][data-paused="false"]')
            wait_until(lambda: status(conn, held) == "succeeded", 5, 0.01, message="the resumed job")
            assert time.monotonic() - resumed_at < 5
            see(page, f"{base}/jobs/{held}", "#job-status", "succeeded")
            page.goto(f"{base}/jobs")
            page.screenshot(path=str(SCREENSHOTS / "jobs.png"), full_page=True)
        finally:
            browser.close()
    # The refusals (401, 403) are the console errors expected, and the icon the browser asks
    # for when it shows the JSON answer to the other site's form.
    unexpected = [p for p in problems if not ("401" in p or "403" in p or p.endswith("/favicon.ico"))]
    assert unexpected == []
    assert "by owner (session)" in web.output()
