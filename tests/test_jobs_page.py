"""The jobs page and its actions through the real WSGI app (WebTest): retry, cancel, bulk,
pause and resume, who may do them, and what the pages show. Workers are in
tests/test_queue_pause.py; the browser in tests/test_jobs_browser.py."""

from __future__ import annotations

import html.parser
import re
import urllib.parse

import psycopg
import pytest
import webtest

import jobs
from tests.conftest import ROOT, defer_by_sql, statuses
from tests.test_web import make_client, make_failed_job

TOKEN = "jobs-owner-token"
SHARE = "jobs-share-token"
OWNER = {"Authorization": f"Bearer {TOKEN}"}
SAME_SITE = {"Origin": "http://localhost"}


@pytest.fixture
def client(database_url, pool) -> webtest.TestApp:
    return make_client(database_url, pool, ADMIN_TOKEN=TOKEN, SHARE_TOKEN=SHARE)


def logged_in(client: webtest.TestApp) -> str:
    """Log `client` in through the form; return the CSRF token its pages carry."""
    client.post("/login", {"token": TOKEN}, headers=SAME_SITE, status=303)
    return re.search(r'name="csrf" value="([^"]+)"', client.get("/jobs").text).group(1)


def status_of(conn: psycopg.Connection, job_id: int) -> str:
    return conn.execute("SELECT status::text FROM procrastinate_jobs WHERE id = %s", (job_id,)).fetchone()[0]


def test_retry_takes_failed_and_cancelled_jobs_and_refuses_others(client, conn):
    failed = make_failed_job(conn)
    answer = client.post(f"/api/jobs/{failed}/retry", headers=OWNER, status=202).json
    assert answer == {"job_id": failed, "status": "todo", "was": "failed"}
    assert status_of(conn, failed) == "todo"
    assert "retried" in [
        row[0]
        for row in conn.execute("SELECT type::text FROM procrastinate_events WHERE job_id = %s", (failed,))
    ]
    error = client.post(f"/api/jobs/{failed}/retry", headers=OWNER, status=409).json["error"]
    assert "todo" in error
    client.post("/api/jobs/999999/retry", headers=OWNER, status=404)

    client.post(f"/api/jobs/{failed}/cancel", headers=OWNER, status=200)
    assert status_of(conn, failed) == "cancelled"
    client.post(f"/api/jobs/{failed}/cancel", headers=OWNER, status=409)
    assert client.post(f"/api/jobs/{failed}/retry", headers=OWNER, status=202).json["was"] == "cancelled"
    assert (
        conn.execute("SELECT abort_requested FROM procrastinate_jobs WHERE id = %s", (failed,)).fetchone()[0]
        is False
    )
    client.post("/api/jobs/999999/cancel", headers=OWNER, status=404)


def test_cancelling_a_running_job_asks_it_to_abort(client, conn):
    defer_by_sql(conn, "cleanup_old_page_views")
    worker_id = conn.execute("SELECT worker_id FROM procrastinate_register_worker_v1()").fetchone()[0]
    (job_id,) = conn.execute("SELECT id FROM procrastinate_fetch_job_v2(NULL, %s)", (worker_id,)).fetchone()
    answer = client.post(f"/api/jobs/{job_id}/cancel", headers=OWNER, status=202).json
    assert answer["status"] == "doing" and answer["abort_requested"] is True
    assert conn.execute("SELECT abort_requested FROM procrastinate_jobs WHERE id = %s", (job_id,)).fetchone()[
        0
    ]


def test_bulk_actions_take_a_filter(client, conn):
    defer_by_sql(conn, "prune_finished_jobs", count=3)
    defer_by_sql(conn, "cleanup_old_page_views", count=2)
    answer = client.post("/api/jobs/bulk/cancel?task=prune_finished_jobs", headers=OWNER, status=202).json
    assert answer["cancelled"] == 3
    assert statuses(conn, "prune_finished_jobs") == ["cancelled"] * 3
    assert statuses(conn, "cleanup_old_page_views") == ["todo"] * 2
    client.post("/api/jobs/bulk/retry?status=todo", headers=OWNER, status=409)
    client.post("/api/jobs/bulk/retry?status=bogus", headers=OWNER, status=400)
    for action in ("retry", "cancel"):  # a misspelt filter acted on every job
        answer = client.post(f"/api/jobs/bulk/{action}?tsak=send_reports", headers=OWNER, status=400).json
        assert "tsak" in answer["error"]
    answer = client.post("/api/jobs/bulk/cancel?task=nothing&before=7", headers=OWNER, status=202).json
    assert answer["cancelled"] == 0  # a later page's form names its page: accepted
    for action in ("retry", "cancel"):  # and a `before` that is no job id is refused, nothing done
        answer = client.post(f"/api/jobs/bulk/{action}?before=abc", headers=OWNER, status=400).json
        assert "before" in answer["error"]
    assert statuses(conn, "prune_finished_jobs") == ["cancelled"] * 3
    assert client.post("/api/jobs/bulk/retry?queue=default", headers=OWNER, status=202).json["retried"] == 3
    assert statuses(conn, "prune_finished_jobs") == ["todo"] * 3


def test_a_bulk_actions_notice_counts_in_words(client, conn):
    defer_by_sql(conn, "cleanup_old_page_views", count=2)
    defer_by_sql(conn, "send_reports")
    form = {"csrf": logged_in(client), "next": "/jobs"}

    def notice(action: str, task: str) -> str:
        response = client.post(f"/api/jobs/bulk/{action}?task={task}", form, headers=SAME_SITE, status=303)
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(response.headers["Location"]).query)
        return query["notice"][0]

    assert notice("cancel", "cleanup_old_page_views") == "2 jobs cancelled (running ones asked to abort)."
    assert notice("cancel", "send_reports") == "1 job cancelled (running ones asked to abort)."
    assert notice("retry", "send_reports") == "1 job waits to run again."
    assert notice("retry", "cleanup_old_page_views") == "2 jobs wait to run again."


def test_pause_and_resume_are_rows_and_show_in_health_metrics_and_pages(client, conn):
    answer = client.post("/api/queues/reports/pause", headers=OWNER, status=200).json
    assert answer["queue"] == "reports" and answer["paused"] is True
    again = client.post("/api/queues/reports/pause", headers=OWNER, status=200).json
    assert again["paused_at"] == answer["paused_at"]  # the first pause's time stays
    assert conn.execute("SELECT queue_name FROM tally_paused_queues").fetchall() == [("reports",)]
    health = client.get("/api/health").json["paused_queues"]
    assert [row["queue"] for row in health] == ["reports"]
    assert health[0]["paused_at"] == answer["paused_at"]  # one form of a time: ISO 8601, UTC
    assert 'tally_queue_paused{queue="reports"} 1.0' in client.get("/metrics", headers=OWNER).text
    assert 'data-queue="reports" data-paused="true"' in client.get("/jobs", headers=OWNER).text
    assert "Paused queues: reports" in client.get("/", headers=OWNER).text

    with psycopg.connect(conn.info.dsn, autocommit=True) as listener:
        listener.execute('LISTEN "procrastinate_queue_v1#reports"')
        assert client.post("/api/queues/reports/resume", headers=OWNER, status=200).json["paused"] is False
        notices = list(listener.notifies(timeout=2, stop_after=1))
    assert notices and '"job_inserted"' in notices[0].payload
    assert client.get("/api/health").json["paused_queues"] == []
    client.post("/api/queues/reports/resume", headers=OWNER, status=200)  # resuming twice is harmless
    client.post("/api/queues/" + "q" * 41 + "/pause", headers=OWNER, status=400)
    client.post("/api/queues/a%20b/pause", headers=OWNER, status=400)


def test_the_page_forms_act_with_the_session_and_its_csrf_token_only(client, conn):
    failed = make_failed_job(conn)
    csrf = logged_in(client)
    next_page = "/jobs?status=failed"
    form = {"csrf": csrf, "next": next_page}
    # No token, a wrong one, another origin, no origin: nothing changes.
    client.post(f"/api/jobs/{failed}/retry", {"next": next_page}, headers=SAME_SITE, status=403)
    client.post(f"/api/jobs/{failed}/retry", {**form, "csrf": csrf + "x"}, headers=SAME_SITE, status=403)
    client.post(f"/api/jobs/{failed}/retry", form, headers={"Origin": "https://evil.example"}, status=403)
    client.post(f"/api/jobs/{failed}/retry", form, status=403)
    client.post("/api/queues/default/pause", form, headers={"Origin": "https://evil.example"}, status=403)
    assert status_of(conn, failed) == "failed"
    assert conn.execute("SELECT count(*) FROM tally_paused_queues").fetchone()[0] == 0

    response = client.post(f"/api/jobs/{failed}/retry", form, headers=SAME_SITE, status=303)
    location = urllib.parse.urlsplit(response.headers["Location"])
    assert location.path == "/jobs" and "status=failed" in location.query and "notice=" in location.query
    assert status_of(conn, failed) == "todo"
    back = client.get(response.headers["Location"], headers={"Sec-Fetch-Site": "same-origin"})  # as a browser
    assert "waits to run again" in back.text
    # `next` names only the jobs pages.
    response = client.post(
        "/api/queues/default/pause", {**form, "next": "https://evil.example/"}, headers=SAME_SITE
    )
    assert response.headers["Location"].startswith("/jobs?notice=")
    response = client.post("/api/jobs/rotate_visitor_salts", form, headers=SAME_SITE, status=303)
    assert statuses(conn, "rotate_visitor_salts") == ["todo"]


def test_a_refused_form_shows_the_browser_a_page_with_the_way_back(client, conn):
    """A form posted from a page left open (its session ended, its CSRF token from an older
    one) showed the browser a line of JSON at /api/jobs/<id>/retry, with no way back."""
    failed = make_failed_job(conn)
    csrf = logged_in(client)
    browser = {**SAME_SITE, "Accept": "text/html,application/xhtml+xml"}
    form = {"csrf": csrf + "x", "next": "/jobs?status=failed"}
    page = client.post(f"/api/jobs/{failed}/retry", form, headers=browser, status=403)
    assert page.content_type == "text/html"
    assert "reload the page" in page.text and 'href="/jobs"' in page.text
    client.post("/logout", {"csrf": csrf}, headers=SAME_SITE)
    page = client.post(f"/api/jobs/{failed}/retry", {**form, "csrf": csrf}, headers=browser, status=401)
    assert page.content_type == "text/html" and 'href="/jobs"' in page.text
    assert status_of(conn, failed) == "failed"
    # Scripts keep the JSON.
    assert client.post(f"/api/jobs/{failed}/retry", status=401).json["error"]


@pytest.mark.parametrize(
    "next_page", ["/jobs/\r\nSet-Cookie: x=1", "/jobs?\x00", "/jobs/\u2028", "/jobs/\u00e9"]
)
def test_a_next_page_no_location_header_can_hold_leads_to_the_jobs_page(client, conn, next_page):
    """A form's `next` with a line break, a NUL or a character past ASCII made Bottle refuse the
    Location header: a 500 after the queue was paused. Such a `next` leads to /jobs, as one
    naming another site does."""
    csrf = logged_in(client)
    response = client.post(
        "/api/queues/default/pause", {"csrf": csrf, "next": next_page}, headers=SAME_SITE, status=303
    )
    assert response.headers["Location"].startswith("/jobs?notice=")
    assert conn.execute("SELECT count(*) FROM tally_paused_queues").fetchone()[0] == 1


def test_a_share_link_or_public_mode_reaches_no_action(database_url, pool, conn):
    failed = make_failed_job(conn)
    public = make_client(database_url, pool, ADMIN_TOKEN=TOKEN, SHARE_TOKEN=SHARE, PUBLIC_DASHBOARD="true")
    for path in (f"/api/jobs/{failed}/retry", "/api/queues/default/pause", "/api/jobs/bulk/retry"):
        public.post(path, status=401)
        public.post(f"{path}?share={SHARE}", {"csrf": "x"}, headers=SAME_SITE, status=401)
    public.get("/jobs", status=401)
    public.get(f"/jobs?share={SHARE}", status=401)
    public.get(f"/jobs/{failed}", status=401)
    assert status_of(conn, failed) == "failed"
    assert conn.execute("SELECT count(*) FROM tally_paused_queues").fetchone()[0] == 0


def test_the_jobs_page_filters_pages_by_keyset_and_lists_schedules(client, conn):
    defer_by_sql(conn, "prune_finished_jobs", count=60)
    defer_by_sql(conn, "cleanup_old_page_views", count=3)
    failed = make_failed_job(conn)
    page = client.get("/jobs", headers=OWNER)
    ids = [int(found) for found in re.findall(r'data-job-id="(\d+)"', page.text)]
    assert len(ids) == 50 and ids == sorted(ids, reverse=True) and ids[0] == failed
    older = page.html.find(id="next-page")["href"]
    assert "before=" in older
    rest = [int(found) for found in re.findall(r'data-job-id="(\d+)"', client.get(older, headers=OWNER).text)]
    assert rest and max(rest) < min(ids) and len(ids) + len(rest) == 64

    only_failed = client.get("/jobs", {"status": "failed"}, headers=OWNER).text
    assert re.findall(r'data-job-id="(\d+)"', only_failed) == [str(failed)]
    cleanup = client.get("/jobs", {"task": "cleanup_old_page_views", "queue": "default"}, headers=OWNER).text
    assert len(re.findall(r'data-job-id="', cleanup)) == 3
    for bad in ({"status": "lost"}, {"before": "-1"}, {"before": "x"}, {"task": "a\x00b"}):
        assert "error" in client.get("/jobs", bad, headers=OWNER, status=400).json
    # A misspelt filter showed every job as if it were the filter's answer.
    misspelt = client.get("/jobs", {"stauts": "failed"}, headers=OWNER, status=400).json["error"]
    assert "Unknown parameter stauts" in misspelt
    client.get("/jobs", {"status": "failed", "notice": "Job 1 retried."}, headers=OWNER, status=200)
    # A job's page takes no filter: one given there was answered as if it meant something.
    misplaced = client.get(f"/jobs/{failed}", {"status": "failed"}, headers=OWNER, status=400).json["error"]
    assert "Unknown parameter status" in misplaced
    client.get(f"/jobs/{failed}", {"notice": "Job retried."}, headers=OWNER, status=200)

    schedules = page.html.find(id="schedules").text
    for task in (
        "rollup_page_views",
        "cleanup_old_page_views",
        "prune_finished_jobs",
        "rotate_visitor_salts",
    ):
        assert task in schedules
    assert "never" in schedules


def test_a_jobs_page_shows_arguments_events_worker_and_the_traceback(client, conn):
    failed = make_failed_job(conn)
    conn.execute(
        "UPDATE tally_job_errors SET traceback = %s WHERE job_id = %s",
        ("Traceback (most recent call last):\n  boom", failed),
    )
    page = client.get(f"/jobs/{failed}", headers=OWNER)
    assert page.html.find(id="job-status").text == "failed"
    assert "RuntimeError: boom" in page.text and "Traceback (most recent call last)" in page.text
    events = page.html.find(id="events").text
    assert "deferred" in events and "started" in events and "failed" in events
    assert page.html.find(id="job-worker").text != "none"
    assert "{}" in page.html.find(id="job-args").text
    client.get("/jobs/999999", headers=OWNER, status=404)


def test_a_jobs_page_writes_its_scheduled_time_in_the_owners_zone_as_every_other(database_url, pool, conn):
    client = make_client(database_url, pool, ADMIN_TOKEN=TOKEN, TIMEZONE="Europe/Paris")
    defer_by_sql(conn, "cleanup_old_page_views")
    job_id = conn.execute(
        "UPDATE procrastinate_jobs SET scheduled_at = '2026-07-01 10:00:00+00' RETURNING id"
    ).fetchone()[0]
    page = client.get(f"/jobs/{job_id}", headers=OWNER)
    assert page.html.find(id="job-scheduled").text == "2026-07-01 12:00:00 CEST"


def test_a_waiting_job_says_what_holds_it_back(database_url, pool, conn):
    """A job deferred for later holds back every later job of its lock (procrastinate runs a
    lock's jobs in order): an operator's `defer --in 600 rollup_page_views` stopped the rollups
    for ten minutes, and the page of a waiting one said nothing of why."""
    client = make_client(database_url, pool, ADMIN_TOKEN=TOKEN, TIMEZONE="Europe/Paris")
    defer_by_sql(conn, "rollup_page_views", lock="rollup_page_views")
    (later,) = conn.execute(
        "UPDATE procrastinate_jobs SET scheduled_at = now() + interval '10 minutes' RETURNING id"
    ).fetchone()
    defer_by_sql(conn, "rollup_page_views", count=2, lock="rollup_page_views")
    second, third = (
        row[0]
        for row in conn.execute("SELECT id FROM procrastinate_jobs WHERE id > %s ORDER BY id", (later,))
    )

    detail = client.get(f"/api/jobs/{third}", headers=OWNER).json
    assert detail["waits_behind"]["id"] == later and detail["waits_behind"]["status"] == "todo"
    assert detail["queue_paused"] is False
    waits = client.get(f"/jobs/{second}", headers=OWNER).html.find(id="job-waits")
    assert waits.find("a")["href"] == f"/jobs/{later}"
    assert "scheduled for" in waits.text and "one lock run one at a time" in waits.text
    assert client.get(f"/api/jobs/{later}", headers=OWNER).json["waits_behind"] is None

    client.post("/api/queues/default/pause", headers=OWNER, status=200)
    assert (
        "its queue default is paused"
        in client.get(f"/jobs/{later}", headers=OWNER).html.find(id="job-waits").text
    )
    conn.execute("UPDATE procrastinate_jobs SET status = 'doing' WHERE id = %s", (later,))
    assert client.get(f"/jobs/{second}", headers=OWNER).html.find(id="job-waits").text.count("running") == 1
    assert client.get(f"/jobs/{later}", headers=OWNER).html.find(id="job-waits") is None


def test_the_worker_stores_the_traceback(conn):
    import asyncio

    from jobs.middleware import record_job_errors

    defer_by_sql(conn, "prune_finished_jobs")
    (job_id,) = conn.execute("SELECT id FROM procrastinate_jobs").fetchone()

    class Context:
        app = jobs.app
        worker_name = "worker.3"
        job = type("Job", (), {"id": job_id, "attempts": 0})()

    async def failing():
        raise ValueError("no such thing")

    async def run():
        async with jobs.app.open_async():
            with pytest.raises(ValueError):
                await record_job_errors(failing, Context(), None)

    asyncio.run(run())
    error, trace, worker = conn.execute("SELECT error, traceback, worker FROM tally_job_errors").fetchone()
    assert error == "ValueError: no such thing" and worker == "worker.3"
    assert trace.startswith("Traceback") and "in failing" in trace


def test_schedules_show_next_run_and_last_deferral_in_the_owners_zone(database_url, pool, conn):
    client = make_client(
        database_url, pool, ADMIN_TOKEN=TOKEN, TIMEZONE="Asia/Kolkata", PRUNE_SCHEDULE="30 3 * * *"
    )
    (job_id,) = conn.execute(
        "SELECT procrastinate_defer_periodic_job_v2('default', NULL, NULL, 'prune_finished_jobs', 0, 'clock',"
        " extract(epoch FROM timestamptz '2026-01-05 03:30:00+00')::bigint, '{}'::jsonb)"
    ).fetchone()
    conn.execute("UPDATE procrastinate_jobs SET status = 'failed' WHERE id = %s", (job_id,))
    row = client.get("/jobs", headers=OWNER).html.find("tr", attrs={"data-task": "prune_finished_jobs"})
    cells = [cell.text.strip() for cell in row.find_all("td")]
    assert cells[1] == "30 3 * * *"
    assert cells[2].endswith("09:00:00 IST")  # 03:30 UTC, in the owner's zone
    assert cells[3] == "2026-01-05 09:00:00 IST" and cells[4] == "failed"
    assert row.find("a")["href"] == f"/jobs/{job_id}"


def test_a_schedule_shows_its_tasks_newest_job_whoever_deferred_it(database_url, pool, conn):
    """ "Run now" defers no job of the schedule's: its row still said "Last deferral: never" and
    "-" after the job ran, as if the button had done nothing."""
    client = make_client(database_url, pool, ADMIN_TOKEN=TOKEN, TIMEZONE="Asia/Kolkata")
    row = client.get("/jobs", headers=OWNER).html.find("tr", attrs={"data-task": "cleanup_old_page_views"})
    assert row.find("td", class_="newest").text.strip() == "-"
    (job_id,) = conn.execute(
        "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW('default', 'cleanup_old_page_views', 0, NULL, NULL,"
        " '{}'::jsonb, NULL)::procrastinate_job_to_defer_v1])"
    ).fetchone()[0]
    conn.execute("UPDATE procrastinate_events SET at = '2026-01-05 03:30:00+00' WHERE job_id = %s", (job_id,))
    row = client.get("/jobs", headers=OWNER).html.find("tr", attrs={"data-task": "cleanup_old_page_views"})
    newest = row.find("td", class_="newest")
    assert newest.find("a")["href"] == f"/jobs/{job_id}" and newest.find("a").text == "todo"
    assert newest.find("span").text == "2026-01-05 09:00:00 IST"


def test_a_queue_whose_name_cannot_be_paused_offers_no_pause_button(client, conn):
    """procrastinate takes any queue name up to 128 characters (`defer --queue reports/eu`);
    pause takes 1 to 40 of A-Z a-z 0-9 _ . : - (a NOTIFY channel's limit). The page offered its
    Pause button for every queue, and for such a one it led to a 404 or a 400."""
    for queue in ("reports/eu", "x?y#z", "default"):
        conn.execute(
            "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW(%s, 'prune_finished_jobs', 0, NULL, NULL,"
            " '{}'::jsonb, NULL)::procrastinate_job_to_defer_v1])",
            (queue,),
        )
    page = client.get("/jobs", headers=OWNER).text
    rows = dict(re.findall(r'<tr data-queue="([^"]*)" data-paused="false">(.*?)</tr>', page, re.S))
    assert set(rows) == {"reports/eu", "x?y#z", "default"}
    assert 'action="/api/queues/default/pause"' in rows["default"]
    for queue in ("reports/eu", "x?y#z"):
        assert "pause-form" not in rows[queue] and "cannot be paused" in rows[queue]


@pytest.mark.parametrize(
    ("headers", "shown"),
    [
        ({"Sec-Fetch-Site": "same-origin"}, True),  # the 303 after one of the page's forms
        ({"Referer": "http://localhost/jobs"}, True),  # a browser without Fetch metadata
        ({}, False),
        ({"Sec-Fetch-Site": "cross-site", "Referer": "http://localhost/jobs"}, False),  # a link elsewhere
        ({"Sec-Fetch-Site": "none"}, False),  # typed, or opened from a mail
        ({"Referer": "https://evil.example/"}, False),
    ],
)
def test_a_notice_shows_only_on_the_way_back_from_the_pages_own_form(client, conn, headers, shown):
    """`/jobs?notice=...` printed any 300 characters a link chose on the owner's page, as Tally's own
    word ("ADMIN_TOKEN rotated, log in again at https://..."): a notice is the outcome of an action,
    which comes back from Tally's own form."""
    text = "ADMIN_TOKEN rotated: log in again at https://tally-login.example.net"
    for address in ("/jobs", f"/jobs/{make_failed_job(conn)}"):
        page = client.get(address, {"notice": text}, headers={**OWNER, **headers}).text
        assert (text in page) is shown and ('id="notice"' in page) is shown


class MarkupErrors(html.parser.HTMLParser):
    """The end tags an HTML5 parser finds nothing open for (html5lib's unexpected-end-tag), with
    the one rule of HTML5 that makes a balanced-looking page stray: a block such as a form, a
    table or a div ends the paragraph it is put in. The project has no html5lib to ask."""

    VOID = frozenset(
        {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
    )
    ENDS_A_PARAGRAPH = frozenset(
        {"address", "div", "dl", "form", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "ol", "p", "pre"}
        | {"section", "table", "ul", "nav", "header", "footer", "main", "fieldset", "details"}
    )

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self.ENDS_A_PARAGRAPH and "p" in self.open:
            del self.open[self.open.index("p") :]
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag not in self.open:
            self.errors.append(f"unexpected end tag </{tag}> at line {self.getpos()[0]}")
            return
        del self.open[len(self.open) - 1 - self.open[::-1].index(tag) :]


def markup_errors(page: str) -> list[str]:
    parser = MarkupErrors()
    parser.feed(page)
    parser.close()
    return parser.errors


def test_the_jobs_page_parses_without_a_stray_tag(client, conn):
    """The bulk Retry and Cancel forms sat in a <p>, which a form ends: its </p> was left over."""
    assert markup_errors("<p><form></form></p>") == [
        "unexpected end tag </p> at line 1"
    ]  # the checker sees it
    failed = make_failed_job(conn)
    defer_by_sql(conn, "cleanup_old_page_views")
    for address in ("/jobs", "/jobs?status=failed", f"/jobs/{failed}"):
        assert markup_errors(client.get(address, headers=OWNER).text) == [], address


def test_the_task_filter_lists_every_task_before_it_ever_ran(client, conn):
    """On a fresh database the Task dropdown left out rebuild_rollups and send_reports: it listed
    the periodic tasks and those with jobs, not the tasks the app defines."""
    defer_by_sql(conn, "a_task_since_removed")  # a job of an older release still names its task
    page = client.get("/jobs", headers=OWNER)
    options = [
        option["value"] for option in page.html.find("select", attrs={"name": "task"}).find_all("option")
    ]
    own = {name for name in jobs.app.tasks if "." not in name and ":" not in name}
    assert {"rebuild_rollups", "send_reports", "rollup_page_views"} <= own
    assert options == ["", *sorted(own | {"a_task_since_removed"})]


def test_cancelling_every_job_of_a_filter_asks_for_a_tick_first(client):
    """One click on the bulk cancel with no filter cancelled or aborted every job; the pages
    have no script, so the form asks for a box ticked (unnamed: nothing more is sent)."""
    page = client.get("/jobs", headers=OWNER).html
    box = page.find("form", id="bulk-cancel").find("input", type="checkbox")
    assert box.has_attr("required") and not box.has_attr("name")
    assert "no filter is set" in page.find("form", id="bulk-cancel").text
    filtered = client.get("/jobs", {"status": "todo"}, headers=OWNER).html.find("form", id="bulk-cancel")
    assert filtered.find("input", type="checkbox").has_attr("required") and "no filter" not in filtered.text


# The view's definition before migration 0045 (0003's, which sorted every failed job): its
# rows are what the view must still give.
RECENT_FAILURES_BEFORE_0045 = re.search(
    r"CREATE VIEW tally_recent_failures AS\n(.*?);",
    (ROOT / "migrations" / "0003_inspection_views.sql").read_text(),
    re.S,
).group(1)


@pytest.mark.parametrize(("jobs_count", "seed"), [(30, 1), (120, 2), (400, 3)])
def test_recent_failures_are_the_rows_the_view_gave_before_it_read_events_newest_first(
    conn, jobs_count, seed
):
    """Failed jobs with one or more 'failed' events (some at the same time), failed ones without
    (their events pruned), failed then retried, and errors; fewer than 50 with an event, and
    more."""
    import random

    rng = random.Random(seed)
    defer_by_sql(conn, "cleanup_old_page_views", jobs_count)
    job_ids = [row[0] for row in conn.execute("SELECT id FROM procrastinate_jobs ORDER BY id")]
    times = [f"2026-12-0{day} {hour:02}:00:00+00" for day in range(1, 4) for hour in (0, 6, 12)]
    for job_id in job_ids:
        status = rng.choice(["failed", "failed", "failed", "succeeded", "todo"])
        conn.execute(
            "UPDATE procrastinate_jobs SET status = %s::procrastinate_job_status WHERE id = %s",
            (status, job_id),
        )
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            conn.execute(
                "INSERT INTO procrastinate_events (job_id, type, at) VALUES (%s, 'failed', %s)",
                (job_id, rng.choice(times)),
            )
        if rng.random() < 0.5:
            conn.execute(
                "INSERT INTO tally_job_errors (job_id, attempt, error) VALUES (%s, 1, %s)",
                (job_id, f"RuntimeError: {job_id}"),
            )
    expected = conn.execute(RECENT_FAILURES_BEFORE_0045).fetchall()
    assert conn.execute("SELECT * FROM tally_recent_failures").fetchall() == expected
    assert len(expected) == min(
        50, conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE status = 'failed'").fetchone()[0]
    )
