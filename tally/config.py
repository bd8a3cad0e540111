"""Configuration, read from the environment in one place and passed down.

Every variable is documented in the README. An invalid value raises `ConfigError`
naming the variable; entry points turn that into one line on stderr and exit 2.

    >>> settings = from_env({"PORT": "8123"}, process_type="web")
    >>> settings.port, settings.dyno
    (8123, 'web.1')
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import urllib.parse
from collections.abc import Mapping

from tally.env import ConfigError, EnvReader, SmtpServer, email_address

# The smallest Heroku Postgres plan allows 20 connections; see README "Connection budget".
# Web threads do not each hold a connection: a view waits for a shared INSERT (group
# commit), so 16 threads keep one process busy under load on 4 connections.
DEFAULT_WEB_THREADS = 16
DEFAULT_WEB_POOL_SIZE = 4
DEFAULT_WORKER_CONCURRENCY = 4
# procrastinate stops heart-beating while a worker drains, so a worker is only
# stalled once it has been silent for longer than a drain plus one heartbeat.
DEFAULT_HEARTBEAT_SECONDS = 10.0
DEFAULT_GRACEFUL_SECONDS = 20.0  # Heroku sends SIGKILL 30 s after SIGTERM
DEFAULT_STALLED_AFTER_SECONDS = 60.0
# After WORKER_GRACEFUL_SECONDS a drain aborts what still runs and waits this long at most
# before it leaves those jobs to the liveness sweep (jobs/worker_process.py): 20 + 5 s < 30 s.
DRAIN_ABORT_SECONDS = 5.0
# Rows per cleanup transaction: large enough to delete at a good fraction of one
# DELETE's rate, small enough that each batch stays well under 250 ms (docs/BENCHMARKS.md).
DEFAULT_CLEANUP_BATCH_SIZE = 10_000
# Stats this many seconds old still beat loading the primary; past it the owner would see
# numbers visibly behind what the tracker just sent, and reads go to the primary.
DEFAULT_REPLICA_MAX_LAG_SECONDS = 30.0


REPORT_SCHEDULES = ("weekly", "monthly", "off")
# DATABASE_POOLER: what sits between Tally and PostgreSQL on DATABASE_URL. A transaction-mode
# pooler (PgBouncer, Heroku's connection pooling) hands each transaction to whichever server
# connection is free, so nothing that lives in a session works through it: prepared statements,
# LISTEN, a session advisory lock (README "PgBouncer").
POOLERS = ("none", "transaction")


@dataclasses.dataclass(frozen=True)
class Config:
    process_type: str
    dyno: str
    database_url: str | None
    port: int
    retention_days: int
    admin_token: str | None
    web_threads: int
    web_pool_size: int
    worker_concurrency: int
    listen_notify: bool
    poll_interval_seconds: float
    heartbeat_seconds: float
    graceful_seconds: float
    stalled_after_seconds: float
    cleanup_batch_size: int
    job_retention_hours: int
    cleanup_schedule: str
    retry_stalled_schedule: str
    prune_schedule: str
    rollup_schedule: str
    log_level: str
    # Who may read what (tally/web/auth.py): share links, the scraper's token, public mode.
    share_token: str | None = None
    metrics_token: str | None = None
    public_dashboard: bool = False
    # Nothing hangs (README "Timeouts"): a limit on every job attempt, liveness by session.
    job_timeout_seconds: float = 600.0
    worker_session_liveness: bool = True
    # Collecting from websites (issue 11): which sites' views are accepted (None: any, a
    # documented risk), and when the clock rotates the visitor hash's daily salt.
    sites: frozenset[str] | None = None
    salt_schedule: str = "5 * * * *"
    # The IANA zone whose days stats count (?tz= overrides it per request).
    timezone: str = "UTC"
    # Reports by email (issue 21): the server, the sender, (site or None for every site,
    # address) pairs, and which period the clock's send_reports mails ('off': none).
    smtp: SmtpServer | None = None
    report_from: str = "tally@localhost"
    report_recipients: tuple[tuple[str | None, str], ...] = ()
    report_schedule: str = "off"
    # The dashboard's public address, for the reports' links (default: http://localhost:PORT).
    tally_url: str = "http://localhost:5000"
    tally_url_set: bool = False  # TALLY_URL given: the dashboard's tag names it, not the request's host
    # A streaming replica for the owner's reads (issue 19; tally/web/replica.py), and the lag
    # past which those reads go to the primary instead. Only the web reads from it.
    database_replica_url: str | None = dataclasses.field(default=None, repr=False)
    replica_max_lag_seconds: float = DEFAULT_REPLICA_MAX_LAG_SECONDS
    # 'transaction': DATABASE_URL goes through a transaction-mode pooler (no prepared statements,
    # no LISTEN, no session lock; the release step refuses it).
    database_pooler: str = "none"

    @property
    def through_transaction_pooler(self) -> bool:
        return self.database_pooler == "transaction"


def from_env(environ: Mapping[str, str] | None = None, *, process_type: str) -> Config:
    """Build a `Config` from `environ` (default `os.environ`) for one process type."""
    env = os.environ if environ is None else environ
    reader = EnvReader(env)
    pooler = _pooler_settings(reader, process_type)
    config = Config(
        process_type=process_type,
        dyno=reader.name("DYNO", f"{process_type}.1"),
        database_url=reader.database_url("DATABASE_URL"),
        # Only the web listens: honcho gives the worker and the clock PORT+100 and +200, past
        # 65535 for a high PORT, and they need none.
        port=reader.integer("PORT", 5000, low=1, high=65535) if process_type == "web" else 5000,
        retention_days=reader.integer("RETENTION_DAYS", 30, low=1, high=36500),
        admin_token=reader.optional_text("ADMIN_TOKEN"),
        web_threads=reader.integer("WEB_THREADS", DEFAULT_WEB_THREADS, low=1, high=256),
        # Two at least: reads take all but two (tally/web/replica.py), one for the views' inserts.
        web_pool_size=reader.integer("WEB_POOL_SIZE", DEFAULT_WEB_POOL_SIZE, low=2, high=64),
        worker_concurrency=reader.integer("WORKER_CONCURRENCY", DEFAULT_WORKER_CONCURRENCY, low=1, high=64),
        poll_interval_seconds=reader.number("POLL_INTERVAL_SECONDS", 5.0, low=0.1, high=3600),
        heartbeat_seconds=reader.number(
            "WORKER_HEARTBEAT_SECONDS", DEFAULT_HEARTBEAT_SECONDS, low=0.1, high=3600
        ),
        graceful_seconds=reader.number("WORKER_GRACEFUL_SECONDS", DEFAULT_GRACEFUL_SECONDS, low=0, high=3600),
        stalled_after_seconds=reader.number(
            "STALLED_AFTER_SECONDS", DEFAULT_STALLED_AFTER_SECONDS, low=1, high=86400
        ),
        cleanup_batch_size=reader.integer(
            "CLEANUP_BATCH_SIZE", DEFAULT_CLEANUP_BATCH_SIZE, low=1, high=1_000_000
        ),
        job_retention_hours=reader.integer("JOB_RETENTION_HOURS", 168, low=1, high=87600),
        cleanup_schedule=reader.cron("CLEANUP_SCHEDULE", "0 * * * *"),
        retry_stalled_schedule=reader.cron("RETRY_STALLED_SCHEDULE", "* * * * *"),
        prune_schedule=reader.cron("PRUNE_SCHEDULE", "30 3 * * *"),
        rollup_schedule=reader.cron("ROLLUP_SCHEDULE", "* * * * *"),
        log_level=reader.choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
        # Who may read what (tally/web/auth.py).
        share_token=reader.optional_text("SHARE_TOKEN"),
        metrics_token=reader.optional_text("METRICS_TOKEN"),
        public_dashboard=reader.boolean("PUBLIC_DASHBOARD", False),
        job_timeout_seconds=reader.number("JOB_TIMEOUT_SECONDS", 600.0, low=0.1, high=7 * 86400),
        # Collecting from websites.
        sites=reader.host_names("SITES"),
        salt_schedule=reader.cron("SALT_SCHEDULE", "5 * * * *"),
        timezone=reader.time_zone("TIMEZONE", "UTC"),
        **_report_settings(reader),
        **_replica_settings(reader),
        **pooler,
    )
    _check_tokens_differ(config)
    if config.stalled_after_seconds <= config.graceful_seconds + config.heartbeat_seconds:
        raise ConfigError(
            "STALLED_AFTER_SECONDS must exceed WORKER_GRACEFUL_SECONDS + "
            f"WORKER_HEARTBEAT_SECONDS ({config.graceful_seconds:g} + "
            f"{config.heartbeat_seconds:g}), or a draining worker's job would run twice"
        )
    silent = config.graceful_seconds + DRAIN_ABORT_SECONDS + config.heartbeat_seconds
    if not config.worker_session_liveness and config.stalled_after_seconds <= silent:
        # Without the session lock only the heartbeat tells a draining worker from a dead one.
        raise ConfigError(
            f"STALLED_AFTER_SECONDS must exceed WORKER_GRACEFUL_SECONDS + {DRAIN_ABORT_SECONDS:g}"
            f" + WORKER_HEARTBEAT_SECONDS ({silent:g}) with WORKER_SESSION_LIVENESS=false (as"
            " DATABASE_POOLER=transaction makes it), or a draining worker's aborted job would run twice"
        )
    return config


def _pooler_settings(reader: EnvReader, process_type: str) -> dict:
    """DATABASE_POOLER, and what a transaction pooler rules out: LISTEN_NOTIFY and
    WORKER_SESSION_LIVENESS default to false behind one, and cannot be true there (a
    notification reaches a server connection no worker listens on; a worker's lock stays on a
    pooled server connection after the worker died). The release step refuses it: its lock is
    a session's, and through a pooler it stayed on a server connection for an hour, wedging
    every release after it."""
    pooler = reader.choice("DATABASE_POOLER", "none", POOLERS)
    pooled = pooler == "transaction"
    if pooled and process_type == "release":
        raise ConfigError(
            "DATABASE_POOLER=transaction: the release step holds a session lock and must run on the"
            " direct database URL, not through the pooler (set DATABASE_POOLER and the pooler's URL"
            " only for the processes that use it)"
        )
    settings = {
        "database_pooler": pooler,
        "listen_notify": reader.boolean("LISTEN_NOTIFY", not pooled),
        "worker_session_liveness": reader.boolean("WORKER_SESSION_LIVENESS", not pooled),
    }
    for name, why in (
        ("LISTEN_NOTIFY", "notifications reach a server connection no worker listens on"),
        ("WORKER_SESSION_LIVENESS", "a worker's lock outlives the worker on a pooled server connection"),
    ):
        if pooled and settings[name.lower()]:
            raise ConfigError(
                f"{name}=true cannot work with DATABASE_POOLER=transaction ({why}): leave it unset,"
                " or run workers on the direct URL without DATABASE_POOLER"
            )
    return settings


def _report_settings(reader: EnvReader) -> dict:
    """SMTP_URL, REPORT_FROM, REPORT_RECIPIENTS, REPORT_SCHEDULE, TALLY_URL; no SMTP_URL or no
    recipients: no reports (the schedule is then 'off')."""
    smtp = reader.smtp_url("SMTP_URL")
    recipients = reader.recipients("REPORT_RECIPIENTS")
    default_schedule = "weekly" if smtp and recipients else "off"
    schedule = reader.choice("REPORT_SCHEDULE", default_schedule, REPORT_SCHEDULES)
    host = smtp.host if smtp else socket.gethostname() or "localhost"
    given_from = reader.text("REPORT_FROM", f"tally@{host}")
    report_from = email_address(given_from)
    if report_from is None:
        raise ConfigError(
            f"REPORT_FROM={given_from!r} is invalid: expected an address such as tally@example.com"
        )
    port = reader.text("PORT", "5000")  # the web's (validated there); others get PORT+100 from honcho
    tally_url = reader.text("TALLY_URL", f"http://localhost:{port}").rstrip("/")
    parts = urllib.parse.urlsplit(tally_url)
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in tally_url:
        raise ConfigError(f"TALLY_URL={tally_url!r} is invalid: expected https://host")
    return {
        "smtp": smtp,
        "report_from": report_from,
        "report_recipients": recipients,
        "report_schedule": schedule.lower() if recipients and smtp else "off",
        "tally_url": tally_url,
        "tally_url_set": reader.optional_text("TALLY_URL") is not None,
    }


def _replica_settings(reader: EnvReader) -> dict:
    """DATABASE_REPLICA_URL and REPLICA_MAX_LAG_SECONDS; a replica URL equal to DATABASE_URL
    would only be the primary read twice over."""
    replica_url = reader.database_url("DATABASE_REPLICA_URL")
    if replica_url is not None and replica_url == reader.optional_text("DATABASE_URL"):
        raise ConfigError("DATABASE_REPLICA_URL must name a replica, not the DATABASE_URL itself")
    # Below a second the lag, measured every half second, would flap; past a day, stats lie.
    max_lag = reader.number("REPLICA_MAX_LAG_SECONDS", DEFAULT_REPLICA_MAX_LAG_SECONDS, low=1, high=86400)
    return {"database_replica_url": replica_url, "replica_max_lag_seconds": max_lag}


def _check_tokens_differ(config: Config) -> None:
    """A share link or the scraper's token that equals a stronger token would hand that one out."""
    if config.share_token and config.share_token in (config.admin_token, config.metrics_token):
        other = "ADMIN_TOKEN" if config.share_token == config.admin_token else "METRICS_TOKEN"
        raise ConfigError(f"SHARE_TOKEN must differ from {other}: share links are put in URLs")
    if config.metrics_token and config.metrics_token == config.admin_token:
        raise ConfigError(
            "METRICS_TOKEN must differ from ADMIN_TOKEN (leave it unset to scrape with the admin token)"
        )


def load_or_exit(process_type: str) -> Config:
    """Read the environment for an entry point; a bad value ends the process with one line."""
    try:
        config = from_env(process_type=process_type)
        if config.database_url is None and os.environ.get("DYNO", "").strip():
            # The local database on a dyno is a server of its own in the dyno's filesystem:
            # each dyno would count its own views and lose them all at the next restart.
            raise ConfigError(
                "DATABASE_URL is not set: on a dyno, attach a database (heroku addons:create"
                " heroku-postgresql); the local one is for a development machine"
            )
        return config
    except ConfigError as error:
        # Logs go to stdout only (see DESIGN); this is the one line an operator needs.
        # Name the program that failed: web.py also reads the jobs' settings.
        program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
        if program in ("", "__main__.py", "-c"):
            program = process_type
        print(f"tally {program}: configuration error: {error}", flush=True)
        raise SystemExit(2) from None
