"""web: page views in, stats and dashboard out, on $PORT. Procfile: `web: python web.py`.

Bottle on waitress: WEB_THREADS threads share WEB_POOL_SIZE database connections, and
concurrent requests' views share one INSERT (tally/web/view_writer.py). It never runs jobs:
it only defers them for the worker.
"""

from __future__ import annotations

import errno
import logging
import sys

import jobs
from tally import config, db, logs, malloc
from tally.web import serving
from tally.web.app import build_app
from tally.web.replica import ReadRouter


def main() -> None:
    settings = config.load_or_exit("web")
    malloc.limit_arenas()  # before any thread starts: two arenas, not one per thread (tally/malloc.py)
    logs.setup_logging(settings)
    pool = db.web_pool(settings)
    pool.open(wait=False)  # serve (and answer 503 on health) even before the database is up
    # DATABASE_REPLICA_URL: the owner's reads from a replica while it is fit (tally/web/replica.py).
    replica = db.replica_pool(settings) if settings.database_replica_url else None
    reads = ReadRouter(pool, replica, settings)
    reads.start()
    app = build_app(settings, pool, jobs.app, reads)
    warm = app.config["tally.warm_answers"]  # readers' answers read again after each rollup
    warm.start()
    logs.log_start(
        settings,
        "web.py",
        port=settings.port,
        threads=settings.web_threads,
        connections=settings.web_pool_size,
        replica_connections=db.REPLICA_POOL_SIZE + 1 if replica else 0,
    )
    # Heroku stops a dyno with SIGTERM: serving drains the open connections, then returns.
    try:
        serving.serve(app, port=settings.port, threads=settings.web_threads)
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise
        logging.getLogger("tally").error(
            "PORT=%s is in use by another process: stop it, or set PORT", settings.port
        )
        sys.exit(1)
    finally:
        warm.close()
        reads.close()
        pool.close()


if __name__ == "__main__":
    main()
