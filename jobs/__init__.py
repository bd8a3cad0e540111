"""The procrastinate app the worker runs: `jobs.app`.

Both `python worker.py` and `procrastinate --app=jobs.app worker` run it with the same
settings (`worker_defaults`). Periodic schedules are registered by clock.py only, so a
worker never defers periodic jobs.

    $ procrastinate --app=jobs.app defer cleanup_old_page_views '{}'
"""

from __future__ import annotations

import sys

import procrastinate

from jobs.drain import BoundedDrainWorker
from jobs.middleware import check_arguments, end_aborted_when_asked, record_job_errors
from jobs.time_limit import enforce_time_limit
from tally import config, logs, queue_connector

settings = config.load_or_exit("worker")

# `procrastinate --app=jobs.app worker` logs as `python worker.py` does (README, "The process model"): the
# CLI loads this module before it sets up logging with `logging.basicConfig`, which does nothing
# once the root logger has a handler; else it logged to stderr in its own format, tracebacks on
# many lines, at its own level. Only for the CLI's worker: its other commands print their
# answers, and tests that run workers in-process read their log through pytest's capture.
CLI_WORKER = logs.cli_command(sys.argv) == "worker"
if CLI_WORKER:
    logs.setup_logging(settings)
    sys.stderr = logs.StderrToLog()
    logs.log_start(
        settings,
        "procrastinate",
        command="worker",
        concurrency=settings.worker_concurrency,
        listen_notify=settings.listen_notify,
    )


def worker_options(settings: config.Config) -> dict:
    """How every worker of this app runs (see README "Worker settings")."""
    return {
        "name": settings.dyno,
        "concurrency": settings.worker_concurrency,
        "listen_notify": settings.listen_notify,
        "fetch_job_polling_interval": settings.poll_interval_seconds,
        "abort_job_polling_interval": settings.poll_interval_seconds,
        "shutdown_graceful_timeout": settings.graceful_seconds,
        "update_heartbeat_interval": settings.heartbeat_seconds,
        # A worker prunes silent workers at start-up, which frees their jobs for
        # retry_stalled_jobs: the same threshold, longer than a drain, applies.
        "stalled_worker_timeout": settings.stalled_after_seconds,
        # Outermost first: the error middleware records a JobTimedOut, or wrong arguments, like any error.
        "worker_middleware": [
            record_job_errors,
            end_aborted_when_asked,
            check_arguments,
            enforce_time_limit(settings.job_timeout_seconds),
        ],
    }


class TallyApp(procrastinate.App):
    """procrastinate's app, whose workers end their drain within a bound: the CLI's worker
    (`procrastinate --app=jobs.app worker`) builds its worker here, and procrastinate's own
    waited for an aborted job with no bound (jobs/drain.py)."""

    def _worker(self, **kwargs):
        return BoundedDrainWorker(app=self, **{**self.worker_defaults, **kwargs})


app = TallyApp(
    connector=queue_connector.procrastinate_connector(settings),
    worker_defaults=worker_options(settings),
)

# Register the tasks on `app`; they import it, so this comes last.
from jobs import page_views, partitions, queue_upkeep, rebuild, reports, visitor_salts  # noqa: E402, F401
