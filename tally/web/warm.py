"""Readers' answers made again as soon as a rollup lands, so that their next request finds the
rolled-up part read.

A window's rolled-up part is read once per rollup state and 15-minute bucket, then kept
(tally/web/stats.py): at 1M views about 0.4 s for a month (a dashboard, which compares with the
month before, twice that), paid by the first request after each rollup. With a rollup a minute
and a dashboard that reloads every 30 s, one load in two. So a thread of the web process looks
at the rollup state every POLL_SECONDS and, when it or the bucket moved, asks again for the
unfiltered answers readers asked for in the last KEEP_WARM_SECONDS, one at a time, through the
same reads (the replica when it serves them), and the readers' requests find them kept.
What it costs: a rollup comes once a minute from the clock, and sooner only when a reader's
request finds more than 1,000 views in the tail (tally/web/stats.py): so about one warm-up per
answer per rollup, the read that the first request after each rollup made before. Filtered
answers are carried forward by the ids that changed (tally/web/carried.py): a rollup does not
make them read again. Nothing here is needed for an answer to be right: a warm-up
that fails is a debug line, and the request reads what it needs, as before.

    >>> warm = WarmAnswers(stats, reads); warm.start()   # doctest: +SKIP
    >>> warm.close()                                      # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading

import psycopg_pool

from tally.db import QUERIES
from tally.logs import describe_error
from tally.web.replica import ReadRouter
from tally.web.stats import StatsReader
from tally.web.windows import bucket_of

logger = logging.getLogger("tally.web.warm")

# How often the rollup state is read: a query of well under a millisecond.
POLL_SECONDS = 1.0
# Answers asked for longer ago than this are left to the next reader (a dashboard left open
# asks every 30 s to 5 minutes: tally/web/dashboard.py, REFRESH_SECONDS).
KEEP_WARM_SECONDS = 15 * 60.0
# At most this many answers after each rollup, the latest asked first: each is a read of up to
# a second on a large site, and an owner who looked at many windows reads the rest himself.
MOST_ANSWERS = 4


class WarmAnswers:
    """The thread that asks again for readers' answers after each rollup."""

    def __init__(self, stats: StatsReader, reads: ReadRouter, poll_seconds: float = POLL_SECONDS):
        self.stats = stats
        self.reads = reads
        self.poll_seconds = poll_seconds
        self._seen: tuple | None = None  # the rollup state and bucket last warmed for
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start looking (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="warm-answers", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop; a warm-up under way ends within the web's statement timeout."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def warm_once(self) -> int:
        """If the rollup state or the 15-minute bucket moved since the last look, ask again for the
        answers readers asked for recently; how many were asked for."""
        moved = self.reads.run(_rollup_moment, background=True)  # no reader's turn, not in the metrics
        if moved == self._seen:
            return 0
        self._seen = moved
        asked = 0
        for days, site, tz, compare in self.stats.recently_asked(KEEP_WARM_SECONDS)[:MOST_ANSWERS]:
            if self._stopping.is_set():
                break
            self.reads.run(
                lambda pool, days=days, site=site, tz=tz, compare=compare: self.stats.stats_for_window(
                    days, site, tz, compare=compare, pool=pool, remember=False
                ),
                background=True,
            )
            asked += 1
        return asked

    def _run(self) -> None:
        while not self._stopping.wait(self.poll_seconds):
            try:
                self.warm_once()
            except Exception as error:  # the database down, reads busy: readers read it themselves
                logger.debug("answers not warmed: %s", describe_error(error))
                self._seen = None  # look again next time


def _rollup_moment(pool: psycopg_pool.ConnectionPool) -> tuple:
    """The rollup state and the 15-minute bucket of the database's clock: what a kept rolled-up
    part is valid for."""
    with pool.connection() as conn:
        watermark, in_progress, now, *_ = conn.execute(QUERIES["stats_state"], {"tz": "UTC"}).fetchone()
    return watermark, tuple(in_progress), bucket_of(now)
