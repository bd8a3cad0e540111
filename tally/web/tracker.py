r"""GET /tally.js: the tracker's source (tally/web/tally.js) served without its comments and
indentation (the repository's file is the readable one; no build step), gzipped for clients
that accept it, with an ETag and a day of caching.

>>> served_source('  // why\n  var a = 1; // what\n  if (a) {\n    b("http://x");\n  }\n')
'var a = 1;\nif (a) {\nb("http://x");\n}\n'
"""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

import bottle

SOURCE = Path(__file__).with_name("tally.js")
# Sites cache the script a day; a changed script reaches every browser by the next day
# (its ETag revalidates it then in one round trip).
CACHE_CONTROL = "public, max-age=86400"
# A comment at the end of a statement or block opening (never inside a string: the source
# writes none there); whole comment lines go too.
TRAILING_COMMENT = re.compile(r"([;{,])\s+// .*$")
# An entity tag of If-None-Match's list, its W/ (weak) left out: the opaque tag, quotes and
# all (RFC 9110, 8.8.3: no quote inside, so a comma inside is part of the tag).
ENTITY_TAG = re.compile(r'(?:W/)?("[^"]*")')


def none_match(header: str, etag: str) -> bool:
    """Whether an If-None-Match `header` matches `etag` (RFC 9110, 13.1.2): `*` matches any
    current representation, a list matches when one of its tags does, compared weakly (a cache
    may send back our tag as W/"..."): the answer is then a 304.

    >>> none_match('*', '"a"'), none_match('"b", W/"a"', '"a"'), none_match('"a-gzip"', '"a"')
    (True, True, False)
    """
    header = header.strip()
    return header == "*" or etag in ENTITY_TAG.findall(header)


def served_source(source: str) -> str:
    """`source` as browsers get it: every line stripped, comment lines dropped, and comments
    after a statement cut (DESIGN.md: at most 1 KB gzipped; the comments are half of it)."""
    lines = (TRAILING_COMMENT.sub(r"\1", line.strip()) for line in source.splitlines())
    return "".join(f"{line}\n" for line in lines if line and not line.startswith("//"))


class Tracker:
    """The script's bytes, plain and gzipped, read once at start."""

    def __init__(self, source: Path = SOURCE):
        self.plain = served_source(source.read_text(encoding="utf-8")).encode()
        self.gzipped = gzip.compress(self.plain, compresslevel=9, mtime=0)
        digest = hashlib.sha256(self.plain).hexdigest()[:32]
        # One ETag per representation, so no cache answers a gzip one to a plain request.
        self.etag, self.gzipped_etag = f'"{digest}"', f'"{digest}-gzip"'

    def response(self, request: bottle.BaseRequest) -> bottle.HTTPResponse:
        gzipped = "gzip" in request.get_header("Accept-Encoding", "").lower()
        etag, body = (self.gzipped_etag, self.gzipped) if gzipped else (self.etag, self.plain)
        headers = {
            "Content-Type": "text/javascript; charset=utf-8",
            "Cache-Control": CACHE_CONTROL,
            "ETag": etag,
            "Vary": "Accept-Encoding",
            # Any site's pages load it; it reads nothing private. A cross-origin isolated page
            # (Cross-Origin-Embedder-Policy: require-corp) runs a plain <script src> of another
            # origin only with Cross-Origin-Resource-Policy: cross-origin.
            "Access-Control-Allow-Origin": "*",
            "Cross-Origin-Resource-Policy": "cross-origin",
            "X-Content-Type-Options": "nosniff",
        }
        if gzipped:
            headers["Content-Encoding"] = "gzip"
        if none_match(request.get_header("If-None-Match", ""), etag):
            return bottle.HTTPResponse(status=304, headers=headers)
        return bottle.HTTPResponse(body=body, headers=headers)
