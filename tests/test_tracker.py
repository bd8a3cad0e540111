"""GET /tally.js's conditional answers (tally/web/tracker.py) through the real WSGI app: an
If-None-Match that matches the script served is a 304, as RFC 9110 (13.1.2) says."""

from __future__ import annotations

import pytest

from tests.test_web import make_client


@pytest.fixture
def client(database_url, pool):
    return make_client(database_url, pool)


def etag(client, encoding: str) -> str:
    return client.get("/tally.js", headers={"Accept-Encoding": encoding}, status=200).headers["ETag"]


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_a_star_matches_the_script_served(client, encoding):
    """`If-None-Match: *` was answered 200 and the whole script: a `*` matches any current
    representation, and the script always has one."""
    answer = client.get("/tally.js", headers={"Accept-Encoding": encoding, "If-None-Match": "*"}, status=304)
    assert answer.body == b"" and answer.headers["ETag"] == etag(client, encoding)


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
@pytest.mark.parametrize(
    "header",
    ['"stale", {tag}', '{tag},"stale"', "W/{tag}", '"stale", W/{tag} , "other"', " {tag} "],
)
def test_a_list_of_tags_or_a_weak_one_matches_when_one_is_the_scripts(client, encoding, header):
    tag = etag(client, encoding)
    headers = {"Accept-Encoding": encoding, "If-None-Match": header.format(tag=tag)}
    client.get("/tally.js", headers=headers, status=304)


def test_another_representations_tag_or_a_stale_one_gets_the_script(client):
    plain, gzipped = etag(client, "identity"), etag(client, "gzip")
    for encoding, header in (
        ("identity", gzipped),  # the gzip tag: a cache must not answer it with the plain bytes
        ("gzip", plain),
        ("identity", '"stale", W/"stale"'),
        ("identity", plain[:-1]),  # a tag cut short is another tag
        ("identity", ""),
    ):
        headers = {"Accept-Encoding": encoding, "If-None-Match": header}
        assert client.get("/tally.js", headers=headers, status=200).body
