"""web: page views in, stats and dashboard out, on $PORT. Procfile: `web: python web.py`.

Bottle on waitress; one database connection per waitress thread. It never runs jobs:
it only defers them for the worker.
"""

from __future__ import annotations

import signal
import sys

import waitress

import jobs
from tally import config, db, logs
from tally.webapp import build_app


def main() -> None:
    settings = config.load_or_exit("web")
    logs.setup_logging(settings)
    pool = db.web_pool(settings)
    pool.open(wait=False)  # serve (and answer 503 on health) even before the database is up
    app = build_app(settings, pool, jobs.app)
    logs.log_start(settings, "web.py", port=settings.port, threads=settings.web_threads)
    # Heroku stops a dyno with SIGTERM: exit cleanly instead of dying mid-write.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        waitress.serve(
            app,
            host="0.0.0.0",
            port=settings.port,
            threads=settings.web_threads,
            ident="tally",
            # Bodies past this get waitress's own 413 before they are buffered; up to it,
            # the app answers 413 in JSON for anything over 1 MiB.
            max_request_body_size=2 * 1024 * 1024,
        )
    finally:
        pool.close()


if __name__ == "__main__":
    main()
