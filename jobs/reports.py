"""send_reports: mail each site's report of the last full week or month to its recipients,
each (site, period, recipient) once (docs/ARCHITECTURE.md, "Reports, once").

Every delivery is a row of tally_report_deliveries. Before talking to the SMTP server the
job claims the row ('sending') in a statement committed on its own; once the server has
accepted the message it marks the row 'sent'. A row already 'sent' or 'failed' is never
claimed again, so a second clock tick, a retry, a manual defer or a rerun sends nothing
delivered. A worker killed mid-run leaves its row in 'sending': the rescued job (the
liveness sweep re-queues it) claims it again and sends it with the same Message-ID. Jobs
of this task run one at a time (a procrastinate lock), so a row in 'sending' found by a
running job is never being sent by another.

    $ procrastinate --app=jobs.app defer send_reports '{}'
    $ procrastinate --app=jobs.app defer send_reports '{"period": "monthly"}'
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import time
import zoneinfo
from collections.abc import Callable, Iterator
from email.message import EmailMessage

import psycopg_pool
from procrastinate import JobContext, RetryStrategy
from procrastinate.exceptions import JobAborted
from procrastinate.jobs import Job
from procrastinate.retry import RetryDecision

from jobs import app, settings
from jobs.middleware import WrongArguments
from tally import db, mail, reports
from tally.checked_pool import check_if_hung_up_sync
from tally.config import Config
from tally.db import QUERIES
from tally.env import SmtpServer
from tally.web.stats import StatsReader

logger = logging.getLogger("jobs.reports")

# A temporary failure (4xx, a dropped connection) is tried again at once a few times, a
# little later each time, then left 'retrying' for the job's own five retries (4, 16, 64, 256, 1024 s
# later) and, past those, for the next clock tick. A delivery claimed this many times in
# all is given up ('failed'): no report is retried forever.
SEND_TRIES = 3
SEND_BACKOFF_SECONDS = 1.0
MAX_DELIVERY_ATTEMPTS = 10


class ReportRetry(RetryStrategy):
    """Retry after 4, 16, 64, 256, 1024 s, except for an argument that will never be right."""

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        if isinstance(exception, UnknownPeriod | WrongArguments):
            return None
        return super().get_retry_decision(exception=exception, job=job)


REPORT_RETRY = ReportRetry(max_attempts=5, exponential_wait=4)
# Periods one run sends at most: the last full one, and those a stopped clock missed before it
# (tally/reports.py, `periods_to_send`).
CATCH_UP_PERIODS = 4
# The session advisory lock one run of send_reports holds (any fixed 64-bit number).
RUN_LOCK_KEY = 7_245_021_001


class ReportsNotDelivered(Exception):
    """Some reports met temporary failures only: the job is retried for them."""


class PeriodNotOverInTheDatabase(ReportsNotDelivered):
    """The clock's tick says a period is over, the database's clock not yet: tried again later."""


class UnknownPeriod(ValueError):
    """The job's `period` argument is neither weekly nor monthly."""


@contextlib.contextmanager
def report_pool(config: Config) -> Iterator[psycopg_pool.ConnectionPool]:
    """Two connections of the job's own while it runs: one holds the run's lock, the other
    reads stats (StatsReader reads through a pool) and claims deliveries."""
    with psycopg_pool.ConnectionPool(
        db.conninfo_for(config),
        min_size=2,
        max_size=2,
        timeout=db.POOL_WAIT_SECONDS,
        kwargs=db.connection_kwargs(config, db.WORKER_SESSION_SETTINGS, autocommit=True),
        check=check_if_hung_up_sync,  # a delivery recorded after a restart, not sent again
        name=f"{config.dyno}-reports",
    ) as pool:
        yield pool


@contextlib.contextmanager
def one_run_at_a_time(pool: psycopg_pool.ConnectionPool) -> Iterator[None]:
    """Hold the run's session lock: a second run (deferred by SQL, without procrastinate's
    lock) waits for it, up to the worker's lock_timeout (5 s), then fails and is retried.
    The lock ends with its session, so a killed worker's run leaves it free at once."""
    with pool.connection() as conn:
        conn.execute(QUERIES["lock_report_run"], {"key": RUN_LOCK_KEY})
        try:
            yield
        finally:
            conn.execute(QUERIES["unlock_report_run"], {"key": RUN_LOCK_KEY})


def recipients_by_site(
    pool: psycopg_pool.ConnectionPool, config: Config, period: reports.Period
) -> dict[str, list[str]]:
    """Each site's recipients: the every-site addresses when the site had views in the
    period, and its own `site=address` pairs (whatever its views)."""
    everywhere = [address for site, address in config.report_recipients if site is None]
    named: dict[str, list[str]] = {}
    for site, address in config.report_recipients:
        if site is not None:
            named.setdefault(site, []).append(address)
    with_views: set[str] = set()
    if everywhere:
        zone = zoneinfo.ZoneInfo(config.timezone)
        start = datetime.datetime.combine(period.first_day, datetime.time(), zone)
        end = datetime.datetime.combine(period.last_day + reports.ONE_DAY, datetime.time(), zone)
        with pool.connection() as conn:
            # The state first: a view rolled up meanwhile is in the buckets and still above it.
            watermark, in_progress, *_ = conn.execute(QUERIES["rollup_state"]).fetchone()
            bounds = {"start": start, "end": end, "watermark": watermark, "in_progress": in_progress}
            with_views = {site for (site,) in conn.execute(QUERIES["report_sites"], bounds)}
    sites = {}
    for site in sorted(with_views | set(named)):
        addresses = list(everywhere) if site in with_views else []
        addresses += [address for address in named.get(site, []) if address not in addresses]
        sites[site] = addresses
    return sites


def deliver(server: SmtpServer, message: EmailMessage, should_abort: Callable[[], bool]) -> None:
    """Send, trying a temporary failure again SEND_TRIES times in all, a little later each time."""
    for attempt in range(SEND_TRIES):
        try:
            mail.send(server, message, should_abort)
            return
        except mail.TemporaryFailure:
            if attempt == SEND_TRIES - 1 or should_abort():
                raise
            time.sleep(SEND_BACKOFF_SECONDS * 2**attempt)


def send_period(
    pool: psycopg_pool.ConnectionPool,
    config: Config,
    period: reports.Period,
    today: datetime.date,
    should_abort: Callable[[], bool],
) -> dict[str, int]:
    """Send what is left of one period's reports; return how many ended in each state."""
    outcome = {"sent": 0, "failed": 0, "retrying": 0, "already_done": 0}
    reader = StatsReader(pool, config.retention_days)
    for site, addresses in sorted(recipients_by_site(pool, config, period).items()):
        report = reports.build(reader, site, period, config.timezone, config.tally_url, today)
        html, text = report.html(), report.text()
        for recipient in addresses:
            if should_abort():
                raise JobAborted(
                    "send_reports stopped, as asked, between two messages; the rest go with its next run"
                )
            key = {"site": site, "period": period.name, "recipient": recipient}
            identity = mail.message_id(site, period.name, recipient, config.report_from)
            with pool.connection() as conn:  # committed before the server hears of it
                claimed = conn.execute(
                    QUERIES["claim_report_delivery"], {**key, "message_id": identity}
                ).fetchone()
            if claimed is None:
                outcome["already_done"] += 1
                continue
            message_id, attempts = claimed
            status, error, unreachable = "sent", None, None
            if attempts > MAX_DELIVERY_ATTEMPTS:
                status, error = "failed", f"given up after {MAX_DELIVERY_ATTEMPTS} attempts"
            else:
                message = mail.compose(
                    config.report_from, recipient, report.subject, text, html, message_id=message_id
                )
                try:
                    deliver(config.smtp, message, should_abort)
                except mail.PermanentFailure as failure:
                    status, error = "failed", str(failure)
                except mail.TemporaryFailure as failure:
                    status, error = "retrying", str(failure)
                    unreachable = failure if isinstance(failure, mail.ServerUnreachable) else None
            with pool.connection() as conn:
                conn.execute(QUERIES["finish_report_delivery"], {**key, "status": status, "error": error})
            if unreachable is not None:  # every recipient would wait out its tries alike (3 s each)
                logger.warning("report %s %s to %s: retrying (%s)", site, period.name, recipient, error)
                raise unreachable
            outcome[status] += 1
            if status != "sent":
                logger.warning("report %s %s to %s: %s (%s)", site, period.name, recipient, status, error)
    return outcome


@app.task(name="send_reports", pass_context=True, lock="send_reports", retry=REPORT_RETRY)
def send_reports(context: JobContext, timestamp: int | None = None, period: str | None = None) -> dict:
    """Mail the last full week's (or month's) report of each site to its recipients, each once."""
    # The argument first: a typo fails now, not on the first run after mail is set up.
    kind = period or (settings.report_schedule if settings.report_schedule != "off" else "weekly")
    if kind not in reports.PERIODS:
        raise UnknownPeriod(f"period must be one of {', '.join(reports.PERIODS)}, not {kind!r}")
    if settings.smtp is None or not settings.report_recipients:
        logger.info("send_reports: SMTP_URL or REPORT_RECIPIENTS unset, nothing to send")
        return {}
    outcome = {"sent": 0, "failed": 0, "retrying": 0, "already_done": 0}
    with report_pool(settings) as pool, one_run_at_a_time(pool):
        with pool.connection() as conn:
            last_claimed, unfinished = conn.execute(QUERIES["last_report_period"], {"kind": kind}).fetchone()
            (now,) = conn.execute(QUERIES["database_now"]).fetchone()
        # Today is the database's, as every day Tally counts: a clock host ahead of it ticks at
        # Monday 00:00 while the database is still in Sunday, and the week is not over there.
        today = reports.local_today(settings.timezone, now)
        if timestamp:
            ticked = reports.local_today(
                settings.timezone, datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
            )
            if reports.last_full_period(kind, ticked).name > reports.last_full_period(kind, today).name:
                raise PeriodNotOverInTheDatabase(
                    f"the clock ticked on {ticked}, the database's clock says {today}: "
                    f"{reports.last_full_period(kind, ticked).name} is not over there yet"
                )
        for chosen in reports.periods_to_send(kind, today, last_claimed, CATCH_UP_PERIODS, unfinished):
            try:
                done = send_period(pool, settings, chosen, today, context.should_abort)
            except mail.ServerUnreachable as error:
                raise ReportsNotDelivered(
                    f"the mail server could not be reached ({error}): the reports not sent yet wait for"
                    " the job's retry"
                ) from None
            logger.info("send_reports %s: %s", chosen.name, done)
            outcome = {state: outcome[state] + done[state] for state in outcome}
    if outcome["retrying"]:
        raise ReportsNotDelivered(f"{outcome['retrying']} report(s) met temporary failures; retrying later")
    return outcome
