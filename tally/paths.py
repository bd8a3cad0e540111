"""A page's path as Tally stores and filters it: as a browser's address has it.

Browsers send `location.href` with every character past ASCII percent-encoded as UTF-8 in upper
case (`/%C3%BCber` for `/über`), and that is the form Tally stores. A server's framework may send
the same page decoded (`/über`, Django's and Flask's `request.path`), a link may write its
escapes in lower case (`/%c3%bcber`), and a filter may be typed as the page reads: each would
have been a row or a value of its own. So collect, POST /api/pageviews, the path filters and a
rebuild of the rollups all store or look up `stored_path(path)`: what a browser percent-encodes
in a path (characters past ASCII as UTF-8, a space, `"`, `<`, `>`, the backquote, `{`, `}`,
`|`, `^`) encoded so, and every escape's hex digits in upper case (RFC 3986, 6.2.2.1: the same URL).
Nothing else changes: the rest of ASCII as sent, an escape never decoded (`%2F` is a "/"
inside a name), a "%" that starts no escape kept. A path whose encoded form would be longer
than the MAX_PATH characters kept of one (a client's own 342 or more characters past ASCII,
never a browser's) is kept as sent instead: refused, its view would be lost, and nothing else sends it
encoded. The dashboard shows a path decoded (`tally.dimensions.readable_path`); the API and
the export give it as stored. A filter by a path (`path_forms`) finds the views of that page
stored in either form: as browsers send it, and as a server sent it before this release or
an import inserts it by SQL (`/über`), which a rebuild of the rollups stores again.

>>> stored_path("/über"), stored_path("/%c3%bcber"), stored_path("/%C3%BCber")
('/%C3%BCber', '/%C3%BCber', '/%C3%BCber')
>>> path_forms("/über"), path_forms("/a%2fb")
(['/%C3%BCber', '/über'], ['/a%2Fb'])
>>> stored_path("/日本 語/100%/a%2fb"), stored_path('/"q"<{x}>'), stored_path("/a,b;c=[d]~")
('/%E6%97%A5%E6%9C%AC%20%E8%AA%9E/100%/a%2Fb', '/%22q%22%3C%7Bx%7D%3E', '/a,b;c=[d]~')
"""

from __future__ import annotations

import re
from collections.abc import Callable

# The longest path page_views and events keep (their CHECK, migrations/0001 and 0016).
MAX_PATH = 2048
# The printable ASCII a browser leaves as it is in a path: all but a space and " < > ` { } | ^
# (the URL Standard's path percent-encode set, and the two Chromium adds; "?" and "#" end a
# browser's path, and are a server's own). Controls are refused before a path gets here.
KEPT = r"\x21\x23-\x3b\x3d\x3f-\x5d\x5f\x61-\x7a\x7e"
# What stored_path changes: a character a browser encodes, or an escape with a lower-case hex
# digit. A pattern PostgreSQL reads as Python does: the rebuild finds such paths with it.
TO_ENCODE_PATTERN = rf"[^{KEPT}]|%(?:[0-9A-F][a-f]|[a-f][0-9A-Fa-f])"
TO_ENCODE = re.compile(TO_ENCODE_PATTERN)
# A run of escapes, which `decoded` reads as UTF-8.
ESCAPES = re.compile(r"(?:%[0-9A-Fa-f]{2})+")
# The ASCII stored_path encodes: decoded back where a path is written as a server sends it.
ENCODED_ASCII = frozenset(' "<>`{}|^')
# Runs of characters to encode, and every escape (to write its hex digits in upper case).
ENCODED = re.compile(rf"[^{KEPT}]+|%[0-9A-Fa-f]{{2}}")
# What no browser encodes, but "%": a path of these alone has nothing to change.
NOTHING_TO_ENCODE = re.compile(r"[\x21\x23\x24\x26-\x3b\x3d\x3f-\x5d\x5f\x61-\x7a\x7e]*")


def stored_path(path: str) -> str:
    """`path` as a browser's address has it: characters past ASCII, spaces and " < > ` { } | ^
    percent-encoded (UTF-8), escapes in upper case, the rest as sent; as sent if that is longer
    than MAX_PATH. Idempotent."""
    # Most paths have nothing to encode (0.2 us), and a browser's have done it (1 us, against
    # 4 us for sub() on eight escapes).
    if NOTHING_TO_ENCODE.fullmatch(path) or not TO_ENCODE.search(path):
        return path
    stored = ENCODED.sub(_encoded, path)
    return stored if len(stored) <= MAX_PATH else path


def _encoded(match: re.Match[str]) -> str:
    text = match.group()
    if text.startswith("%"):
        return text.upper()
    # A lone surrogate is refused before a path is stored; in a filter's value it matches nothing.
    return "".join(f"%{byte:02X}" for byte in text.encode("utf-8", "surrogatepass"))


def path_forms(path: str) -> list[str]:
    """The forms a filter by `path` matches: the page as browsers send it (`stored_path`), and
    as a server sent it before this release or an import inserts it by SQL, what stored_path
    encodes decoded (`/%C3%BCber` and `/über`); one form for a path with nothing to encode."""
    stored = stored_path(path)
    return list(dict.fromkeys([stored, decoded(stored, _encoded_by_stored_path)]))


def decoded(path: str, decodes: Callable[[str], bool]) -> str:
    """`path` with each percent-escaped UTF-8 character that `decodes` accepts decoded; every other
    escape, and bytes that are not UTF-8, as they are.

    >>> decoded("/%C3%BCber%2F%FF%e2%82%ac", lambda character: not character.isascii())
    '/über%2F%FF€'
    """
    return ESCAPES.sub(lambda match: _decoded_run(match.group(), decodes), path)


def _encoded_by_stored_path(character: str) -> bool:
    return not character.isascii() or character in ENCODED_ASCII


def _decoded_run(escapes: str, decodes: Callable[[str], bool]) -> str:
    data = bytes.fromhex(escapes.replace("%", ""))
    out: list[str] = []
    start = 0
    while start < len(data):
        lead = data[start]
        length = 4 if lead >= 0xF0 else 3 if lead >= 0xE0 else 2 if lead >= 0xC0 else 1
        try:
            character = data[start : start + length].decode("utf-8")
        except UnicodeDecodeError:  # not UTF-8 from here: this byte stays escaped
            character, length = "", 1
        out.append(
            character
            if len(character) == 1 and decodes(character)
            else escapes[start * 3 : (start + length) * 3]
        )
        start += length
    return "".join(out)
