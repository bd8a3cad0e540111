"""The web process through its real WSGI app (WebTest), on the session's database.

`client` is the owner (it sends the admin token on every request); who may read what
without it is in tests/test_auth.py."""

from __future__ import annotations

import datetime
import json
import logging
import time
import urllib.parse

import bottle
import psycopg
import pytest
import webtest

import jobs
from tally.config import from_env
from tally.db import web_pool
from tally.web.app import build_app
from tests.conftest import PATH_VIEWS, wait_until

TOKEN = "s3cret-token"
OWNER = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}


def make_client(database_url: str, pool, owner: bool = False, **env: str) -> webtest.TestApp:
    """The app with `env`; `owner=True` sends the admin token on every request."""
    settings = from_env({"DATABASE_URL": database_url, **env}, process_type="web")
    return webtest.TestApp(build_app(settings, pool, jobs.app), extra_environ=OWNER if owner else None)


@pytest.fixture
def client(database_url, pool) -> webtest.TestApp:
    return make_client(database_url, pool, owner=True, ADMIN_TOKEN=TOKEN)


def stored(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM page_views").fetchone()[0]


def roll_up(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT tally_rollup_page_views()").fetchone()[0]


# --- recording views -------------------------------------------------------------------


def test_one_view_is_stored(client, conn):
    response = client.post_json("/api/pageviews", {"path": "/pricing", "referrer": "https://example.com/"})
    assert response.status_int == 201 and response.json == {"stored": 1}
    assert conn.execute("SELECT path, referrer FROM page_views").fetchall() == [
        ("/pricing", "https://example.com/")
    ]


def test_a_referrer_is_stored_as_the_trackers_are(client, conn):
    """No user name, query or fragment: they can carry people's data (a server's referrer was
    stored as sent, `?email=bob@example.com` and all)."""
    view = {"path": "/a", "referrer": "https://u:p@Ref.Test/x?email=bob@example.com#frag"}
    client.post_json("/api/pageviews", [view, {"path": "/b", "referrer": ""}], status=201)
    assert conn.execute("SELECT referrer FROM page_views ORDER BY path").fetchall() == [
        ("https://ref.test/x",),
        (None,),
    ]


def test_a_batch_is_stored_whole(client, conn):
    batch = [{"path": f"/p{n}"} for n in range(1000)]
    response = client.post_json("/api/pageviews", batch)
    assert response.status_int == 201 and response.json == {"stored": 1000}
    assert stored(conn) == 1000


def test_paths_with_quotes_sql_and_unicode_are_stored_as_browsers_send_them(client, conn):
    """Quotes and SQL literally; characters past ASCII and spaces percent-encoded (tally/paths.py)."""
    paths = {
        "/it's": "/it's",
        '/"quoted"': "/%22quoted%22",
        "/';DROP TABLE page_views;--": "/';DROP%20TABLE%20page_views;--",
        "/日本語/ページ": "/%E6%97%A5%E6%9C%AC%E8%AA%9E/%E3%83%9A%E3%83%BC%E3%82%B8",
        "/emoji/🙂": "/emoji/%F0%9F%99%82",
        "/" + "x" * 2047: "/" + "x" * 2047,
    }
    client.post_json("/api/pageviews", [{"path": path} for path in paths], status=201)
    assert sorted(row[0] for row in conn.execute("SELECT path FROM page_views")) == sorted(paths.values())


GOOD = {"path": "/ok"}


@pytest.mark.parametrize(
    ("body", "content_type", "status", "says"),
    [
        (json.dumps(GOOD), "text/plain", 415, "application/json"),
        (json.dumps(GOOD), "", 415, "application/json"),
        (json.dumps(GOOD), "application/x-www-form-urlencoded", 415, "application/json"),
        ("{", "application/json", 400, "not valid JSON"),
        ("", "application/json", 400, "not valid JSON"),
        ("5", "application/json", 400, "JSON object"),
        ("null", "application/json", 400, "JSON object"),
        ('"/a"', "application/json", 400, "JSON object"),
        ("[]", "application/json", 400, "empty"),
        (json.dumps([GOOD] * 1001), "application/json", 400, "at most 1000"),
        (json.dumps([GOOD, 7]), "application/json", 400, "Item 1"),
        (json.dumps({}), "application/json", 400, '"path" is missing'),
        (json.dumps({"path": 5}), "application/json", 400, '"path" must be a string'),
        (json.dumps({"path": None}), "application/json", 400, '"path" must be a string'),
        (json.dumps({"path": "pricing"}), "application/json", 400, 'start with "/"'),
        (json.dumps({"path": "/" + "x" * 2048}), "application/json", 400, "longer than 2048"),
        (json.dumps({"path": "/a\u0000b"}), "application/json", 400, "control character"),
        (json.dumps({"path": "/a\nb"}), "application/json", 400, "control character"),
        (json.dumps({"path": "/a", "referrer": 3}), "application/json", 400, '"referrer" must be a string'),
        (json.dumps({"path": "/a", "referrer": "r" * 2049}), "application/json", 400, "longer than 2048"),
        (
            json.dumps({"path": "/a", "referrer": "not a url"}),
            "application/json",
            400,
            '"referrer" must be a URL',
        ),
        (json.dumps({"path": "/a", "referer": "x"}), "application/json", 400, 'Unknown field "referer"'),
        ('{"path": "/\\ud800"}', "application/json", 400, "not valid Unicode"),
        (b'{"path": "/\xff"}', "application/json", 400, "UTF-8"),
        ("[" * 100000 + "]" * 100000, "application/json", 400, "nested too deeply"),
        ('{"path": ' + "1" * 5000 + "}", "application/json", 400, "number with too many digits"),
        (json.dumps([GOOD, GOOD, {"path": "bad"}]), "application/json", 400, "Item 2"),
        (json.dumps([{"path": "/" + "x" * 2000}] * 600), "application/json", 413, "larger than"),
    ],
)
def test_bad_input_is_refused_clearly_and_stores_nothing(client, conn, body, content_type, status, says):
    body = body if isinstance(body, bytes) else body.encode("utf-8")
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/api/pageviews", body, headers=headers, status="*")
    assert response.status_int == status
    assert response.content_type == "application/json"
    assert says in response.json["error"]
    assert stored(conn) == 0


def test_json_content_type_with_charset_is_accepted(client):
    client.post(
        "/api/pageviews",
        json.dumps(GOOD),
        headers={"Content-Type": "application/json; charset=utf-8"},
        status=201,
    )


# --- stats -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "days", ["0", "367", "abc", "1.5", "-1", "", " 7", "7\n", "1e2", "99999999999999999999"]
)
def test_stats_refuses_bad_days(client, days):
    response = client.get("/api/stats", {"days": days}, status=400)
    assert "days" in response.json["error"]


def test_stats_refuses_days_given_twice(client):
    assert client.get("/api/stats?days=3&days=4", status=400).json["error"]


def test_stats_default_window_is_30_zero_filled_days(client):
    body = client.get("/api/stats").json
    assert len(body["daily"]) == 30 and body["days"] == 30
    assert all(day["views"] == 0 for day in body["daily"])
    assert body["total_views"] == 0 and body["top_paths"] == [] and body["retention_days"] == 30
    today = datetime.datetime.now(datetime.UTC).date()
    assert body["daily"][-1]["day"] == today.isoformat()
    assert body["daily"][0]["day"] == (today - datetime.timedelta(days=29)).isoformat()
    assert "generated_at" in body


def direct_stats(conn: psycopg.Connection, days: int) -> dict:
    """The naive answer, straight from page_views."""
    daily = dict(
        conn.execute(
            "SELECT (viewed_at AT TIME ZONE 'UTC')::date::text, count(*) FROM page_views"
            " WHERE viewed_at >= (now() AT TIME ZONE 'UTC')::date - %s + 1"
            "   AND viewed_at < (now() AT TIME ZONE 'UTC')::date + 1 GROUP BY 1",
            (days,),
        ).fetchall()
    )
    last_24h = conn.execute(
        "SELECT count(*) FROM page_views"
        " WHERE viewed_at >= now() - interval '24 hours' AND viewed_at <= now()"
    ).fetchone()[0]
    top = conn.execute(
        "SELECT path, count(*) FROM page_views WHERE viewed_at >= (now() AT TIME ZONE 'UTC')::date - %s + 1"
        " AND viewed_at < (now() AT TIME ZONE 'UTC')::date + 1 GROUP BY path ORDER BY 2 DESC, 1 LIMIT 10",
        (days,),
    ).fetchall()
    return {"daily": daily, "views_last_24h": last_24h, "top_paths": [list(row) for row in top]}


def assert_exact(client, conn, days: int) -> dict:
    body = client.get("/api/stats", {"days": str(days)}).json
    expected = direct_stats(conn, days)
    assert {d["day"]: d["views"] for d in body["daily"] if d["views"]} == expected["daily"]
    assert body["total_views"] == sum(expected["daily"].values())
    assert body["views_last_24h"] == expected["views_last_24h"]
    assert [[p["path"], p["views"]] for p in body["top_paths"]] == expected["top_paths"]
    return body


def test_stats_match_a_direct_count_across_rollups_and_the_tail(client, conn):
    conn.execute(
        "INSERT INTO page_views (path, viewed_at)"
        " SELECT '/p' || (n % 13), now() - (n % 2000) * interval '17 minutes' FROM generate_series(1, 5000) n"
    )
    assert_exact(client, conn, 30)
    assert roll_up(conn) == 5000
    conn.execute(
        "INSERT INTO page_views (path, viewed_at)"
        " SELECT '/q' || (n % 5), now() - (n % 100) * interval '29 minutes' FROM generate_series(1, 700) n"
    )
    for days in (1, 2, 7, 30, 366):
        assert_exact(client, conn, days)
    roll_up(conn)
    body = assert_exact(client, conn, 30)
    assert body["total_views"] > 0
    hourly = conn.execute("SELECT sum(views) FROM page_view_buckets").fetchone()[0]
    assert hourly == stored(conn)


def test_views_dated_ahead_are_not_of_the_last_24_hours_rolled_up_or_not(client, conn):
    """`views_last_24h` counts the views of the 24 hours to now: a clock far off (a view dated
    in 3 hours, 2 days, 2 years) counted in it from the tail, and those of later today once
    rolled up, so the figure moved with the rollup (4, then 2, for none)."""
    conn.execute(
        "INSERT INTO page_views (path, viewed_at) VALUES ('/now', now() - interval '1 minute'),"
        " ('/in-a-minute', now() + interval '1 minute'), ('/later', now() + interval '3 hours'),"
        " ('/ahead', now() + interval '2 days'), ('/far', now() + interval '2 years')"
    )
    for _ in range(2):
        filtered = client.get("/api/stats", {"days": "1", "path": "/now"}).json["views_last_24h"]
        assert assert_exact(client, conn, 1)["views_last_24h"] == 1 == filtered
        roll_up(conn)


def test_a_view_committed_after_a_later_one_was_rolled_up_is_counted_once(client, conn, database_url):
    with psycopg.connect(database_url) as slow:  # a transaction that commits late
        slow.execute("INSERT INTO page_views (path) VALUES ('/late')")
        client.post_json("/api/pageviews", {"path": "/early"}, status=201)  # commits first
        roll_up(conn)
        body = client.get("/api/stats").json
        assert body["total_views"] == 1  # /late is not committed yet
        slow.commit()
    assert assert_exact(client, conn, 30)["total_views"] == 2
    roll_up(conn)
    assert assert_exact(client, conn, 30)["total_views"] == 2
    roll_up(conn)
    assert conn.execute("SELECT sum(views) FROM page_view_buckets").fetchone()[0] == 2
    assert conn.execute(PATH_VIEWS).fetchone()[0] == 2


def test_a_new_view_shows_in_stats_at_once(client):
    client.post_json("/api/pageviews", {"path": "/fresh"})
    body = client.get("/api/stats?days=1").json
    assert body["total_views"] == 1 and body["views_last_24h"] == 1
    assert body["top_paths"] == [{"path": "/fresh", "views": 1, "visitors": 0}]


def test_rollups_outlive_the_raw_views(client, conn):
    conn.execute("INSERT INTO page_views (path, viewed_at) VALUES ('/old', now() - interval '200 days')")
    roll_up(conn)
    conn.execute("DELETE FROM page_views")  # what cleanup does after RETENTION_DAYS
    body = client.get("/api/stats?days=366").json
    assert body["total_views"] == 1 and body["top_paths"] == [{"path": "/old", "views": 1, "visitors": 0}]


# --- health --------------------------------------------------------------------------------


def test_health_reports_database_workers_and_clock(client):
    body = client.get("/api/health").json
    assert body["status"] == "ok" and body["database"] == "ok" and body["dyno"] == "web.1"
    assert {"workers_alive", "worker_heartbeat_age_seconds", "clock_last_defer_age_seconds"} <= set(body)


def test_health_checks_at_once_share_one_read_and_each_answers(client, database_url):
    """Checks that arrive during one read share its result; each took keys out of it, and all
    but the first answered 500 (a KeyError). A locked page_views makes the read last 0.3 s."""
    import concurrent.futures

    with psycopg.connect(database_url) as locker:
        locker.execute("LOCK TABLE page_views IN ACCESS EXCLUSIVE MODE")
        with concurrent.futures.ThreadPoolExecutor(4) as checks:
            answers = list(checks.map(lambda _: client.get("/api/health", expect_errors=True), range(4)))
        locker.rollback()
    assert [answer.status_int for answer in answers] == [200] * 4
    assert all(answer.json["database"] == "ok" for answer in answers)


def test_health_says_the_database_is_full_when_every_connection_slot_is_taken(database_url):
    """A server whose max_connections someone else holds is up: health said "unreachable"."""
    held: list[psycopg.Connection] = []
    try:
        while len(held) < 1000:
            try:
                held.append(psycopg.connect(database_url))
            except psycopg.OperationalError as error:
                assert "too many clients" in str(error)
                break
        settings = from_env({"DATABASE_URL": database_url, "ADMIN_TOKEN": TOKEN}, process_type="web")
        with web_pool(settings) as full:
            client = webtest.TestApp(build_app(settings, full, jobs.app))
            wait_until(lambda: full.last_connect_error, 5, 0.05, "a failed connect")
            database = client.get("/api/health", status=503).json["database"]
            assert database.startswith("full") and "max_connections" in database
            assert "postgres" not in database and "/" not in database  # no address, no user
            # A request says it too, not "unreachable": the server answered.
            refused = client.post_json("/api/pageviews", {"path": "/full"}, status=503).json["error"]
            assert "no free connection" in refused and "max_connections" in refused
    finally:
        for connection in held:
            connection.close()


def test_a_pool_whose_connections_are_all_in_use_says_busy_not_unreachable(database_url, caplog):
    """Four requests that each held one of the web's connections and waited for another (a
    cancel, before its fix) were logged "database unreachable: couldn't get a connection": an
    audit went looking for a database fault. The database is up; every connection was lent."""
    settings = from_env({"DATABASE_URL": database_url, "ADMIN_TOKEN": TOKEN}, process_type="web")
    with web_pool(settings) as pool:
        client = webtest.TestApp(build_app(settings, pool, jobs.app), extra_environ=OWNER)
        pool.wait()
        held = [pool.getconn() for _ in range(pool.max_size)]
        try:
            caplog.set_level(logging.WARNING)
            refused = client.post_json("/api/pageviews", GOOD, status=503)
            assert "stayed in use" in refused.json["error"] and refused.headers["Retry-After"] == "1"
            assert client.get("/api/stats", status=503).json["error"] == refused.json["error"]
            busy = f"busy: every one of this process's {pool.max_size} connections was in use"
            assert client.get("/api/health", status=503).json["database"] == busy
            said = [record.getMessage() for record in caplog.records]
            assert any("database busy" in line for line in said) and not any(
                "unreachable" in line for line in said
            )
        finally:
            for conn in held:
                pool.putconn(conn)
        assert client.get("/api/health").json["database"] == "ok"


def test_health_answers_503_quickly_when_the_database_is_unreachable(database_url):
    bad_url = "postgresql://postgres@/postgres?host=/nonexistent-tally-socket-dir"
    settings = from_env({"DATABASE_URL": bad_url, "ADMIN_TOKEN": TOKEN}, process_type="web")
    with web_pool(settings) as unreachable:
        client = webtest.TestApp(build_app(settings, unreachable, jobs.app), extra_environ=OWNER)
        started = time.monotonic()
        response = client.get("/api/health", status=503)
        assert time.monotonic() - started < 2.0
        assert response.json["database"] == "unreachable"
        assert client.get("/api/stats", status=503).json["error"]
        assert client.post_json("/api/pageviews", GOOD, status=503).json["error"]


def test_deferring_a_job_without_the_database_is_a_503_not_a_500(database_url):
    """POST /api/jobs/<task> defers through procrastinate's connector, which wraps the pool's
    timeout in its own ConnectorException: the route answered 500 "Internal error"."""
    bad_url = "postgresql://postgres@/postgres?host=/nonexistent-tally-socket-dir"
    settings = from_env({"DATABASE_URL": bad_url, "ADMIN_TOKEN": TOKEN}, process_type="web")
    connector = jobs.app.connector.get_sync_connector()
    kept = connector._pool, connector._pool_externally_set  # procrastinate keeps the first pool it got
    connector._pool, connector._pool_externally_set = None, False
    try:
        with web_pool(settings) as unreachable:
            client = webtest.TestApp(build_app(settings, unreachable, jobs.app), extra_environ=OWNER)
            error = client.post("/api/jobs/rollup_page_views", status=503).json["error"]
            assert "unreachable" in error
    finally:
        connector._pool, connector._pool_externally_set = kept


def test_a_query_past_the_statement_timeout_is_a_503_that_says_why(database_url, conn, monkeypatch):
    """Not "the database is unreachable": it is there, and the answer was too slow to count."""
    from tally import db

    conn.execute(
        "INSERT INTO page_views (path, country, viewed_at) SELECT '/p' || n % 50, 'DE', now() - n * "
        "interval '1 minute' FROM generate_series(1, 5000) n"
    )
    monkeypatch.setitem(db.WEB_SESSION_SETTINGS, "statement_timeout", "1ms")
    settings = from_env({"DATABASE_URL": database_url, "ADMIN_TOKEN": TOKEN}, process_type="web")
    with web_pool(settings) as hurried:
        client = webtest.TestApp(build_app(settings, hurried, jobs.app), extra_environ=OWNER)
        error = client.get("/api/stats", {"country": "DE"}, status=503).json["error"]
        assert "took longer than" in error and "narrower filter" in error and "unreachable" not in error
        # Unfiltered, only the views not yet rolled up are counted one by one: no filter to narrow.
        unfiltered = client.get("/api/stats", status=503)
        assert "rollup is behind" in unfiltered.json["error"] and "filter" not in unfiltered.json["error"]
        assert unfiltered.headers["Retry-After"] == "60"


def test_a_table_locked_by_someone_else_is_a_503_within_the_lock_timeout(client, database_url):
    with psycopg.connect(database_url) as locker:
        locker.execute("LOCK TABLE page_view_day_values IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        error = client.get("/api/stats", status=503).json["error"]
        assert time.monotonic() - started < 3.0
        assert "locked" in error and "unreachable" not in error
    assert client.get("/api/stats").json["total_views"] == 0


def test_a_view_sent_while_its_table_is_locked_is_a_503_that_says_nothing_was_stored(client, database_url):
    """The answer said "A table this reads is locked" to a sender of a view."""
    with psycopg.connect(database_url) as locker:
        locker.execute("LOCK TABLE page_views IN ACCESS EXCLUSIVE MODE")
        error = client.post_json("/api/pageviews", {"path": "/a"}, status=503).json["error"]
        assert "table this writes is locked" in error and "nothing was changed" in error
    assert client.get("/api/stats").json["total_views"] == 0


# --- jobs ------------------------------------------------------------------------------------


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    ("query", "body", "content_type"),
    [
        ("?period=monthly", b"", None),
        ("", b'{"period": "monthly"}', "application/json"),
        ("", b"[1, 2]", "application/json"),
        ("", b"not json", "application/json"),
        ("", b"[" * 5000 + b"]" * 5000, "application/json"),  # json.loads: RecursionError, a 500
        ("", b'{"a": ' * 5000 + b"1" + b"}" * 5000, "application/json"),
        ("", b"period=monthly", "application/x-www-form-urlencoded"),
    ],
)
def test_a_defer_sent_arguments_is_refused_and_defers_nothing(client, conn, query, body, content_type):
    """Arguments were dropped: the job was deferred with none, and the answer said 202."""
    headers = {**auth(), **({"Content-Type": content_type} if content_type else {})}
    response = client.post(f"/api/jobs/send_reports{query}", body, headers=headers, status=400)
    error = response.json["error"]
    assert "no arguments" in error and "procrastinate --app=jobs.app defer" in error
    assert conn.execute("SELECT count(*) FROM procrastinate_jobs").fetchone()[0] == 0
    as_json = {**auth(), "Content-Type": "application/json"}
    client.post("/api/jobs/send_reports", b"{}", headers=as_json, status=202)  # nothing sent: deferred


@pytest.mark.parametrize("body", [b"{ }", b"{\n}\n", b" null "])
def test_a_defer_sent_an_empty_object_however_spaced_defers_its_job(client, conn, body):
    """`{ }` sends no argument, as `{}` does: it was refused, saying 'a body' was sent."""
    headers = {**auth(), "Content-Type": "application/json"}
    client.post("/api/jobs/send_reports", body, headers=headers, status=202)
    assert conn.execute("SELECT count(*) FROM procrastinate_jobs").fetchone()[0] == 1


def test_a_defer_refused_names_what_was_sent_in_words(client):
    headers = {**auth(), "Content-Type": "application/json"}

    def refusal(body: bytes) -> str:
        return client.post("/api/jobs/send_reports", body, headers=headers, status=400).json["error"]

    assert "the argument 'period' was sent" in refusal(b'{"period": "monthly"}')
    assert "a JSON body that is not an object of arguments was sent" in refusal(b"[1, 2]")


def test_defer_a_job_by_task_name(client, conn):
    response = client.post("/api/jobs/cleanup_old_page_views", headers=auth(), status=202)
    job_id = response.json["job_id"]
    assert conn.execute(
        "SELECT task_name, status::text FROM procrastinate_jobs WHERE id = %s", (job_id,)
    ).fetchone() == ("cleanup_old_page_views", "todo")
    job = client.get(f"/api/jobs/{job_id}").json
    assert job["id"] == job_id and job["task"] == "cleanup_old_page_views" and job["status"] == "todo"
    assert job["attempts"] == 0 and job["queue"] == "default" and job["deferred_at"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 403),
        ({"Authorization": "Basic abc"}, 401),
        ({"Authorization": "Bearer"}, 401),
        ({"Authorization": f"Bearer {TOKEN}x"}, 403),
    ],
)
def test_admin_endpoints_need_the_token(database_url, pool, conn, headers, status):
    client = make_client(database_url, pool, ADMIN_TOKEN=TOKEN)
    client.post("/api/jobs/cleanup_old_page_views", headers=headers, status=status)
    client.post("/api/jobs/1/retry", headers=headers, status=status)
    assert conn.execute("SELECT count(*) FROM procrastinate_jobs").fetchone()[0] == 0


def test_admin_endpoints_refuse_everyone_without_admin_token(database_url, pool, conn):
    client = make_client(database_url, pool)
    for headers in ({}, auth(), auth("")):
        response = client.post("/api/jobs/cleanup_old_page_views", headers=headers, status=403)
        assert "ADMIN_TOKEN" in response.json["error"]
    assert conn.execute("SELECT count(*) FROM procrastinate_jobs").fetchone()[0] == 0


def test_unknown_task_and_job_are_404(client):
    assert "no task" in client.post("/api/jobs/drop_everything", headers=auth(), status=404).json["error"]
    client.post("/api/jobs/procrastinate.builtin_tasks.remove_old_jobs", headers=auth(), status=404)
    client.get("/api/jobs/999999", status=404)
    assert client.get("/api/jobs/abc", status=404).json["error"]
    client.post("/api/jobs/999999/retry", headers=auth(), status=404)


def test_the_job_and_queue_routes_refuse_a_parameter_they_do_not_take(client, conn):
    """`/jobs` refuses unknown parameters; retry, cancel, a job, the queue and pause took any
    (`?x=1` answered 202 as if it were absent), and changed what they would without it."""
    failed = make_failed_job(conn)
    for method, path in [
        ("get", "/api/jobs"),
        ("get", f"/api/jobs/{failed}"),
        ("post", f"/api/jobs/{failed}/retry"),
        ("post", f"/api/jobs/{failed}/cancel"),
        ("post", "/api/queues/reports/pause"),
        ("post", "/api/queues/reports/resume"),
    ]:
        refused = getattr(client, method)(f"{path}?force=1", headers=auth(), status=400).json["error"]
        assert refused == "Unknown parameter force: this route takes no query parameters.", path
    assert (
        conn.execute("SELECT status FROM procrastinate_jobs WHERE id = %s", (failed,)).fetchone()[0]
        == "failed"
    )
    assert conn.execute("SELECT count(*) FROM tally_paused_queues").fetchone()[0] == 0
    client.post(f"/api/jobs/{failed}/retry", headers=auth(), status=202)


def test_a_job_id_in_other_scripts_digits_names_no_job(client, conn):
    """Python's int() and Bottle's `\\d` read U+0661 (Arabic-Indic) and U+FF11 (fullwidth) as 1: a job
    id is ASCII digits, as the API description says, so those name no job and act on none."""
    failed = make_failed_job(conn)
    for zero in (0x0660, 0xFF10):  # Arabic-Indic, fullwidth
        quoted = urllib.parse.quote("".join(chr(zero + int(digit)) for digit in str(failed)))
        client.get(f"/api/jobs/{quoted}", status=404)
        client.get(f"/jobs/{quoted}", status=404)
        client.post(f"/api/jobs/{quoted}/retry", headers=auth(), status=404)
    status = conn.execute("SELECT status FROM procrastinate_jobs WHERE id = %s", (failed,)).fetchone()[0]
    assert status == "failed"
    client.get(f"/api/jobs/{failed}", status=200)


def make_failed_job(conn: psycopg.Connection) -> int:
    with jobs.app.open():
        job_id = jobs.app.tasks["prune_finished_jobs"].defer()
    worker_id = conn.execute("SELECT worker_id FROM procrastinate_register_worker_v1()").fetchone()[0]
    conn.execute("SELECT procrastinate_fetch_job_v2(NULL, %s)", (worker_id,))
    conn.execute("SELECT procrastinate_finish_job_v1(%s, 'failed', false)", (job_id,))
    conn.execute(
        "INSERT INTO tally_job_errors (job_id, attempt, error) VALUES (%s, 1, 'RuntimeError: boom')",
        (job_id,),
    )
    return job_id


def test_a_finished_job_shows_the_worker_that_ran_it(client, conn):
    """Only a job waiting again hides its last attempt's worker: a failed or succeeded one
    showed none (`worker_id` null, "none now" on its page) once the waiting case was fixed."""
    failed = make_failed_job(conn)
    (ran_on,) = conn.execute("SELECT worker_id FROM procrastinate_jobs WHERE id = %s", (failed,)).fetchone()
    assert ran_on is not None
    assert client.get(f"/api/jobs/{failed}").json["worker_id"] == ran_on
    page = client.get(f"/jobs/{failed}", headers={**auth(), "Accept": "text/html"}).text
    assert f"worker {ran_on}" in page


def test_queue_summary_and_retrying_a_failed_job(client, conn):
    failed = make_failed_job(conn)
    client.post("/api/jobs/retry_stalled_jobs", headers=auth(), status=202)
    summary = client.get("/api/jobs").json
    assert summary["by_status"]["failed"] == 1 and summary["by_status"]["todo"] == 1
    assert summary["by_task"]["prune_finished_jobs"] == {"failed": 1}
    assert summary["oldest_waiting_age_seconds"] is not None
    assert summary["recent_failures"][0]["id"] == failed
    assert summary["recent_failures"][0]["error"] == "RuntimeError: boom"

    before = client.get(f"/api/jobs/{failed}").json
    assert before["last_error"] == "RuntimeError: boom" and before["finished_at"] and before["started_at"]
    client.post(f"/api/jobs/{failed}/retry", headers=auth(), status=202)
    waiting = client.get(f"/api/jobs/{failed}").json
    assert waiting["status"] == "todo" and waiting["last_error"] == "RuntimeError: boom"
    # Its last attempt's start, end and worker are not the waiting job's (they showed).
    assert (waiting["started_at"], waiting["finished_at"], waiting["worker_id"]) == (None, None, None)
    assert (
        "only failed, cancelled or aborted jobs"
        in client.post(f"/api/jobs/{failed}/retry", headers=auth(), status=409).json["error"]
    )


def test_a_job_waits_from_when_it_became_runnable_not_from_its_first_defer(client, conn):
    """A job deferred an hour ago that failed, and was retried (by hand, or re-queued after its
    worker died, or scheduled for a retry that is now due) has waited since then: the summary,
    /metrics and tally_job_overview had counted from its first defer, so an alert on the oldest
    waiting job fired on every retry of an old job."""
    failed = make_failed_job(conn)
    conn.execute("UPDATE procrastinate_events SET at = at - interval '1 hour' WHERE job_id = %s", (failed,))
    client.post(f"/api/jobs/{failed}/retry", headers=auth(), status=202)
    assert client.get("/api/jobs").json["oldest_waiting_age_seconds"] < 60
    (overview,) = conn.execute(
        "SELECT extract(epoch FROM oldest_waiting) FROM tally_job_overview WHERE status = 'todo'"
    ).fetchone()
    assert overview < 60

    # Due now after a retry scheduled for later: it has waited since it was due.
    conn.execute("UPDATE procrastinate_jobs SET status = 'doing' WHERE id = %s", (failed,))
    conn.execute(
        "SELECT procrastinate_retry_job_v2(%s, now() - interval '2 seconds', NULL, NULL, NULL)", (failed,)
    )
    conn.execute(
        "UPDATE procrastinate_events SET at = at - interval '10 minutes' WHERE job_id = %s", (failed,)
    )
    assert 1 < client.get("/api/jobs").json["oldest_waiting_age_seconds"] < 60


def test_retrying_a_job_whose_queueing_lock_another_waiting_job_holds_is_a_409(client, conn):
    """The web asks for a rollup with queueing_lock="rollup_page_views" (one such job waits at a
    time). One of those cancelled (or failed) while the next waits: retrying it, alone or in bulk,
    broke procrastinate's unique index on waiting jobs' queueing locks, a 500 for both."""
    failed = make_failed_job(conn)
    rollup = jobs.app.tasks["rollup_page_views"].configure(queueing_lock="rollup_page_views")
    with jobs.app.open():
        cancelled = rollup.defer()
        client.post(f"/api/jobs/{cancelled}/cancel", headers=auth(), status=200)
        waiting = rollup.defer()

    error = client.post(f"/api/jobs/{cancelled}/retry", headers=auth(), status=409).json["error"]
    assert "queueing lock" in error and str(waiting) in error
    assert client.post("/api/jobs/bulk/retry", headers=auth(), status=202).json["retried"] == 1
    statuses = dict(conn.execute("SELECT id, status::text FROM procrastinate_jobs").fetchall())
    assert statuses == {cancelled: "cancelled", waiting: "todo", failed: "todo"}

    # Once the waiting one has gone, the cancelled one can wait again.
    client.post(f"/api/jobs/{waiting}/cancel", headers=auth(), status=200)
    client.post(f"/api/jobs/{cancelled}/retry", headers=auth(), status=202)
    # Two of one queueing lock in one bulk retry: the newest waits again, the other is left.
    assert client.post("/api/jobs/bulk/retry", headers=auth(), status=202).json["retried"] == 0
    client.post(f"/api/jobs/{cancelled}/cancel", headers=auth(), status=200)
    assert client.post("/api/jobs/bulk/retry", headers=auth(), status=202).json["retried"] == 1
    statuses = dict(conn.execute("SELECT id, status::text FROM procrastinate_jobs").fetchall())
    assert statuses == {cancelled: "cancelled", waiting: "todo", failed: "todo"}


def test_an_aborted_job_can_be_retried_alone_or_in_bulk(client, conn):
    """A running job aborted (by cancel, or past its time limit) ends `aborted`: it could be
    neither retried (409) nor given a Retry button, only run anew without its arguments."""
    aborted = []
    for _ in range(2):
        with jobs.app.open():
            job_id = jobs.app.tasks["prune_finished_jobs"].defer()
        worker_id = conn.execute("SELECT worker_id FROM procrastinate_register_worker_v1()").fetchone()[0]
        conn.execute("SELECT procrastinate_fetch_job_v2(NULL, %s)", (worker_id,))
        conn.execute("SELECT procrastinate_finish_job_v1(%s, 'aborted', false)", (job_id,))
        aborted.append(job_id)
    assert f'action="/api/jobs/{aborted[1]}/retry"' in client.get(f"/jobs/{aborted[1]}").text
    client.post(f"/api/jobs/{aborted[0]}/retry", headers=auth(), status=202)
    assert client.get(f"/api/jobs/{aborted[0]}").json["status"] == "todo"
    assert client.post("/api/jobs/bulk/retry?status=aborted", headers=auth(), status=202).json["retried"] == 1
    events = conn.execute(
        "SELECT job_id, type::text FROM procrastinate_events WHERE type = 'retried' ORDER BY job_id"
    ).fetchall()
    assert events == [(aborted[0], "retried"), (aborted[1], "retried")]


def test_wrong_method_and_unknown_address_answer_json(client):
    assert client.get("/api/pageviews", status=405).json["error"]
    assert client.get("/nothing-here", status=404).json["error"]
    # Allow names HEAD beside GET, as bottle answers it (it said `Allow: GET`).
    assert client.post("/api/health", status=405).headers["Allow"] == "GET, HEAD"
    assert client.head("/api/health").status_int in (200, 503)


# --- dashboard ---------------------------------------------------------------------------------


def test_dashboard_renders_chart_paths_and_queue_state(client, conn):
    client.post_json("/api/pageviews", [{"path": "/home"}, {"path": "/home"}, {"path": "/<script>"}])
    conn.execute("INSERT INTO page_views (path) VALUES ('/<i>')")  # as given: only SQL stores it so
    make_failed_job(conn)
    page = client.get("/?days=7")
    assert page.content_type == "text/html"
    html = page.text
    assert html.count('class="bar"') == 7
    assert 'data-views="4"' in html
    assert (
        "/home" in html and "/%3Cscript%3E" in html and "<script>" not in html
    )  # stored as browsers send it
    assert 'data-value="/&lt;i&gt;"' in html and "<i>" not in html  # a value escaped where it is one
    assert "RuntimeError: boom" in html
    assert 'http-equiv="refresh"' in html and 'name="viewport"' in html
    assert "http://" not in html and "https://" not in html  # no external assets
    client.get("/?days=0", status=400)


def test_a_dashboard_whose_numbers_took_long_reloads_less_often(client, conn, monkeypatch):
    """Each open tab reloaded every 30 s, however long its numbers took to count: a filter over
    the busiest country of a week at 1M views ran its 3 s count every 30 s per tab."""
    from tally.web.stats import StatsReader

    client.post_json("/api/pageviews", [{"path": "/home"}])
    assert 'http-equiv="refresh" content="30"' in client.get("/?days=7").text
    count = StatsReader.stats_for_window

    def slow_count(self, *args, **kwargs):
        time.sleep(2.0)  # as a count over many views takes: the page's reload follows it
        return count(self, *args, **kwargs)

    monkeypatch.setattr(StatsReader, "stats_for_window", slow_count)
    page = client.get("/?days=7").text
    refresh = int(page.split('http-equiv="refresh" content="')[1].split('"')[0])
    assert refresh >= 40 and f"reloads every {refresh} s" in page


# --- metrics ----------------------------------------------------------------------------------


def test_metrics_expose_queue_workers_clock_and_views(client, conn):
    from prometheus_client.parser import text_string_to_metric_families

    client.post_json("/api/pageviews", [{"path": "/m"}] * 5, status=201)
    client.post("/api/jobs/cleanup_old_page_views", headers=auth(), status=202)
    response = client.get("/metrics")
    assert response.content_type.startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    assert samples[("tally_database_up", ())] == 1
    assert samples[("tally_jobs", (("status", "todo"), ("task", "cleanup_old_page_views")))] == 1
    assert samples[("tally_page_views_recorded_total", ())] == 5
    assert samples[("tally_page_views", ())] == 5
    assert samples[("tally_oldest_waiting_job_age_seconds", ())] >= 0
    assert ("tally_worker_heartbeat_age_seconds", ()) in samples
    assert ("tally_clock_last_defer_age_seconds", ()) in samples


def test_metrics_say_the_database_is_down(database_url):
    from tally.db import web_pool

    settings = from_env(
        {"DATABASE_URL": "postgresql://postgres@/x?host=/nonexistent-tally", "ADMIN_TOKEN": TOKEN},
        process_type="web",
    )
    with web_pool(settings) as unreachable:
        client = webtest.TestApp(build_app(settings, unreachable, jobs.app), extra_environ=OWNER)
        response = client.get("/metrics")
        assert "tally_database_up 0.0" in response.text


def test_an_unmigrated_database_gets_503_naming_the_release_step(database_url):
    name = "unmigrated_web_test"
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    url = psycopg.conninfo.make_conninfo(database_url, dbname=name)
    settings = from_env({"DATABASE_URL": url, "ADMIN_TOKEN": TOKEN}, process_type="web")
    try:
        with web_pool(settings) as empty:
            client = webtest.TestApp(build_app(settings, empty, jobs.app), extra_environ=OWNER)
            assert "migrations" in client.get("/api/health", status=503).json["database"]
            for response in (
                client.get("/api/stats", status=503),
                client.post_json("/api/pageviews", GOOD, status=503),
                client.get("/api/jobs", status=503),
                client.get("/", status=503),
            ):
                assert "python -m migrations" in response.json["error"]
    finally:
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_a_role_that_may_not_write_gets_503_saying_so_not_500(database_url, conn):
    """A read-only credential, a follower's URL as DATABASE_URL, or a Heroku plan over its row
    limit (its INSERT privilege revoked): each write answered 500 "Internal error"."""
    role = "tally_read_only_test"
    conn.execute(f"DROP ROLE IF EXISTS {role}")
    conn.execute(f"CREATE ROLE {role} LOGIN")
    conn.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
    conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    url = psycopg.conninfo.make_conninfo(database_url, user=role)
    settings = from_env({"DATABASE_URL": url, "ADMIN_TOKEN": TOKEN}, process_type="web")
    try:
        with web_pool(settings) as read_only:
            client = webtest.TestApp(build_app(settings, read_only, jobs.app), extra_environ=OWNER)
            for response in (
                client.post_json("/api/pageviews", GOOD, status=503),
                client.post(
                    "/api/collect",
                    json.dumps({"url": "https://example.com/a"}),
                    headers={"Content-Type": "text/plain", "User-Agent": "Mozilla/5.0 (X11) Firefox/128.0"},
                    status=503,
                ),
            ):
                assert "may not write" in response.json["error"], response.json
            # Health answered 200 "ok" while every view was refused.
            assert "may not write" in client.get("/api/health", status=503).json["database"]
            # A read the role may not make is no write refused.
            conn.execute(f"REVOKE SELECT ON procrastinate_jobs FROM {role}")
            assert "may not read a table" in client.get("/api/jobs", status=503).json["error"]
    finally:
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")


@pytest.mark.parametrize(
    ("cause", "says"),
    [
        (psycopg.OperationalError("connection refused"), "unreachable"),
        (psycopg.errors.InsufficientPrivilege("permission denied for table x"), "may not write"),
    ],
)
def test_a_database_error_inside_procrastinate_is_a_503_too(cause, says):
    """A defer (POST /api/jobs/<task>) goes through procrastinate, which wraps the database's
    error in its ConnectorException: with the database down, that answered 500."""
    import procrastinate.exceptions

    from tally.web.responses import database_unavailable

    @database_unavailable
    def defer_a_job():
        try:
            raise cause
        except psycopg.Error as error:
            raise procrastinate.exceptions.ConnectorException() from error

    app = bottle.Bottle()
    app.post("/defer", callback=defer_a_job)
    assert says in webtest.TestApp(app).post("/defer", status=503).json["error"]
