"""web.py with one of its changes undone: the ingest benchmark's baselines for what each buys.

The same entry file, settings, pool and routes, with one piece swapped:

--no-group-commit   each request inserts its own views, one INSERT and commit each, in its
                    own thread, as the web did before tally/web/view_writer.py
--plain-waitress    served by plain `waitress.serve` with the same settings, without
                    tally.web.serving's dispatcher that yields the GIL after queueing a task
--no-commit-delay   group commit without its commit delay: a leader inserts the requests
                    waiting when it takes the lead, however busy the web is

$ PORT=8123 python -m bench.web_variant --no-group-commit
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence

import psycopg_pool
from prometheus_client import Counter
from waitress.task import ThreadedTaskDispatcher

import tally.web.app
import tally.web.serving
import tally.web.view_writer
import web
from tally.web.later import Later
from tally.web.view_writer import View, insert_views


class OneInsertPerRequest:
    """ViewWriter's interface: store `views` in one INSERT on a pooled connection, now."""

    def __init__(
        self, pool: psycopg_pool.ConnectionPool, inserts: Counter | None = None, stored: Counter | None = None
    ):
        self.pool = pool
        self.inserts = inserts
        self.stored = stored

    def write(self, views: Sequence[View], later: Later | None = None) -> None:
        """Insert and commit in the request's own thread; `later` goes unused, so the answer is
        sent as before answers were held (tally/web/later.py): the thread waits for its commit."""
        insert_views(self.pool, views)
        if self.inserts is not None:
            self.inserts.inc()
        if self.stored is not None:
            self.stored.inc(len(views))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.web_variant")
    parser.add_argument("--no-group-commit", action="store_true")
    parser.add_argument("--plain-waitress", action="store_true")
    parser.add_argument("--no-commit-delay", action="store_true")
    args = parser.parse_args(argv)
    # web.main and build_app look these names up when they run.
    if args.no_group_commit:
        tally.web.app.ViewWriter = OneInsertPerRequest
    if args.no_commit_delay:
        tally.web.app.ViewWriter = functools.partial(
            tally.web.view_writer.ViewWriter, commit_delay_seconds=0.0
        )
    if args.plain_waitress:
        tally.web.serving.serve = functools.partial(
            tally.web.serving.serve, dispatcher_class=ThreadedTaskDispatcher
        )
    web.main()


if __name__ == "__main__":
    main(sys.argv[1:])
