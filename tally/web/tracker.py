"""GET /tally.js: the tracker's source (tally/web/tally.js) served as it is in the repository,
gzipped for clients that accept it, with an ETag and a day of caching."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import bottle

SOURCE = Path(__file__).with_name("tally.js")
# Sites cache the script a day; a changed script reaches every browser by the next day
# (its ETag revalidates it then in one round trip).
CACHE_CONTROL = "public, max-age=86400"


class Tracker:
    """The script's bytes, plain and gzipped, read once at start."""

    def __init__(self, source: Path = SOURCE):
        self.plain = source.read_bytes()
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
            # Any site's pages load it; it reads nothing private.
            "Access-Control-Allow-Origin": "*",
            "X-Content-Type-Options": "nosniff",
        }
        if gzipped:
            headers["Content-Encoding"] = "gzip"
        if etag in request.get_header("If-None-Match", ""):
            return bottle.HTTPResponse(status=304, headers=headers)
        return bottle.HTTPResponse(body=body, headers=headers)
