"""Hostile input, generated: whatever arrives, the web app never answers 500, stores
nothing for a refused request, stores exactly what it accepted, and no admin action
succeeds without the right token (wrong ones soon get 429: the failed-login limit)."""

from __future__ import annotations

import json
import logging
import string

import psycopg
import pytest
import webtest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jobs
from tally.config import from_env
from tally.db import web_pool
from tally.paths import stored_path
from tally.web.app import build_app
from tests.test_web_collect import post_raw

TOKEN = "correct-horse-battery-staple"
PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
tricky_text = st.sampled_from(
    [
        "/",
        "/a'b",
        '/"x"',
        "/'; DROP TABLE page_views; --",
        "/%s%%",
        "/\\",
        "/日本",
        "/🙂",
        "/\u202e",
        "/x" * 1100,
    ]
) | st.text(max_size=60).map(lambda text: "/" + text)
view = st.fixed_dictionaries({"path": tricky_text}, optional={"referrer": st.none() | tricky_text})
bodies = (
    json_values.map(lambda value: json.dumps(value).encode())
    | view.map(lambda value: json.dumps(value).encode())
    | st.lists(view, max_size=5).map(lambda value: json.dumps(value).encode())
    | st.binary(max_size=200)
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        "text/plain",
        "",
        "application/xml",
        "multipart/form-data; boundary=x",
    ]
)


@pytest.fixture(scope="module")
def app(database_url):
    settings_ = from_env({"DATABASE_URL": database_url, "ADMIN_TOKEN": TOKEN}, process_type="web")
    with web_pool(settings_) as pool:
        yield build_app(settings_, pool, jobs.app)


@pytest.fixture(scope="module")
def client(app):
    return webtest.TestApp(app)


@pytest.fixture(scope="module")
def owner(app):
    return webtest.TestApp(app, extra_environ={"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"})


def count(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM page_views").fetchone()[0]


@PROPERTY_SETTINGS
@given(body=bodies, content_type=content_types)
def test_any_body_is_stored_whole_or_refused_cleanly(client, conn, body, content_type):
    before = count(conn)
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/api/pageviews", body, headers=headers, status="*")
    assert response.status_int in (201, 400, 413, 415), response.text
    after = count(conn)
    if response.status_int == 201:
        assert after - before == response.json["stored"] >= 1
    else:
        assert after == before
        assert response.json["error"]


@PROPERTY_SETTINGS
@given(path=tricky_text, referrer=st.none() | tricky_text)
def test_accepted_text_is_stored_literally(client, conn, path, referrer):
    """Literally: the referrer as sent, the path as a browser sends it (tally/paths.py)."""
    response = client.post_json("/api/pageviews", {"path": path, "referrer": referrer}, status="*")
    if response.status_int == 201:
        row = conn.execute("SELECT path, referrer FROM page_views ORDER BY id DESC LIMIT 1").fetchone()
        assert row == (stored_path(path), referrer)
    else:
        assert response.status_int == 400


@PROPERTY_SETTINGS
@given(query=st.text(alphabet=string.printable + "é日\x00", max_size=30))
def test_any_stats_query_string_answers_200_or_400(owner, query):
    response = owner.get("/api/stats?" + query.replace("#", ""), status="*")
    assert response.status_int in (200, 400), response.text


@pytest.mark.parametrize("query", ["campaign=%FF", "path=/%C3", "event=%ED%A0%80", "%E9t%E9=1"])
@pytest.mark.parametrize("path", ["/api/stats", "/api/export", "/", "/jobs", "/api/jobs/bulk/retry"])
def test_a_query_string_that_is_not_utf8_is_a_400_that_says_so(owner, path, query):
    """Bottle would hand its bytes over as latin-1 text (headers.decode_query)."""
    method = owner.post if path.startswith("/api/jobs/") else owner.get
    response = method(f"{path}?{query}", status=400)
    assert response.json == {"error": "The address's query string is not valid UTF-8."}


@pytest.mark.parametrize("path", ["/api/stats%FF", "/%FF", "/jobs%C3"])
def test_an_address_that_is_not_utf8_is_a_400_not_the_page_without_those_bytes(owner, path):
    assert owner.get(path, status=400).json == {"error": "The address is not valid UTF-8."}


@PROPERTY_SETTINGS
@given(
    header=st.none() | st.text(alphabet=string.printable, max_size=60),
    task=st.sampled_from(["cleanup_old_page_views", "retry_stalled_jobs", "nope"]),
)
def test_no_admin_action_succeeds_without_the_token(client, conn, header, task):
    if header is not None and header.strip() == f"Bearer {TOKEN}":
        return
    headers = {} if header is None else {"Authorization": header.replace("\n", " ").replace("\r", " ")}
    response = client.post(f"/api/jobs/{task}", headers=headers, status="*")
    assert response.status_int in (401, 403, 429), response.text
    assert client.post("/api/jobs/1/retry", headers=headers, status="*").status_int in (401, 403, 429)
    assert conn.execute("SELECT count(*) FROM procrastinate_jobs").fetchone()[0] == 0


urls = (
    st.sampled_from(["https://", "http://", "ftp://", "", "//", "https://user:pw@"])
    .flatmap(
        lambda scheme: st.tuples(
            st.just(scheme),
            st.sampled_from(
                ["example.com", "EXAMPLE.com:8080", "[::1]", "a..b", "ex ample.com", "", "日本.jp"]
            )
            | st.text(max_size=20),
            tricky_text | st.just(""),
            st.sampled_from(["", "?utm_source=x", "?ref=", "?source=" + "y" * 300, "?utm_source=%00", "#f"]),
        )
    )
    .map(lambda parts: "".join(parts))
)
beacons = (
    st.fixed_dictionaries({"url": urls}, optional={"referrer": st.none() | urls | st.text(max_size=30)}).map(
        lambda value: json.dumps(value).encode()
    )
    | json_values.map(lambda value: json.dumps(value).encode())
    | st.binary(max_size=200)
)


@PROPERTY_SETTINGS
@given(
    body=beacons, content_type=content_types, agent=st.sampled_from(["Mozilla/5.0 Firefox/128.0", "curl/8"])
)
def test_any_beacon_is_stored_counted_as_a_crawler_or_refused_cleanly(
    client, conn, body, content_type, agent
):
    before = count(conn)
    headers = {"User-Agent": agent, **({"Content-Type": content_type} if content_type else {})}
    response = client.post("/api/collect", body, headers=headers, status="*")
    assert response.status_int in (201, 202, 400, 413, 415), response.text
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    if response.status_int == 201:
        assert count(conn) == before + 1
        site = conn.execute("SELECT site FROM page_views ORDER BY id DESC LIMIT 1").fetchone()[0]
        assert site == site.lower() and ":" not in site
    else:
        assert count(conn) == before
        assert response.json["error" if response.status_int >= 400 else "stored"] is not None


@PROPERTY_SETTINGS
@given(
    site=st.none() | st.text(alphabet=string.printable + "é", max_size=20),
    tz=st.none()
    | st.sampled_from(["UTC", "Asia/Kathmandu", "Nowhere/Land", "", "UTC+3", "../x"])
    | st.text(alphabet=string.printable, max_size=20),
)
def test_any_site_and_tz_answer_200_or_400(owner, site, tz):
    query = {name: value for name, value in (("site", site), ("tz", tz)) if value is not None}
    for path in ("/api/stats", "/api/export", "/"):
        response = owner.get(path, query, status="*")
        assert response.status_int in (200, 400), (path, response.text)


# --- headers as real clients send them ----------------------------------------------------------

UA_MARK = "Secret-UA-4242"
ADDRESS_MARK = "203.0.113.77"
# A header's bytes as a WSGI server hands them over: latin-1 text, anything but a line break
# (that would end the header); NUL included.
header_bytes = st.binary(max_size=80).map(lambda raw: raw.replace(b"\r", b"").replace(b"\n", b""))
header_values = (
    header_bytes.map(lambda raw: raw.decode("latin-1"))
    | st.sampled_from(["\xe9t\xe9", "caf\xc3\xa9", "\xff\xfe", "\x00", "x" * 20_000, "," * 5_000, "\xf0\x9f"])
    | st.text(alphabet=string.printable.replace("\r", "").replace("\n", "").replace("\x0b", ""), max_size=40)
)
routes = st.sampled_from(
    [
        ("POST", "/api/collect"),
        ("OPTIONS", "/api/collect"),
        ("POST", "/api/pageviews"),
        ("GET", "/api/stats"),
        ("GET", "/"),
        ("GET", "/tally.js"),
        ("GET", "/api/health"),
        ("GET", "/metrics"),
        ("GET", "/api/jobs"),
        ("POST", "/api/jobs/cleanup_old_page_views"),
        ("POST", "/login"),
        ("GET", "/nowhere"),
        ("GET", "/jobs"),
        ("GET", "/login"),
        ("POST", "/logout"),
        ("GET", "/reports/preview"),
        ("GET", "/api/export"),
        ("POST", "/api/queues/default/pause"),
    ]
)


def test_a_cookie_header_that_python_cannot_parse_is_no_cookie(client):
    """`e)=w` makes http.cookies raise CookieError: every route that reads a cookie answered 500."""
    for path in ("/api/stats", "/", "/jobs"):
        response = client.get(path, headers={"Cookie": "e)=w"}, expect_errors=True)
        assert response.status_int in (200, 401, 403), (path, response.status_int, response.text)


@PROPERTY_SETTINGS
@given(
    route=routes,
    agent=header_values,
    forwarded=st.lists(header_values, max_size=4),
    others=st.dictionaries(
        st.sampled_from(
            [
                *("Content-Type", "Origin", "Authorization", "Cookie", "Accept-Encoding", "Referer"),
                *("Host", "X-Forwarded-Host", "X-Forwarded-Proto", "Accept", "If-None-Match", "Range"),
            ]
        ),
        header_values,
        max_size=4,
    ),
)
def test_any_header_bytes_get_a_2xx_or_4xx_and_no_log_line_holds_an_agent_or_address(
    client, conn, caplog, route, agent, forwarded, others
):
    """Every route, any bytes in the headers that carry people's data: never a 500, and neither the
    user agent nor the client's address reaches a log line (errors included)."""
    caplog.set_level(logging.DEBUG)
    method, path = route
    headers = {
        **others,
        "User-Agent": f"Mozilla/5.0 {UA_MARK} {agent}",
        "X-Forwarded-For": ", ".join([*forwarded, ADDRESS_MARK]),
    }
    body = json.dumps({"url": "https://example.com/", "referrer": ""}).encode()
    response = client.request(
        path, method=method, headers=headers, body=body if method == "POST" else b"", expect_errors=True
    )
    assert response.status_int < 500, response.text
    for secret in (UA_MARK, ADDRESS_MARK):
        assert secret not in caplog.text


@PROPERTY_SETTINGS
@given(
    length=header_values,
    content_type=header_values,
    path=st.sampled_from(["/api/collect", "/api/pageviews", "/login"]),
)
def test_any_content_length_and_type_get_a_2xx_or_4xx(app, caplog, length, content_type, path):
    """Straight through the WSGI app: WebTest would set Content-Length itself."""
    caplog.set_level(logging.DEBUG)
    environ = {"PATH_INFO": path, "CONTENT_LENGTH": length, "CONTENT_TYPE": content_type}
    status = post_raw(app, {**environ, "HTTP_USER_AGENT": f"Mozilla/5.0 {UA_MARK}"})
    assert int(status.split()[0]) < 500, status
    assert UA_MARK not in caplog.text


@pytest.mark.parametrize("content_type", [";", "application/x-www-form-urlencoded; charset", "text/plain;;"])
@pytest.mark.parametrize("path", ["/api/collect", "/api/pageviews", "/login", "/logout"])
def test_a_content_type_parameter_without_a_value_is_no_500(app, content_type, path):
    """Bottle's form parser raised on a parameter without "=" (found by the case above)."""
    status = post_raw(app, {"PATH_INFO": path, "CONTENT_LENGTH": "", "CONTENT_TYPE": content_type})
    assert int(status.split()[0]) < 500, status


def multipart(*parts: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body of `parts` (each a part's headers, a blank line, its value)."""
    body = b"".join(b"--XX\r\n" + part + b"\r\n" for part in parts) + b"--XX--\r\n"
    return body, "multipart/form-data; boundary=XX"


def field(name: bytes, value: bytes, *headers: bytes) -> bytes:
    return b"\r\n".join([b'Content-Disposition: form-data; name="' + name + b'"', *headers, b"", value])


def jobs_deferred(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM procrastinate_jobs").fetchone()[0]


def test_a_multipart_login_form_logs_in_as_a_url_encoded_one_does(app):
    """A form may be sent as multipart/form-data (enctype="multipart/form-data")."""
    body, content_type = multipart(
        field(b"token", TOKEN.encode(), b"Content-Type: text/plain; charset=utf-8")
    )
    headers = {"Content-Type": content_type, "Origin": "http://localhost"}
    response = webtest.TestApp(app).post("/login", body, headers=headers, status=303)
    assert "tally_session=" in response.headers["Set-Cookie"]


UNREADABLE_FORMS = {
    "a value not in UTF-8": field(b"token", b"\xff\xfe"),
    "a name not in UTF-8": field(b"to\xffken", b"abc"),
    "a value not in its part's charset": field(b"token", b"abc", b"Content-Type: text/plain; charset=utf-16"),
    "a part's header parameter without a value": field(
        b"token", b"abc", b"Content-Type: text/plain; charset"
    ),
}


@pytest.mark.parametrize("part", UNREADABLE_FORMS.values(), ids=UNREADABLE_FORMS.keys())
def test_a_form_that_cannot_be_read_is_a_400_that_says_so_and_does_nothing(app, conn, part):
    """Bottle's multipart parser raises these as 500s (bottle 0.13.5 too; before it, a part's
    `charset=zlib` also did): the public login form among the routes that read a form."""
    body, content_type = multipart(part)
    same_site = {"Content-Type": content_type, "Origin": "http://localhost"}
    bearer = {"Content-Type": content_type, "Authorization": f"Bearer {TOKEN}"}
    sentence = "The form could not be read: send its fields as UTF-8 text."
    logged_in = webtest.TestApp(app)  # the jobs page's forms: the session's CSRF token is read
    logged_in.post("/login", {"token": TOKEN}, headers={"Origin": "http://localhost"}, status=303)
    for path, sender, headers in [
        ("/login", webtest.TestApp(app), same_site),
        ("/api/jobs/cleanup_old_page_views", webtest.TestApp(app), bearer),
        ("/api/jobs/cleanup_old_page_views", logged_in, {**same_site, "Accept": "text/html"}),
    ]:
        response = sender.post(path, body, headers=headers, status=400)
        if "Accept" in headers:
            assert "text/html" in response.content_type and sentence in response.text
        else:
            assert response.json == {"error": sentence}
        assert "Set-Cookie" not in response.headers
    assert jobs_deferred(conn) == 0


@PROPERTY_SETTINGS
@given(
    parts=st.lists(
        st.tuples(
            st.binary(max_size=12) | st.sampled_from([b"token", b"csrf", b"next"]),
            st.binary(max_size=24) | st.just(TOKEN.encode()),
            st.sampled_from(
                [b"", b"utf-8", b"latin-1", b"utf-16", b"zlib", b"unicode-escape", b"idna", b"x"]
            ),
        ),
        max_size=3,
    ),
    path=st.sampled_from(["/login", "/logout", "/api/jobs/cleanup_old_page_views", "/api/jobs/bulk/cancel"]),
)
def test_any_multipart_form_gets_a_2xx_3xx_or_4xx(client, conn, parts, path):
    body, content_type = multipart(
        *(
            field(name, value, *([b"Content-Type: text/plain; charset=" + charset] if charset else []))
            for name, value, charset in parts
        )
    )
    before = jobs_deferred(conn)
    headers = {"Content-Type": content_type, "Origin": "http://localhost"}
    if path.startswith("/api/"):
        headers["Authorization"] = f"Bearer {TOKEN}"
    response = client.post(path, body, headers=headers, expect_errors=True)
    assert response.status_int < 500, response.text
    if response.status_int >= 400:
        assert jobs_deferred(conn) == before
