"""What the bodies of POST /api/collect (tally/web/beacon.py) and POST /api/pageviews
(tally/web/routes_collect.py) are refused for, through the real WSGI app: each refusal says
what is wrong with what was sent, and stores nothing."""

from __future__ import annotations

import pytest

from tests.test_web import stored as views_stored
from tests.test_web_collect import ADDRESS, BROWSER, sites_client

EVENT = '{"url": "https://example.com/", "event": "Signup", "props": %s}'


@pytest.fixture
def client(database_url, pool):
    return sites_client(database_url, pool)


def collect(client, body: str, status: int):
    headers = {"User-Agent": BROWSER, "X-Forwarded-For": ADDRESS, "Origin": "https://example.com"}
    return client.post("/api/collect", body, headers=headers, content_type="text/plain", status=status)


def nothing_stored(conn) -> bool:
    return views_stored(conn) == 0 and conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0


@pytest.mark.parametrize(
    ("props", "says"),
    [
        # `null` was "must be a string, a number or a boolean, not nested": it is no nesting.
        ('{"plan": null}', 'Prop "plan" must be a string, a number or a boolean, not null.'),
        (
            '{"plan": {"tier": 1}}',
            'Prop "plan" must be a string, a number or a boolean, not an object: props are not nested.',
        ),
        (
            '{"plan": ["pro"]}',
            'Prop "plan" must be a string, a number or a boolean, not a list: props are not nested.',
        ),
        # These named "props" as a whole, not the prop whose value it was.
        ('{"plan": "pro\\u0000"}', 'Prop "plan" contains a control character.'),
        ('{"plan": "\\ud800"}', 'Prop "plan" is not valid Unicode (a lone surrogate).'),
        ('{"\\ud800": 1}', "A prop's key is not valid Unicode (a lone surrogate)."),
        # Unchanged: they read right.
        ('{"plan": NaN}', 'Prop "plan" must be a finite number.'),
        ('{"plan": "%s"}' % ("x" * 2001), 'Prop "plan" is longer than 2000 characters.'),
    ],
)
def test_a_props_value_that_is_refused_is_named_with_what_a_value_may_be(client, conn, props, says):
    assert collect(client, EVENT % props, status=400).json == {"error": says}
    assert nothing_stored(conn)


BEACON_DUPLICATES = [
    ('{"url": "https://example.com/a", "url": "https://example.com/b"}', "url"),
    ('{"url": "https://example.com/", "referrer": "", "referrer": "https://x.test/"}', "referrer"),
    ('{"url": "https://example.com/", "event": "E", "props": {"plan": "a", "plan": "b"}}', "plan"),
    # Written with an escape, a key is the same key.
    ('{"url": "https://example.com/a", "\\u0075rl": "https://example.com/b"}', "url"),
]


@pytest.mark.parametrize(("body", "key"), BEACON_DUPLICATES)
def test_a_beacon_with_a_key_given_twice_is_refused_naming_it(client, conn, body, key):
    """`{"url": A, "url": B}` was stored as B: which one the sender meant is not known."""
    answer = collect(client, body, status=400)
    assert answer.json == {"error": f'The key "{key}" is given twice in one object: give each key once.'}
    assert nothing_stored(conn)


PAGEVIEW_DUPLICATES = [
    ('{"path": "/a", "path": "/b", "site": "example.com"}', "path"),
    (
        '[{"path": "/a", "site": "example.com"},'
        ' {"path": "/b", "site": "example.com", "site": "www.example.com"}]',
        "site",
    ),
]


@pytest.mark.parametrize(("body", "key"), PAGEVIEW_DUPLICATES)
def test_page_views_with_a_key_given_twice_are_refused_naming_it(client, conn, body, key):
    """`{"path": "/a", "path": "/b"}` was stored as /b."""
    answer = client.post("/api/pageviews", body, content_type="application/json", status=400)
    assert answer.json == {"error": f'The key "{key}" is given twice in one object: give each key once.'}
    assert nothing_stored(conn)


def test_the_same_key_in_two_objects_is_no_repeat(client, conn):
    """Each view of a batch has its `path`, an event's props may have a key of the beacon's."""
    client.post(
        "/api/pageviews",
        '[{"path": "/a", "site": "example.com"}, {"path": "/b", "site": "example.com"}]',
        content_type="application/json",
        status=201,
    )
    collect(client, EVENT % '{"url": "x", "event": "y"}', status=201)
    assert views_stored(conn) == 2
