"""The HTTP ceiling: a Bottle route answering constant JSON, served exactly as web.py serves Tally.

The ingest benchmark's baseline: what waitress and Bottle cost on this machine with no
database at all. Same configuration (WEB_THREADS), logging and waitress settings as web.py.

$ PORT=8123 python -m bench.ceiling
"""

from __future__ import annotations

import json
import signal
import sys

import bottle

from tally import config, logs, serving

BODY = json.dumps({"stored": 1})
HEADERS = {"Content-Type": "application/json", "Cache-Control": "no-store"}
MAX_BODY_BYTES = 1024 * 1024  # read the body as the real route does, up to its limit


def build_app() -> bottle.Bottle:
    app = bottle.Bottle()

    @app.post("/api/pageviews")
    def constant():
        """Read the body and answer what Tally answers for one view, without storing it."""
        bottle.request.body.read(MAX_BODY_BYTES + 1)
        return bottle.HTTPResponse(status=201, body=BODY, headers=HEADERS)

    return app


def main() -> None:
    settings = config.load_or_exit("web")
    logs.setup_logging(settings)
    logs.log_start(settings, "bench/ceiling.py", port=settings.port, threads=settings.web_threads)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Served exactly as web.py serves Tally.
    serving.serve(build_app(), port=settings.port, threads=settings.web_threads)


if __name__ == "__main__":
    main()
