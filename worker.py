"""worker: runs the jobs of `jobs.app`, woken by LISTEN/NOTIFY. Procfile: `worker: python worker.py`.

SIGTERM (or Ctrl-C) drains: running jobs get WORKER_GRACEFUL_SECONDS to finish, then are
aborted; the process exits 0 at most 5 s later, inside Heroku's 30 s. When the database
goes away the worker starts over once it is back, without a process restart. The machinery
(session lock, side tasks, restarts) is jobs/worker_process.py's.
"""

from __future__ import annotations

import asyncio

import jobs
from jobs.worker_process import run_until_stopped
from tally import logs


def main() -> None:
    settings = jobs.settings
    logs.setup_logging(settings)
    options = jobs.worker_options(settings)
    logs.log_start(
        settings, "worker.py", concurrency=settings.worker_concurrency, listen_notify=settings.listen_notify
    )
    asyncio.run(run_until_stopped(jobs.app, options))


if __name__ == "__main__":
    main()
