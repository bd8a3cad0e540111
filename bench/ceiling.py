"""The HTTP ceiling: a Bottle route answering constant JSON, served exactly as web.py serves Tally.

The ingest benchmark's baseline: what waitress and Bottle cost on this machine with no
database at all. Same configuration (WEB_THREADS), logging and waitress settings as web.py,
served by tally.web.serving.serve (waitress with the dispatcher that yields the GIL).

With --plain it is served by plain `waitress.serve` with the same settings and waitress's
own dispatcher: what tally.web.serving's one change buys, measured beside it.

$ PORT=8123 python -m bench.ceiling
$ PORT=8123 python -m bench.ceiling --plain
"""

from __future__ import annotations

import json
import signal
import sys

import bottle
from waitress.task import ThreadedTaskDispatcher

from tally import config, logs
from tally.web import serving

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


def serve_plain(app: bottle.Bottle, port: int, threads: int) -> None:
    """tally.web.serving.serve's settings on waitress's own dispatcher (no GIL hand-off)."""
    serving.serve(app, port, threads, dispatcher_class=ThreadedTaskDispatcher)


def main(argv: list[str]) -> None:
    settings = config.load_or_exit("web")
    logs.setup_logging(settings)
    plain = "--plain" in argv
    program = "bench/ceiling.py --plain" if plain else "bench/ceiling.py"
    logs.log_start(settings, program, port=settings.port, threads=settings.web_threads)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve = serve_plain if plain else serving.serve  # the default: exactly as web.py serves Tally
    serve(build_app(), port=settings.port, threads=settings.web_threads)


if __name__ == "__main__":
    main(sys.argv[1:])
