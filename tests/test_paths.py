"""A path as Tally stores it (tally/paths.py), held to what the stores and the filters rely on:
one form for a page however it was sent, the same form stored twice, and no other URL."""

from __future__ import annotations

import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tally.paths import MAX_PATH, TO_ENCODE, TO_ENCODE_PATTERN, path_forms, stored_path

# Pieces of paths as browsers, servers and careless senders write them: escapes in either case,
# of the URL's syntax, of bytes that are not UTF-8, "%" that starts no escape, characters past
# ASCII and spaces unescaped, a right-to-left override.
PIECES = [
    *"/aZ09-._~+%?#é日 |{}\"'\u202e\u00a0😀",
    "%C3", "%A9", "%c3%a9", "%E6%97%A5", "%e6%97", "%F0%9F%98%80", "%80", "%ff", "%2F", "%2f",
    "%3F", "%23", "%25", "%2541", "%20", "%41", "%7e", "%0A", "%ZZ", "%4", "%a",
]  # fmt: skip
paths = st.lists(st.sampled_from(PIECES), max_size=30).map(lambda pieces: "/" + "".join(pieces))


@settings(max_examples=1000, deadline=None)
@given(paths)
def test_a_path_stored_twice_is_stored_once(path):
    stored = stored_path(path)
    assert stored_path(stored) == stored


@settings(max_examples=1000, deadline=None)
@given(paths)
def test_the_stored_path_names_the_same_bytes(path):
    """The same URL: decoded, both are the same bytes (the encoded characters are their UTF-8)."""
    assert urllib.parse.unquote_to_bytes(stored_path(path)) == urllib.parse.unquote_to_bytes(path)


@settings(max_examples=1000, deadline=None)
@given(paths)
def test_the_stored_path_is_printable_ascii_and_its_escapes_upper_case(path):
    stored = stored_path(path)
    assert stored.isascii() and stored.isprintable() and not set(stored) & set(' "<>`{}|^')
    escapes = [stored[i + 1 : i + 3] for i, c in enumerate(stored) if c == "%"]
    hex_pairs = [
        pair for pair in escapes if len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair)
    ]
    assert all(pair == pair.upper() for pair in hex_pairs), stored


@settings(max_examples=1000, deadline=None)
@given(paths)
def test_a_paths_forms_are_the_same_page(path):
    """A filter's forms: the stored form first, and each one stored is that form."""
    forms = path_forms(path)
    assert forms[0] == stored_path(path) and len(forms) <= 2
    assert all(stored_path(form) == forms[0] for form in forms), forms


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("/%C3%BCber", "/%C3%BCber"),  # as browsers send it: unchanged
        ("/über", "/%C3%BCber"),  # as a server's framework may
        ("/%c3%bcber", "/%C3%BCber"),  # as a link may write it
        ("/日本 語", "/%E6%97%A5%E6%9C%AC%20%E8%AA%9E"),
        ("/😀", "/%F0%9F%98%80"),
        ("/\u202egnp.exe", "/%E2%80%AEgnp.exe"),
        ("/a%2fb", "/a%2Fb"),  # a "/" inside a name stays one
        ("/%41/~user", "/%41/~user"),  # never decoded
        ("/100%", "/100%"),
        ("/%zz%4", "/%zz%4"),
        ("/a|b{c}\"d'^", "/a%7Cb%7Bc%7D%22d'%5E"),  # what Chromium encodes of ASCII, and no more
        ("/<x>`y` z", "/%3Cx%3E%60y%60%20z"),
    ],
)
def test_each_kind_of_path(sent, stored):
    assert stored_path(sent) == stored


@pytest.mark.parametrize(
    ("filter_value", "forms"),
    [
        ("/über", ["/%C3%BCber", "/über"]),
        ("/%c3%bcber", ["/%C3%BCber", "/über"]),
        ('/<a b>|^"', ["/%3Ca%20b%3E%7C%5E%22", '/<a b>|^"']),
        ("/a%2Fb%41%FF%E2%80%AE", ["/a%2Fb%41%FF%E2%80%AE", "/a%2Fb%41%FF\u202e"]),
        ("/plain", ["/plain"]),
    ],
)
def test_a_filter_matches_each_form_a_page_may_be_stored_in(filter_value, forms):
    assert path_forms(filter_value) == forms


def test_a_path_too_long_encoded_is_kept_as_sent():
    """341 characters past ASCII encode to 2,047 characters: stored so. 342 would be 2,053, past
    the 2,048 a path may have: kept as sent, which stored twice is the same."""
    assert stored_path("/" + "é" * 341) == "/" + "%C3%A9" * 341
    assert len(stored_path("/" + "é" * 341)) == MAX_PATH - 1
    assert stored_path("/" + "é" * 342) == "/" + "é" * 342
    assert stored_path(stored_path("/" + "é" * 342)) == "/" + "é" * 342


def test_postgresql_reads_the_pattern_of_paths_to_encode_as_python_does(conn):
    """The rebuild picks the paths to store again in SQL (`path ~ to_encode`) and stores them in
    Python: a path one finds and the other does not would be left, or looked at for nothing."""
    samples = [
        "".join(pieces)
        for pieces in [[piece] for piece in PIECES] + [["/", a, b] for a in PIECES for b in PIECES[::7]]
    ]
    matched = conn.execute(
        "SELECT array_agg(sample ~ %s ORDER BY n) FROM unnest(%s::text[]) WITH ORDINALITY AS s (sample, n)",
        (TO_ENCODE_PATTERN, samples),
    ).fetchone()[0]
    assert matched == [TO_ENCODE.search(sample) is not None for sample in samples]
    assert all(
        found == (stored_path(sample) != sample) for sample, found in zip(samples, matched, strict=True)
    )
