"""Configuration: defaults, and one clear line naming the variable for bad values."""

from __future__ import annotations

import pytest

from tally.config import (
    DEFAULT_GRACEFUL_SECONDS,
    DEFAULT_HEARTBEAT_SECONDS,
    DEFAULT_STALLED_AFTER_SECONDS,
    DRAIN_ABORT_SECONDS,
    ConfigError,
    from_env,
)


def test_defaults_follow_the_design():
    config = from_env({}, process_type="web")
    assert config.port == 5000
    assert config.dyno == "web.1"
    assert config.retention_days == 30
    assert config.database_url is None
    assert config.admin_token is None
    assert config.listen_notify is True
    # Threads share connections (group commit): many threads, a few connections.
    assert (config.web_threads, config.web_pool_size) == (16, 4)


def test_default_stalled_threshold_outlasts_a_drain_plus_a_heartbeat():
    # procrastinate stops heart-beating while a worker drains (its PR #1585).
    assert DEFAULT_STALLED_AFTER_SECONDS > DEFAULT_GRACEFUL_SECONDS + DEFAULT_HEARTBEAT_SECONDS
    assert DEFAULT_GRACEFUL_SECONDS < 30  # Heroku's SIGKILL comes 30 s after SIGTERM
    # A drain ends at most DRAIN_ABORT_SECONDS after its grace (jobs/worker_process.py).
    assert DEFAULT_GRACEFUL_SECONDS + DRAIN_ABORT_SECONDS <= 25
    assert (
        DEFAULT_STALLED_AFTER_SECONDS
        > DEFAULT_GRACEFUL_SECONDS + DRAIN_ABORT_SECONDS + DEFAULT_HEARTBEAT_SECONDS
    )


def test_without_the_session_lock_the_stalled_threshold_outlasts_the_drains_abort_too():
    """Such a worker is told from a dead one by its heartbeat alone, silent through its drain."""
    env = {
        "WORKER_SESSION_LIVENESS": "false",
        "WORKER_GRACEFUL_SECONDS": "20",
        "WORKER_HEARTBEAT_SECONDS": "10",
    }
    with pytest.raises(ConfigError, match="STALLED_AFTER_SECONDS"):
        from_env({**env, "STALLED_AFTER_SECONDS": "33"}, process_type="worker")
    assert from_env({**env, "STALLED_AFTER_SECONDS": "36"}, process_type="worker").stalled_after_seconds == 36
    assert from_env(
        {**env, "WORKER_SESSION_LIVENESS": "true", "STALLED_AFTER_SECONDS": "33"}, process_type="worker"
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("RETENTION_DAYS", "0"),
        ("RETENTION_DAYS", "1.5"),
        ("WORKER_CONCURRENCY", "-1"),
        ("WEB_POOL_SIZE", "0"),
        ("WEB_POOL_SIZE", "1"),  # one slow read would hold it: views refused (tally/web/replica.py)
        ("WEB_THREADS", "many"),
        ("LISTEN_NOTIFY", "maybe"),
        ("CLEANUP_SCHEDULE", "every hour"),
        ("LOG_LEVEL", "LOUD"),
        ("STALLED_AFTER_SECONDS", "5"),
        ("PUBLIC_DASHBOARD", "maybe"),
        ("PUBLIC_DASHBOARD", "public"),
        ("SITES", "example.com:8080"),
        ("SITES", "https://example.com"),
        ("SALT_SCHEDULE", "daily"),
        ("SALT_SCHEDULE", "* * * * * * *"),  # croniter's 7 fields: the clock deferred every second
        # A date no year has: the clock failed every tick (CroniterBadDateError), every schedule's.
        ("CLEANUP_SCHEDULE", "0 0 31 2 *"),
        ("PRUNE_SCHEDULE", "0 0 30 2 *"),
        ("ROLLUP_SCHEDULE", "0 0 31 4,6,9,11 *"),
        ("SITES", ","),  # set, naming no site: every view refused
        ("SITES", "b\u00fccher..de"),
        ("TALLY_URL", "https://"),  # no host: the reports' links read https:/?...
        # A byte that is not UTF-8 (Python holds it as a lone surrogate): DYNO's failed every
        # connection (application_name), ADMIN_TOKEN's stopped the web with a traceback.
        ("DYNO", "web\udcff.1"),
        # int() and float() read any script's digits: a fullwidth PORT=30 bound port 30.
        ("PORT", "\uff18\uff10\uff18\uff10"),
        ("RETENTION_DAYS", "\u0663\u0660"),
        ("POLL_INTERVAL_SECONDS", "\uff15"),
        ("PORT", "8_080"),  # and underscores, as Python's literals do
        ("POLL_INTERVAL_SECONDS", "1_0"),
        ("ADMIN_TOKEN", "s3cret\udcff"),
        ("TIMEZONE", "Mars/Olympus"),
        ("TIMEZONE", "/etc/localtime"),
        ("SMTP_URL", "http://mail.example.com"),
        ("SMTP_URL", "smtp://:25"),
        ("SMTP_URL", "smtp://mail.example.com:99999"),
        ("SMTP_URL", "smtp://mail.example.com:0"),  # was taken as port 587
        ("REPORT_RECIPIENTS", "not-an-address"),
        ("REPORT_RECIPIENTS", "a@example.com,bad host=b@example.com"),
        ("REPORT_RECIPIENTS", ",,"),  # names nobody: was taken as unset
        ("REPORT_RECIPIENTS", "a@b\u00fccher..de"),  # no domain name, in Unicode or not
        ("REPORT_RECIPIENTS", "a@-x\u00e9.de"),
        ("DYNO", "web.1 bad name"),  # broke every log line's key=value
        ("DYNO", "web.1\ntype=clock"),
        ("REPORT_FROM", "tally"),
        ("REPORT_SCHEDULE", "daily"),
        ("TALLY_URL", "ftp://tally.example.com"),
        ("DATABASE_URL", "garbage"),
        ("DATABASE_URL", "dbname=tally host"),
        ("DATABASE_URL", "mysql://db.example.com/tally"),
        ("DATABASE_URL", "postgres://u:pw@db.example.com:port/tally"),
        ("DATABASE_URL", "postgres://u:pw@db.example.com/tally?sslmode=requir"),
        # A port libpq refuses only when it connects: the web answered 503 for good.
        ("DATABASE_URL", "host=db.example.com port=abc dbname=tally"),
        ("DATABASE_URL", "postgres://u:pw@db.example.com/tally?port=5432x"),
        ("DATABASE_URL", "postgres://u:pw@db.example.com:0/tally"),
        ("DATABASE_URL", "postgres://u:pw@db1.example.com:5432,db2.example.com:54x/tally"),
        ("DATABASE_REPLICA_URL", "postgres://u:pw@replica.example.com/tally?target_session_attrs=standy"),
        ("DATABASE_REPLICA_URL", "replica.example.com"),
        ("DATABASE_REPLICA_URL", "mysql://replica.example.com/tally"),
        ("DATABASE_REPLICA_URL", "postgres://replica.example.com:port/tally"),
        ("REPLICA_MAX_LAG_SECONDS", "soon"),
        ("REPLICA_MAX_LAG_SECONDS", "0"),
        ("REPLICA_MAX_LAG_SECONDS", "-5"),
        ("REPLICA_MAX_LAG_SECONDS", "100000"),
        ("DATABASE_POOLER", "pgbouncer"),
    ],
)
def test_invalid_values_name_their_variable(name, value):
    with pytest.raises(ConfigError) as raised:
        from_env({name: value}, process_type="web")
    message = str(raised.value)
    assert name in message
    assert "\n" not in message


def test_only_the_web_reads_port():
    """honcho gives the worker and the clock PORT+100 and +200: a PORT of 65500 stopped the
    clock ("PORT='65700' is invalid"), which listens on nothing."""
    for process_type in ("worker", "clock"):
        assert from_env({"PORT": "65700"}, process_type=process_type).port == 5000


def test_messages_name_the_values_as_the_readme_writes_them():
    with pytest.raises(ConfigError, match="expected one of weekly, monthly, off"):
        from_env({"REPORT_SCHEDULE": "daily"}, process_type="clock")
    with pytest.raises(ConfigError, match="yes/no"):
        from_env({"LISTEN_NOTIFY": "maybe"}, process_type="worker")
    settings = {"SMTP_URL": "smtp://mail.example.com", "REPORT_RECIPIENTS": "a@example.com"}
    assert (
        from_env({**settings, "REPORT_SCHEDULE": "Monthly"}, process_type="clock").report_schedule
        == "monthly"
    )


def test_blank_values_mean_the_default():
    assert from_env({"PORT": " ", "ADMIN_TOKEN": ""}, process_type="web").port == 5000


def test_seconds_field_schedules_are_accepted():
    config = from_env({"RETRY_STALLED_SCHEDULE": "* * * * * */2"}, process_type="clock")
    assert config.retry_stalled_schedule == "* * * * * */2"


# --- who may read what (tally/web/auth.py) ---------------------------------------------------


def test_stats_are_private_by_default():
    config = from_env({}, process_type="web")
    assert config.public_dashboard is False
    assert (config.share_token, config.metrics_token) == (None, None)
    assert from_env({"PUBLIC_DASHBOARD": "TRUE"}, process_type="web").public_dashboard is True


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ADMIN_TOKEN": "same", "SHARE_TOKEN": "same"}, "SHARE_TOKEN"),
        ({"METRICS_TOKEN": "same", "SHARE_TOKEN": "same"}, "SHARE_TOKEN"),
        ({"ADMIN_TOKEN": "same", "METRICS_TOKEN": "same"}, "METRICS_TOKEN"),
    ],
)
def test_a_weaker_token_may_not_equal_a_stronger_one(env, named):
    with pytest.raises(ConfigError) as raised:
        from_env(env, process_type="web")
    assert str(raised.value).startswith(named) and "\n" not in str(raised.value)


def test_sites_are_host_names_in_lower_case_and_unset_means_any():
    assert from_env({}, process_type="web").sites is None
    config = from_env({"SITES": " Example.com, www.example.com,,"}, process_type="web")
    assert config.sites == frozenset({"example.com", "www.example.com"})
    # Browsers send an international host in its ASCII form: a name in Unicode is read as that.
    config = from_env(
        {"SITES": "B\u00fccher.de", "REPORT_RECIPIENTS": "b\u00fccher.de=a@example.com"}, process_type="web"
    )
    assert config.sites == frozenset({"xn--bcher-kva.de"})
    assert config.report_recipients == (("xn--bcher-kva.de", "a@example.com"),)


def test_timezone_is_an_iana_zone_and_utc_by_default():
    assert from_env({}, process_type="web").timezone == "UTC"
    assert from_env({"TIMEZONE": "America/St_Johns"}, process_type="web").timezone == "America/St_Johns"
    with pytest.raises(ConfigError, match=r"\(Europe/Paris\?\)"):  # the spelling it may have meant
        from_env({"TIMEZONE": "europe/paris"}, process_type="web")


# --- reports by email (issue 21) ----------------------------------------------------------------


def test_no_smtp_url_or_no_recipients_means_no_reports():
    assert from_env({}, process_type="clock").report_schedule == "off"
    only_smtp = from_env({"SMTP_URL": "smtp://mail.example.com"}, process_type="clock")
    assert (only_smtp.report_schedule, only_smtp.report_recipients) == ("off", ())
    only_recipients = from_env({"REPORT_RECIPIENTS": "a@example.com"}, process_type="clock")
    assert only_recipients.smtp is None and only_recipients.report_schedule == "off"


def test_smtp_url_recipients_and_schedule_are_parsed():
    config = from_env(
        {
            "SMTP_URL": "smtp://user%40x:p%3Ass@Mail.Example.com:2525",
            "REPORT_RECIPIENTS": " owner@example.com, Shop.Example.org=shop@example.org,,owner@example.com",
        },
        process_type="worker",
    )
    smtp = config.smtp
    assert (smtp.host, smtp.port, smtp.tls, smtp.user, smtp.password) == (
        "mail.example.com",
        2525,
        False,
        "user@x",
        "p:ss",
    )
    assert "p:ss" not in repr(config)
    assert config.report_recipients == ((None, "owner@example.com"), ("shop.example.org", "shop@example.org"))
    assert config.report_schedule == "weekly"  # the default once there is someone to send to
    assert config.report_from == "tally@mail.example.com"
    international = from_env(
        {"REPORT_RECIPIENTS": "jos\u00e9@B\u00fccher.de", "REPORT_FROM": "tally@\u00fc.example"},
        process_type="worker",
    )  # mail servers route by the ASCII form of the domain
    assert international.report_recipients == ((None, "jos\u00e9@xn--bcher-kva.de"),)
    assert international.report_from == "tally@xn--tda.example"
    secure = from_env(
        {
            "SMTP_URL": "smtps://mail.example.com",
            "REPORT_RECIPIENTS": "a@example.com",
            "REPORT_SCHEDULE": "Monthly",
        },
        process_type="clock",
    )
    assert (secure.smtp.port, secure.smtp.tls, secure.report_schedule) == (465, True, "monthly")
    assert from_env({"SMTP_URL": "smtp://m.example.com"}, process_type="web").smtp.port == 587


def test_a_bad_smtp_url_is_named_without_its_password():
    with pytest.raises(ConfigError) as raised:
        from_env({"SMTP_URL": "smtp://user:hunter2@mail.example.com:port"}, process_type="worker")
    assert str(raised.value).startswith("SMTP_URL") and "hunter2" not in str(raised.value)


# --- a read replica (issue 19) ------------------------------------------------------------------


def test_no_replica_by_default_and_its_lag_limit_is_30_seconds():
    config = from_env({}, process_type="web")
    assert (config.database_replica_url, config.replica_max_lag_seconds) == (None, 30.0)
    config = from_env(
        {
            "DATABASE_REPLICA_URL": "postgres://u:pw@follower.example.com:5432/db",
            "REPLICA_MAX_LAG_SECONDS": "2.5",
        },
        process_type="web",
    )
    assert config.database_replica_url == "postgres://u:pw@follower.example.com:5432/db"
    assert config.replica_max_lag_seconds == 2.5
    assert "pw@" not in repr(config)
    socket_url = "postgresql://postgres:@/postgres?host=/tmp/replica&port=5433"  # a unix socket
    config = from_env({"DATABASE_REPLICA_URL": socket_url}, process_type="web")
    assert config.database_replica_url == socket_url


def test_database_url_is_what_libpq_takes():
    for url in (
        "postgres://u:pw@db.example.com:5432/db",
        "postgresql:///tally",
        "postgresql://@/db?host=/tmp",
        "host=/tmp port=5433 dbname=tally",  # libpq's key=value form
        "postgresql://u:pw@db1.example.com:5432,db2.example.com:5433/db",  # several hosts, tried in turn
        "postgresql://u:pw@db1.example.com,db2.example.com/db?target_session_attrs=read-write",
        "postgresql://u:pw@[2001:db8::1]:5432/db",
    ):
        assert from_env({"DATABASE_URL": url}, process_type="web").database_url == url
    with pytest.raises(ConfigError) as raised:
        from_env({"DATABASE_URL": "postgres://u:hunter2@db:port/db"}, process_type="release")
    assert str(raised.value).startswith("DATABASE_URL") and "hunter2" not in str(raised.value)


def test_a_bad_replica_url_is_named_without_its_password():
    with pytest.raises(ConfigError) as raised:
        from_env({"DATABASE_REPLICA_URL": "postgres://u:hunter2@follower:port/db"}, process_type="web")
    assert str(raised.value).startswith("DATABASE_REPLICA_URL") and "hunter2" not in str(raised.value)


def test_the_replica_may_not_be_the_primary_itself():
    url = "postgres://u:pw@db.example.com:5432/db"
    with pytest.raises(ConfigError) as raised:
        from_env({"DATABASE_URL": url, "DATABASE_REPLICA_URL": url}, process_type="web")
    assert str(raised.value).startswith("DATABASE_REPLICA_URL") and "pw" not in str(raised.value)


def test_database_pooler_transaction_turns_off_what_a_transaction_pooler_breaks():
    """One setting for a DATABASE_URL that goes through PgBouncer in transaction mode: no prepared
    statements (tally/db.py), workers poll and hold no session lock."""
    assert from_env({}, process_type="worker").database_pooler == "none"
    for process_type in ("web", "worker", "clock"):
        config = from_env({"DATABASE_POOLER": "Transaction"}, process_type=process_type)
        assert config.through_transaction_pooler
        assert (config.listen_notify, config.worker_session_liveness) == (False, False)


@pytest.mark.parametrize("name", ["LISTEN_NOTIFY", "WORKER_SESSION_LIVENESS"])
def test_what_cannot_work_through_a_transaction_pooler_is_refused_with_it(name):
    with pytest.raises(ConfigError, match=f"{name}=true cannot work with DATABASE_POOLER=transaction"):
        from_env({"DATABASE_POOLER": "transaction", name: "true"}, process_type="worker")
    assert not getattr(
        from_env({"DATABASE_POOLER": "transaction", name: "false"}, process_type="worker"), name.lower()
    )


def test_the_release_step_refuses_a_transaction_pooler():
    """Its lock is a session's: through the pooler it stayed on a server connection, and every
    release after it waited."""
    with pytest.raises(
        ConfigError, match=r"DATABASE_POOLER=transaction: the release step .* direct database URL"
    ):
        from_env({"DATABASE_POOLER": "transaction"}, process_type="release")
    assert from_env({"DATABASE_POOLER": "none"}, process_type="release")


def test_every_connection_through_a_transaction_pooler_prepares_nothing():
    """The web's, the replica's, the worker's and procrastinate's (the CLI's too), the clock's,
    the liveness lock's and the reports': all are made with connection_kwargs."""
    from tally import db

    env = {"DATABASE_POOLER": "transaction", "DATABASE_REPLICA_URL": "postgres://replica.example.com/tally"}
    pooled = from_env(env, process_type="web")
    direct = from_env({}, process_type="web")
    assert db.connection_kwargs(pooled)["prepare_threshold"] is None
    assert "prepare_threshold" not in db.connection_kwargs(direct)
    assert db.replica_connection_kwargs(pooled)["prepare_threshold"] is None
    assert db.worker_pool_args(pooled)["kwargs"]["prepare_threshold"] is None
    assert db.web_pool(pooled).kwargs["prepare_threshold"] is None
    assert db.clock_pool(pooled).kwargs["prepare_threshold"] is None
