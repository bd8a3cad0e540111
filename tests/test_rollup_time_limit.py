"""The rollup folds every view not yet folded in one statement, and an attempt cut by a time
limit keeps nothing: a backlog that takes longer than JOB_TIMEOUT_SECONDS to fold (a backfill of
a few million views by SQL, a worker down for hours on a busy site) was cut and started again
from nothing every minute, for good, while unfiltered stats answered 503 and cleanup (which
rolls up first) failed on the rollup's lock."""

from __future__ import annotations

import pytest

from tests.conftest import defer_by_sql, statuses, wait_until

pytestmark = pytest.mark.slow


def test_a_rollup_longer_than_the_job_time_limit_still_finishes(start_process, conn):
    conn.execute(
        "INSERT INTO page_views (path, viewed_at, site, visitor)"
        " SELECT '/p' || g % 100, now() - random() * interval '20 days', 'a.example', g % 20000"
        " FROM generate_series(1, 60000) g"
    )
    worker = start_process(["worker.py"], {"JOB_TIMEOUT_SECONDS": "1"})
    worker.wait_for_line("Starting worker")
    defer_by_sql(conn, "rollup_page_views", lock="rollup_page_views")

    def ended() -> bool:
        jobs = statuses(conn, "rollup_page_views")
        return bool(jobs) and jobs[-1] not in ("todo", "doing")

    wait_until(ended, 120, 0.2, "the rollup to end")
    assert statuses(conn, "rollup_page_views") == ["succeeded"], worker.output()[-2000:]
    assert "passed its time limit" not in worker.output()
    waiting = conn.execute(
        "SELECT count(*) FROM page_views v, page_view_rollup_state s"
        " WHERE v.recorded_xid >= s.watermark OR v.recorded_xid = ANY (s.in_progress)"
    ).fetchone()[0]
    assert waiting == 0
