"""Who may read what, through the real WSGI app (WebTest): no login, the admin bearer token,
the login session, share links, the metrics token, public mode, the failed-login limit and
forms sent from other sites. The rule itself is in tally/web/auth.py."""

from __future__ import annotations

import datetime
import hashlib
import html
import http.client
import re
import time
import urllib.parse

import bottle
import itsdangerous
import psycopg
import psycopg_pool
import pytest
import waitress.adjustments
import waitress.parser
import webtest

import jobs
from tally.config import from_env
from tally.web.app import build_app
from tally.web.auth import MAX_FORM_BYTES, Auth
from tally.web.ended_sessions import EndedSessions
from tally.web.failed_logins import FAILED_LOGINS
from tally.web.login import Login
from tally.web.sessions import MAX_RETURN_ADDRESS, SESSION_COOKIE, SESSION_SECONDS, session_serializer
from tests.conftest import free_port
from tests.test_web import make_failed_job

TOKEN = "owner-token-5f2a9c"
SHARE = "share-token-81d3e0"
METRICS = "metrics-token-c47b16"
SAME_SITE = {"Origin": "http://localhost"}  # WebTest's requests go to http://localhost
SECRET_PATH = "/secret-launch-plan"


def app_with(database_url: str, pool, **env: str) -> webtest.TestApp:
    settings = from_env({"DATABASE_URL": database_url, **env}, process_type="web")
    return webtest.TestApp(build_app(settings, pool, jobs.app))


@pytest.fixture
def views(conn: psycopg.Connection) -> int:
    conn.execute(
        "INSERT INTO page_views (path, viewed_at) SELECT %s, now() - (n %% 3) * interval '1 day'"
        " FROM generate_series(1, 37) n",
        (SECRET_PATH,),
    )
    return 37


@pytest.fixture
def client(database_url, pool) -> webtest.TestApp:
    return app_with(database_url, pool, ADMIN_TOKEN=TOKEN, SHARE_TOKEN=SHARE)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def log_in(client: webtest.TestApp, token: str = TOKEN, **headers: str) -> webtest.TestResponse:
    return client.post("/login", {"token": token}, headers={**SAME_SITE, **headers}, status="*")


def set_cookie_header(response: webtest.TestResponse) -> str:
    (header,) = [value for value in response.headers.getall("Set-Cookie") if value.startswith(SESSION_COOKIE)]
    return header


def jobs_count(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM procrastinate_jobs").fetchone()[0]


def assert_no_numbers(response: webtest.TestResponse) -> None:
    assert SECRET_PATH not in response.text and "37" not in response.text
    assert 'id="total-views"' not in response.text and "daily" not in response.text


# --- without a login -------------------------------------------------------------------------


def test_without_a_login_stats_jobs_and_metrics_answer_401_and_no_numbers(client, views, conn):
    make_failed_job(conn)
    for path in ("/api/stats", "/api/stats?days=7", "/api/jobs", "/api/jobs/1", "/api/jobs/abc", "/metrics"):
        response = client.get(path, status=401)
        assert (
            response.content_type == "application/json" and response.headers["WWW-Authenticate"] == "Bearer"
        )
        assert list(response.json) == ["error"]
        assert_no_numbers(response)
        assert "boom" not in response.text
    page = client.get("/", status=401)
    assert page.content_type == "text/html" and 'id="login-form"' in page.text
    assert_no_numbers(page)
    assert "boom" not in page.text and "job-counts" not in page.text
    assert page.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]


def test_health_and_writing_views_stay_open(client, conn):
    assert client.get("/api/health").json["status"] == "ok"
    client.post_json("/api/pageviews", {"path": "/a"}, status=201)
    assert conn.execute("SELECT count(*) FROM page_views").fetchone()[0] == 1
    assert 'id="login-form"' in client.get("/login").text


def test_with_nothing_configured_stats_are_closed_to_everyone(database_url, pool, views):
    client = app_with(database_url, pool)
    assert "ADMIN_TOKEN" in client.get("/api/stats", status=403).json["error"]
    page = client.get("/", status=403)
    assert "ADMIN_TOKEN" in page.text and 'id="login-form"' not in page.text
    assert_no_numbers(page)
    assert "ADMIN_TOKEN" in client.get("/api/jobs", status=403).json["error"]
    assert "METRICS_TOKEN" in client.get("/metrics", status=403).json["error"]
    assert log_in(client).status_int == 403


# --- the admin bearer token ------------------------------------------------------------------


def test_the_admin_bearer_token_opens_every_read(client, views, conn):
    make_failed_job(conn)
    assert client.get("/api/stats", headers=bearer(TOKEN)).json["total_views"] == views
    assert client.get("/api/jobs", headers=bearer(TOKEN)).json["by_status"]["failed"] == 1
    assert "tally_page_views 37.0" in client.get("/metrics", headers=bearer(TOKEN)).text
    page = client.get("/", headers=bearer(TOKEN)).text
    assert SECRET_PATH in page and "RuntimeError: boom" in page and 'id="job-counts"' in page
    assert 'id="logout-form"' not in page  # no session to end


@pytest.mark.parametrize(
    "header", [f"Bearer {TOKEN}x", "Bearer wrong", f"Bearer {SHARE}", f"Bearer {METRICS}"]
)
def test_a_wrong_bearer_token_is_refused(client, views, header):
    for path in ("/api/stats", "/api/jobs", "/metrics"):
        response = client.get(path, headers={"Authorization": header}, status=403)
        assert_no_numbers(response)


# --- logging in ------------------------------------------------------------------------------


def test_logging_in_sets_a_signed_httponly_cookie_and_logging_out_clears_it(client, views, conn):
    page = client.get("/", status=401)
    assert 'action="/login"' in page.text and 'type="password"' in page.text
    response = log_in(client)
    assert response.status_int == 303 and response.headers["Location"].endswith("/")
    cookie = set_cookie_header(response)
    attributes = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite", "max-age", "path", "expires"} <= set(attributes)
    assert attributes["samesite"].lower() == "samesite=lax" and attributes["path"] == "Path=/"
    assert attributes["max-age"] == f"Max-Age={SESSION_SECONDS}" and "secure" not in attributes
    value = cookie.split(";")[0].split("=", 1)[1]
    assert TOKEN not in value and value.count(".") == 2  # payload.timestamp.signature

    assert client.get("/api/stats").json["total_views"] == views
    assert client.get("/api/jobs").json["by_status"]
    assert client.get("/metrics").text.startswith("#")
    dashboard = client.get("/")
    assert dashboard.status_int == 200 and SECRET_PATH in dashboard.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', dashboard.text).group(1)

    # The cookie alone changes nothing: a change needs the bearer token, or the page's form
    # (its CSRF token, from Tally's own origin; tests/test_jobs_page.py).
    client.post("/api/jobs/cleanup_old_page_views", status=403)
    client.post("/api/jobs/1/retry", status=403)
    client.post("/api/jobs/cleanup_old_page_views", {"csrf": "x"}, headers=SAME_SITE, status=403)
    client.post(
        "/api/jobs/cleanup_old_page_views",
        {"csrf": csrf},
        headers={"Origin": "https://evil.example"},
        status=403,
    )
    assert jobs_count(conn) == 0

    response = client.post("/logout", {"csrf": csrf}, headers=SAME_SITE, status=303)
    assert "Max-Age=-1" in set_cookie_header(response) or "Max-Age=0" in set_cookie_header(response)
    assert_no_numbers(client.get("/api/stats", status=401))
    assert_no_numbers(client.get("/", status=401))


def test_the_cookie_is_secure_when_the_request_came_over_https(client):
    cookie = set_cookie_header(log_in(client, **{"X-Forwarded-Proto": "https"}))
    assert "; Secure" in cookie or "; secure" in cookie


def test_a_wrong_or_empty_token_gets_the_form_again_and_no_cookie(client):
    for token, status, says in [("nope", 401, "not the admin token"), ("  ", 400, "Enter the admin token")]:
        response = log_in(client, token)
        assert response.status_int == status and says in response.text
        assert 'id="login-form"' in response.text and "Set-Cookie" not in response.headers
    oversized = client.post("/login", {"token": "x" * 5000}, headers=SAME_SITE, status=413)
    assert "Set-Cookie" not in oversized.headers


def return_field(page: webtest.TestResponse) -> str | None:
    """The page the login form leads to once logged in, as the browser will send it."""
    found = re.search(r'<input type="hidden" name="next" value="([^"]*)">', page.text)
    return html.unescape(found.group(1)) if found else None


@pytest.mark.parametrize(
    "address",
    [
        "/?site=site.test&days=7",
        "/?days=30&site=site.test&path=%2Fa%26b&country=DE",
        "/?days=8&site=example.com&tz=Europe%2FBerlin",  # a report e-mail's dashboard link
        "/jobs/1",
        "/jobs?status=failed",
    ],
)
def test_logging_in_leads_to_the_page_the_login_form_stood_in_for(client, address):
    page = client.get(address, status=401)
    assert return_field(page) == address
    wrong = client.post("/login", {"token": "nope", "next": address}, headers=SAME_SITE, status=401)
    assert return_field(wrong) == address  # the form again, still leading there
    response = client.post("/login", {"token": TOKEN, "next": address}, headers=SAME_SITE, status=303)
    assert response.headers["Location"] == address
    assert "Set-Cookie" in response.headers


def test_the_login_link_leads_back_to_the_page_without_the_share_token(client, views):
    page = client.get(f"/?days=30&share={SHARE}&country=DE")
    link = html.unescape(re.search(r'id="login-link" href="([^"]*)"', page.text).group(1))
    assert urllib.parse.urlsplit(link).path == "/login"
    (address,) = urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)["next"]
    assert address == "/?days=30&country=DE"
    assert return_field(client.get(link)) == address


@pytest.mark.parametrize(
    "address",
    [
        "//evil.example",
        "//evil.example/?days=7",
        "/\\evil.example",
        "/\\/evil.example",
        "https://evil.example/",
        "HTTPS://evil.example",
        "javascript:alert(1)",
        "/\t/evil.example",
        "/\n/evil.example",
        "/\r\nSet-Cookie: tally_session=x",
        " //evil.example",
        "\\\\evil.example",
        "evil.example",
        pytest.param("/" + "a" * 2000, id="2001 characters"),
        "/\u00e9",
        "/ /evil.example",
        pytest.param("", id="empty"),
    ],
)
def test_a_login_leads_to_no_other_site_only_the_dashboard(client, address):
    assert return_field(client.get("/login", {"next": "/?days=7"})) == "/?days=7"  # one of this site's
    assert return_field(client.get("/login", {"next": address})) is None
    response = client.post("/login", {"token": TOKEN, "next": address}, headers=SAME_SITE, status=303)
    assert response.headers["Location"] == "/"


def test_an_address_too_long_to_carry_through_the_form_leads_to_the_dashboard(client):
    longest = "/?days=7&site=" + "a" * (MAX_RETURN_ADDRESS - len("/?days=7&site="))
    assert return_field(client.get(longest, status=401)) == longest
    page = client.get(longest + "a", status=401)
    assert 'id="login-form"' in page.text and return_field(page) is None
    # Its form, with a token of 1,000 characters, is still within what a login form may send.
    form = urllib.parse.urlencode({"token": "t" * 1000, "next": longest.replace("a", "%")})
    assert len(form) < MAX_FORM_BYTES


def forged(admin_token: str, payload: object, age_seconds: float = 0) -> str:
    """A cookie signed like Tally's, `age_seconds` old."""

    class Backdated(itsdangerous.TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time() - age_seconds)

    serializer = session_serializer(admin_token)
    serializer.signer = Backdated
    return serializer.dumps(payload)


@pytest.mark.parametrize(
    "cookie",
    [
        pytest.param(lambda: forged(TOKEN, {"csrf": "x"}, SESSION_SECONDS + 5), id="expired"),
        pytest.param(lambda: forged("another-admin-token", {"csrf": "x"}), id="another ADMIN_TOKEN"),
        pytest.param(lambda: forged(TOKEN, ["csrf"]), id="not a session"),
        pytest.param(lambda: forged(TOKEN, {"csrf": "x"})[:-2] + "AA", id="tampered signature"),
        pytest.param(lambda: "e30" + forged(TOKEN, {"csrf": "x"})[3:], id="tampered payload"),
        pytest.param(lambda: "garbage", id="garbage"),
    ],
)
def test_tampered_expired_or_foreign_cookies_open_nothing(client, views, cookie):
    client.set_cookie(SESSION_COOKIE, cookie())
    assert_no_numbers(client.get("/api/stats", status=401))
    assert_no_numbers(client.get("/", status=401))
    client.get("/api/jobs", status=401)


def test_a_cookie_forged_the_same_way_but_fresh_does_open_stats(client, views):
    # The forging above is right: only what the parameters change makes those cookies fail.
    client.set_cookie(SESSION_COOKIE, forged(TOKEN, {"csrf": "x"}, SESSION_SECONDS - 60))
    assert client.get("/api/stats").json["total_views"] == views


def test_changing_the_admin_token_ends_every_session(database_url, pool, client, views):
    log_in(client)
    cookie = client.cookies[SESSION_COOKIE]
    rotated = app_with(database_url, pool, ADMIN_TOKEN="the-new-admin-token")
    rotated.set_cookie(SESSION_COOKIE, cookie)
    rotated.get("/api/stats", status=401)


# --- forms from other sites (CSRF) ------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://localhost.evil.example"},
        {"Referer": "https://evil.example/localhost"},
        {"Origin": "http://localhost:8080"},
    ],
)
def test_a_login_form_from_another_site_is_refused(client, headers):
    response = client.post("/login", {"token": TOKEN}, headers=headers, status=403)
    assert "own pages" in response.text and "Set-Cookie" not in response.headers


def test_a_same_site_referer_is_enough_without_origin(client):
    assert client.post("/login", {"token": TOKEN}, headers={"Referer": "http://localhost/"}).status_int == 303


def test_logout_needs_this_sessions_form_from_this_site(client, views):
    log_in(client)
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/").text).group(1)
    client.post("/logout", {"csrf": csrf}, headers={"Origin": "https://evil.example"}, status=403)
    client.post("/logout", {"csrf": csrf + "x"}, headers=SAME_SITE, status=403)
    client.post("/logout", {}, headers=SAME_SITE, status=403)
    assert client.get("/api/stats").json["total_views"] == views  # still logged in
    client.post("/logout", {"csrf": csrf}, headers=SAME_SITE, status=303)
    client.get("/api/stats", status=401)


def dashboard_csrf(client: webtest.TestApp) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', client.get("/").text).group(1)


def test_a_copy_of_the_cookie_opens_nothing_after_logout_on_any_dyno(database_url, pool, client, views, conn):
    """Logging out ends the session on the server: a copy of its cookie (taken from the browser
    before) is refused by this web process and by another one (a second dyno's app)."""
    log_in(client)
    copy = client.cookies[SESSION_COOKIE]
    other_dyno = app_with(database_url, pool, ADMIN_TOKEN=TOKEN)
    other_dyno.set_cookie(SESSION_COOKIE, copy)
    assert other_dyno.get("/api/stats").json["total_views"] == views
    csrf = dashboard_csrf(client)

    client.post("/logout", {"csrf": csrf}, headers=SAME_SITE, status=303)
    for reader in (client, other_dyno):
        reader.set_cookie(SESSION_COOKIE, copy)
        assert_no_numbers(reader.get("/api/stats", status=401))
        assert_no_numbers(reader.get("/", status=401))
        reader.get("/api/jobs", status=401)
        reader.get("/jobs", status=401)
        reader.get("/metrics", status=401)
        reader.post("/api/jobs/cleanup_old_page_views", {"csrf": csrf}, headers=SAME_SITE, status=401)
    assert jobs_count(conn) == 0
    # A logout of the copy again changes nothing, and a new login opens everything again.
    other_dyno.post("/logout", {"csrf": csrf}, headers=SAME_SITE, status=303)
    log_in(other_dyno)
    assert other_dyno.get("/api/stats").json["total_views"] == views


def test_the_server_keeps_a_digest_of_an_ended_session_until_it_would_have_expired(client, conn):
    """What a logout keeps is a digest of the session's random value, never the value or the
    cookie, until the session's lifetime is over; a logout forgets the rows past theirs."""
    conn.execute(
        "INSERT INTO tally_ended_sessions (session_digest, ended_at, expires_at)"
        " VALUES (sha256('expired'), now() - interval '8 days', now() - interval '1 day'),"
        " (sha256('still-live'), now() - interval '1 day', now() + interval '6 days')"
    )
    log_in(client)
    cookie = client.cookies[SESSION_COOKIE]
    csrf = dashboard_csrf(client)
    client.post("/logout", {"csrf": csrf}, headers=SAME_SITE, status=303)

    rows = conn.execute(
        "SELECT session_digest, expires_at - ended_at FROM tally_ended_sessions ORDER BY ended_at"
    ).fetchall()
    assert [bytes(row[0]) for row in rows] == [
        hashlib.sha256(b"still-live").digest(),
        hashlib.sha256(csrf.encode()).digest(),
    ]
    assert rows[1][1] == datetime.timedelta(seconds=SESSION_SECONDS)
    kept = conn.execute("SELECT string_agg(t::text, ' ') FROM tally_ended_sessions t").fetchone()[0]
    assert csrf not in kept and cookie not in kept


def unreachable_pool() -> psycopg_pool.ConnectionPool:
    """A pool whose every connection is refused at once: the database is gone."""
    closed = psycopg_pool.ConnectionPool("postgresql://127.0.0.1:1/none", open=False)
    closed.close()
    return closed


def test_an_unreachable_database_neither_opens_a_session_nor_asks_for_a_login(database_url):
    """Whether a cookie's session was logged out is not known without the database: a request
    with one gets 503 (not the numbers, not the login form as if logged out), and a logout clears
    the cookie in the browser and says the server could not end the session."""
    settings = from_env({"DATABASE_URL": database_url, "ADMIN_TOKEN": TOKEN}, process_type="web")
    auth = Auth(settings, EndedSessions(unreachable_pool(), SESSION_SECONDS))
    app = bottle.Bottle()

    @app.get("/api/secret")
    @auth.owner_only
    def secret_answer():
        return {"secret": SECRET_PATH}

    @app.get("/secret")
    @auth.owner_only
    def secret_page():
        return SECRET_PATH

    app.post("/logout", callback=Login(auth).log_out)
    client = webtest.TestApp(app)
    client.set_cookie(SESSION_COOKIE, forged(TOKEN, {"csrf": "x"}))
    answer = client.get("/api/secret", status=503)
    assert "unreachable" in answer.json["error"] and SECRET_PATH not in answer.text
    page = client.get("/secret", status=503)
    assert "unreachable" in page.text and SECRET_PATH not in page.text
    assert client.get("/api/secret", headers=bearer(TOKEN)).json == {"secret": SECRET_PATH}

    response = client.post("/logout", {"csrf": "x"}, headers=SAME_SITE, status=503)
    assert "this browser only" in response.text and "ADMIN_TOKEN" in response.text
    assert "Max-Age=-1" in set_cookie_header(response) or "Max-Age=0" in set_cookie_header(response)


# --- share links --------------------------------------------------------------------------------


def test_a_share_link_reads_stats_and_the_dashboard_only(client, views, conn):
    make_failed_job(conn)
    shared = {"share": SHARE}
    assert client.get("/api/stats", {**shared, "days": "7"}).json["total_views"] == views
    page = client.get("/", shared)
    assert page.status_int == 200 and SECRET_PATH in page.text and 'id="total-views">37<' in page.text
    for owner_only in (
        'id="job-counts"',
        'id="recent-failures"',
        "RuntimeError",
        "boom",
        'id="workers-alive"',
        'id="logout-form"',
    ):
        assert owner_only not in page.text
    assert page.headers["Referrer-Policy"] == "same-origin"  # the token goes to no other site
    assert f'href="/?days=7&amp;share={SHARE}"' in page.text  # the window links keep the link's token

    for path in ("/api/jobs", "/api/jobs/1", "/api/jobs/abc", "/metrics"):
        response = client.get(path, shared, status=401)
        assert "boom" not in response.text and "tally_" not in response.text
    client.post(f"/api/jobs/cleanup_old_page_views?share={SHARE}", status=401)
    client.post(f"/api/jobs/1/retry?share={SHARE}", status=401)
    client.post("/api/jobs/cleanup_old_page_views", headers=bearer(SHARE), status=403)
    assert jobs_count(conn) == 1  # only the failed job made above


def test_a_wrong_share_link_is_refused(client, views):
    assert "share link" in client.get("/api/stats", {"share": SHARE + "x"}, status=403).json["error"]
    assert_no_numbers(client.get("/", {"share": "guess"}, status=403))
    client.get("/api/stats", {"share": ""}, status=403)


def test_a_share_token_given_twice_is_refused_whichever_comes_last(client, views):
    """Bottle reads the last of two: a wrong token before the right one opened the stats."""
    for tokens in ([SHARE, SHARE], ["guess", SHARE], [SHARE, "guess"]):
        query = urllib.parse.urlencode([("share", token) for token in tokens])
        response = client.get(f"/api/stats?{query}", status=400)
        assert response.json == {"error": "Give share once: open the share link as it was sent."}
        assert_no_numbers(client.get(f"/?{query}", status=400))
    assert log_in(client, TOKEN).status_int == 303  # none counted as a wrong token
    query = urllib.parse.urlencode([("share", SHARE), ("share", "guess")])
    client.get(f"/api/stats?{query}", headers=bearer(TOKEN), status=400)  # the owner too


def test_two_authorization_headers_are_refused_not_counted_as_a_wrong_token(client, views):
    """waitress joins a header sent twice with ", " (as HTTP allows for lists): the right token
    sent twice read as a wrong one, 403, and counted towards the failed-login limit."""
    parser = waitress.parser.HTTPRequestParser(waitress.adjustments.Adjustments())
    twice = f"Authorization: Bearer {TOKEN}\r\n" * 2
    parser.received(f"GET /api/stats HTTP/1.1\r\nHost: x\r\n{twice}\r\n".encode())
    joined = parser.headers["AUTHORIZATION"]
    assert joined == f"Bearer {TOKEN}, Bearer {TOKEN}"
    for _ in range(FAILED_LOGINS.amount + 1):
        for path in ("/api/stats", "/metrics", "/api/jobs"):
            response = client.get(path, headers={"Authorization": joined}, status=400)
            assert response.json == {"error": "Send one Authorization header, with one Bearer token."}
    client.get("/api/stats", headers={"Authorization": f"Bearer {TOKEN} x"}, status=400)
    assert client.get("/api/stats", headers=bearer(TOKEN)).json["total_views"] == views


def test_share_links_are_off_without_share_token(database_url, pool, views):
    client = app_with(database_url, pool, ADMIN_TOKEN=TOKEN)
    client.get("/api/stats", {"share": SHARE}, status=403)
    assert_no_numbers(client.get("/", {"share": SHARE}, status=403))


# --- the metrics token ---------------------------------------------------------------------------


def test_the_metrics_token_opens_metrics_and_nothing_else(database_url, pool, views):
    client = app_with(database_url, pool, ADMIN_TOKEN=TOKEN, METRICS_TOKEN=METRICS)
    assert "tally_page_views 37.0" in client.get("/metrics", headers=bearer(METRICS)).text
    assert "tally_page_views 37.0" in client.get("/metrics", headers=bearer(TOKEN)).text
    client.get("/metrics", status=401)
    for path in ("/api/stats", "/api/jobs", "/"):
        assert_no_numbers(client.get(path, headers=bearer(METRICS), status=403))
    client.post("/api/jobs/cleanup_old_page_views", headers=bearer(METRICS), status=403)


def test_the_metrics_token_works_without_an_admin_token(database_url, pool, views):
    client = app_with(database_url, pool, METRICS_TOKEN=METRICS)
    assert "tally_page_views 37.0" in client.get("/metrics", headers=bearer(METRICS)).text
    client.get("/metrics", headers=bearer("wrong"), status=403)


# --- public mode ------------------------------------------------------------------------------------


@pytest.mark.parametrize("admin", [{"ADMIN_TOKEN": TOKEN}, {}], ids=["with owner", "without owner"])
def test_public_mode_opens_stats_and_dashboard_to_everyone_and_nothing_more(
    database_url, pool, views, conn, admin
):
    make_failed_job(conn)
    client = app_with(database_url, pool, PUBLIC_DASHBOARD="true", **admin)
    assert client.get("/api/stats").json["total_views"] == views
    page = client.get("/")
    assert SECRET_PATH in page.text and "boom" not in page.text and "job-counts" not in page.text
    assert 'id="login-link"' in page.text
    assert client.get("/api/jobs", status=401 if admin else 403).json["error"]
    assert client.get("/metrics", status=401 if admin else 403).json["error"]
    if admin:  # the owner still sees everything there
        assert "RuntimeError: boom" in client.get("/", headers=bearer(TOKEN)).text


# --- failed logins ----------------------------------------------------------------------------------


def from_client(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


def test_failed_logins_are_limited_per_client(client, views):
    attacker = from_client("203.0.113.9, 198.51.100.7")  # the router appended the last entry
    for _ in range(FAILED_LOGINS.amount):
        assert log_in(client, "guess", **attacker).status_int == 401
    limited = log_in(client, "guess", **attacker)
    assert limited.status_int == 429 and "try again" in limited.text
    assert 1 <= int(limited.headers["Retry-After"]) <= FAILED_LOGINS.get_expiry()
    # The right token from that client waits too (or guessing would go on), and so does
    # every other way of sending one; a forged first entry changes nothing.
    assert log_in(client, TOKEN, **attacker).status_int == 429
    assert log_in(client, TOKEN, **from_client("10.9.9.9, 198.51.100.7")).status_int == 429
    response = client.get("/api/stats", headers={**bearer(TOKEN), **attacker}, status=429)
    assert response.json["error"] and response.headers["Retry-After"]
    client.get("/api/stats", {"share": SHARE}, headers=attacker, status=429)
    # Another client is not affected.
    assert log_in(client, TOKEN, **from_client("198.51.100.8")).status_int == 303


@pytest.mark.parametrize(
    ("path", "send"),
    [
        ("/api/stats", lambda: {"headers": bearer("guess")}),
        ("/api/stats", lambda: {"params": {"share": "guess"}}),
        ("/metrics", lambda: {"headers": bearer("guess")}),
        ("/api/jobs/cleanup_old_page_views", lambda: {"headers": bearer("guess"), "method": "post"}),
    ],
    ids=["bearer", "share link", "metrics", "admin action"],
)
def test_every_wrong_token_counts_as_a_failed_login(client, path, send):
    request = send()
    method = getattr(client, request.pop("method", "get"))
    for _ in range(FAILED_LOGINS.amount):
        method(path, status=403, **request)
    method(path, status=429, **request)
    assert log_in(client, TOKEN).status_int == 429  # the same client (WebTest's address)


def test_the_peer_address_is_the_client_without_x_forwarded_for(database_url, pool):
    settings = from_env({"DATABASE_URL": database_url, "ADMIN_TOKEN": TOKEN}, process_type="web")
    app = build_app(settings, pool, jobs.app)
    first = webtest.TestApp(app, extra_environ={"REMOTE_ADDR": "192.0.2.1"})
    second = webtest.TestApp(app, extra_environ={"REMOTE_ADDR": "192.0.2.2"})
    for _ in range(FAILED_LOGINS.amount):
        log_in(first, "guess")
    assert log_in(first, TOKEN).status_int == 429
    assert log_in(second, TOKEN).status_int == 303


def test_a_long_forwarded_for_entry_costs_the_limit_no_more_memory_than_an_address(database_url, pool):
    """The failed-login limit keeps each client's key for 15 minutes: a client that names itself
    with a 200 KB X-Forwarded-For entry must not make each wrong token cost 200 KB of memory."""
    settings = from_env({"DATABASE_URL": database_url, "ADMIN_TOKEN": TOKEN}, process_type="web")
    auth = Auth(settings, EndedSessions(pool, SESSION_SECONDS))
    app = bottle.Bottle()

    @app.get("/guess")
    @auth.owner_only
    def guess():
        return "never"

    client = webtest.TestApp(app)
    for n in range(3):
        client.get("/guess", headers={**bearer("guess"), **from_client(f"{n}-" + "x" * 200_000)}, status=403)
    keys = list(auth.failures.limiter.storage.events)
    assert len(keys) == 3 and max(len(key) for key in keys) < 200


# --- through waitress: the real web.py ----------------------------------------------------------------


def test_web_py_sees_the_routers_headers_and_never_logs_the_client(start_process, conn):
    """waitress drops X-Forwarded-* unless told to keep them: the client and HTTPS must get through."""
    port = free_port()
    web = start_process(["web.py"], {"PORT": str(port), "ADMIN_TOKEN": TOKEN, "LOG_LEVEL": "DEBUG"})
    web.wait_for_line("Serving on")

    def post_login(token: str, forwarded_for: str, proto: str = "http") -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        body = urllib.parse.urlencode({"token": token})
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Origin": f"http://127.0.0.1:{port}",
            "X-Forwarded-For": forwarded_for,
            "X-Forwarded-Proto": proto,
        }
        connection.request("POST", "/login", body, headers)
        response = connection.getresponse()
        response.read()
        connection.close()
        return response

    statuses = [post_login("guess", "198.51.100.77").status for _ in range(FAILED_LOGINS.amount + 1)]
    assert statuses == [401] * FAILED_LOGINS.amount + [429]
    answer = post_login(TOKEN, "198.51.100.78", proto="https")  # another client, over HTTPS
    assert answer.status == 303
    assert "Secure" in answer.getheader("Set-Cookie") and "HttpOnly" in answer.getheader("Set-Cookie")
    assert "198.51.100" not in web.output() and TOKEN not in web.output()


def test_web_py_stops_at_start_on_an_invalid_public_dashboard(start_process):
    web = start_process(["web.py"], {"PUBLIC_DASHBOARD": "maybe"})
    assert web.wait(20) == 2
    lines = web.output().strip().splitlines()
    assert len(lines) == 1 and "PUBLIC_DASHBOARD" in lines[0], lines
