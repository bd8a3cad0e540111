"""Delivering reports against a real SMTP server (aiosmtpd, tests/smtp_server.py): temporary
failures (451, a dropped connection) are tried again with backoff, permanent ones (550)
recorded for their recipient only, TLS and logins as SMTP_URL says, and a worker killed
mid-run leaves the rest to the rescued job. `send_period` (the task's body) runs in this
process where only SMTP matters, real `worker.py` processes where the process does."""

from __future__ import annotations

import datetime
import signal
import ssl
import time
import zoneinfo

import pytest

from tally import reports
from tally.config import from_env
from tests.conftest import defer_by_sql, statuses, wait_until
from tests.smtp_server import SmtpServer, self_signed_certificate
from tests.test_reports import SITE, TZ, deliveries, local_today, report_env, views_over_weeks
from tests.test_web import TOKEN, make_client

pytestmark = pytest.mark.waits  # on timers and servers (tests/suites.py)

# --- temporary and permanent failures, in this process ------------------------------------------


def run_once(
    database_url: str, pool, smtp: SmtpServer, recipients: str, today: datetime.date, **env: str
) -> dict:
    from jobs.reports import send_period

    config = from_env({**report_env(database_url, smtp, recipients), **env}, process_type="worker")
    return send_period(pool, config, reports.last_full_period("weekly", today), today, lambda: False)


def test_a_451_then_acceptance_and_a_dropped_connection_are_sent_again(database_url, pool, conn):
    views_over_weeks(conn)
    today = local_today(conn)
    recipients = f"{SITE}=slow@example.com,{SITE}=dropped@example.com,{SITE}=fine@example.com"
    with SmtpServer() as smtp:
        smtp.script("slow@example.com", "451")
        smtp.script("dropped@example.com", "drop")
        outcome = run_once(database_url, pool, smtp, recipients, today)
        assert outcome == {"sent": 3, "failed": 0, "retrying": 0, "already_done": 0}
        assert sorted(m["To"] for m in smtp.received()) == [
            "dropped@example.com",
            "fine@example.com",
            "slow@example.com",
        ]
        assert smtp.handler.dropped == 1
        rows = deliveries(conn)
        assert {r: row[0] for r, row in rows.items()} == dict.fromkeys(rows, "sent")
        assert {m["To"]: m["Message-ID"] for m in smtp.received()} == {r: row[1] for r, row in rows.items()}


def test_the_job_is_retried_with_backoff_for_a_server_failing_longer(database_url, conn, start_process):
    views_over_weeks(conn, count=100)
    with SmtpServer() as smtp:
        smtp.script("later@example.com", "451", "451", "451")  # every try of the first attempt
        env = report_env(database_url, smtp, f"{SITE}=later@example.com,{SITE}=now@example.com")
        worker = start_process(["worker.py"], env)
        worker.wait_for_line("Starting worker")
        defer_by_sql(conn, "send_reports")
        # The first attempt sends now@, leaves later@ 'retrying' and fails; its retry, 4 s later, sends it.
        wait_until(lambda: statuses(conn, "send_reports") == ["succeeded"], 60, message="the retried job")
        attempts = conn.execute("SELECT attempts FROM procrastinate_jobs").fetchone()[0]
        assert attempts == 2 and "ReportsNotDelivered" in worker.output()
        assert sorted(m["To"] for m in smtp.received()) == ["later@example.com", "now@example.com"]
        assert {r: row[:3] for r, row in deliveries(conn).items()} == {
            "later@example.com": ("sent", smtp.received()[1]["Message-ID"], 2),
            "now@example.com": ("sent", smtp.received()[0]["Message-ID"], 1),
        }


def test_a_server_failing_for_longer_leaves_the_report_for_the_next_run(database_url, pool, conn):
    views_over_weeks(conn)
    today = local_today(conn)
    with SmtpServer() as smtp:
        smtp.script("later@example.com", "451", "451", "451")  # every try of this run
        outcome = run_once(
            database_url, pool, smtp, f"{SITE}=later@example.com,{SITE}=now@example.com", today
        )
        assert (outcome["sent"], outcome["retrying"]) == (1, 1)
        status, message_id, attempts, error = deliveries(conn)["later@example.com"]
        assert (status, attempts) == ("retrying", 1) and error.startswith("451")
        # The job's retry (or the next tick): the same message, the same Message-ID, once.
        outcome = run_once(
            database_url, pool, smtp, f"{SITE}=later@example.com,{SITE}=now@example.com", today
        )
        assert (outcome["sent"], outcome["already_done"]) == (1, 1)
        assert [m["Message-ID"] for m in smtp.received() if m["To"] == "later@example.com"] == [message_id]
        assert deliveries(conn)["later@example.com"][:3] == ("sent", message_id, 2)


def test_a_550_is_recorded_for_its_recipient_and_the_others_are_sent(database_url, pool, conn):
    views_over_weeks(conn)
    today = local_today(conn)
    recipients = f"{SITE}=one@example.com,{SITE}=nobody@example.com,{SITE}=two@example.com"
    with SmtpServer() as smtp:
        smtp.script("nobody@example.com", "550")
        outcome = run_once(database_url, pool, smtp, recipients, today)
        assert (outcome["sent"], outcome["failed"]) == (2, 1)
        assert sorted(m["To"] for m in smtp.received()) == ["one@example.com", "two@example.com"]
        status, _, attempts, error = deliveries(conn)["nobody@example.com"]
        assert (status, attempts) == ("failed", 1) and error.startswith("550")
        # Never tried again: a rerun leaves it as it is.
        assert run_once(database_url, pool, smtp, recipients, today)["already_done"] == 3
        assert deliveries(conn)["nobody@example.com"][2] == 1
    # The owner's dashboard shows it.
    client = make_client(database_url, pool, owner=True, ADMIN_TOKEN=TOKEN, TIMEZONE=TZ)
    page = client.get("/").text
    assert "Reports not delivered" in page and "nobody@example.com" in page and "550" in page


def test_an_address_past_ascii_is_sent_where_the_server_takes_smtputf8_else_recorded_failed(
    database_url, pool, conn
):
    """REPORT_RECIPIENTS takes an address whose local part is not ASCII (RFC 6531). A server
    without SMTPUTF8 can never take it: smtplib's refusal was read as a lost connection, and
    the report tried again at every run, never sent."""
    views_over_weeks(conn)
    today = local_today(conn)
    recipients = f"{SITE}=one@example.com,{SITE}=jos\u00e9@example.com"
    with SmtpServer(enable_SMTPUTF8=False) as smtp:
        outcome = run_once(database_url, pool, smtp, recipients, today)
        assert (outcome["sent"], outcome["failed"]) == (1, 1)
        status, _, attempts, error = deliveries(conn)["jos\u00e9@example.com"]
        assert (status, attempts) == ("failed", 1) and "SMTPUTF8" in error
    conn.execute("DELETE FROM tally_report_deliveries")
    with SmtpServer(enable_SMTPUTF8=True) as smtp:
        outcome = run_once(database_url, pool, smtp, recipients, today)
        assert (outcome["sent"], outcome["failed"]) == (2, 0)
        assert sorted(m["To"] for m in smtp.received()) == ["jos\u00e9@example.com", "one@example.com"]


def test_a_user_in_smtp_url_for_a_server_that_offers_no_login_is_recorded_failed(database_url, pool, conn):
    """smtplib refuses to log in where no AUTH is offered, as an OSError: tried at every run."""
    views_over_weeks(conn, count=100)
    today = local_today(conn)
    with SmtpServer() as smtp:
        url = f"smtp://user:secret@127.0.0.1:{smtp.port}"  # this machine: no TLS needed for it
        outcome = run_once(database_url, pool, smtp, f"{SITE}=a@example.com", today, SMTP_URL=url)
        assert (outcome["sent"], outcome["failed"]) == (0, 1) and smtp.received() == []
        status, _, attempts, error = deliveries(conn)["a@example.com"]
        assert (status, attempts) == ("failed", 1) and "offers no login" in error


def test_a_site_name_with_a_line_break_does_not_stop_the_other_sites_reports(database_url, pool, conn):
    # page_views.site takes any lower-case text from plain SQL; a line break in it cannot go
    # into a Subject header, and the run used to raise there: every site sorted after it waited.
    views_over_weeks(conn)
    today = local_today(conn)
    last_week = reports.last_full_period("weekly", today)
    odd = "a\nbcc: someone@example.net"
    conn.execute(
        "INSERT INTO page_views (site, path, viewed_at) VALUES (%s, '/x', %s)",
        (odd, datetime.datetime.combine(last_week.first_day, datetime.time(12), datetime.UTC)),
    )
    with SmtpServer() as smtp:
        outcome = run_once(database_url, pool, smtp, "owner@example.com", today)
        received = smtp.received()
    sites = {row[0] for row in conn.execute("SELECT site FROM tally_report_deliveries WHERE status = 'sent'")}
    assert odd in sites and SITE in sites, outcome
    assert all("\n" not in message["Subject"] and message["Bcc"] is None for message in received)
    assert any("a\ufffdbcc: someone@example.net" in message["Subject"] for message in received)


def test_a_path_with_a_line_break_stays_on_its_line_of_the_text_part(database_url, pool, conn):
    views_over_weeks(conn)
    today = local_today(conn)
    last_week = reports.last_full_period("weekly", today)
    forged = "Views: 999,999 (+900% against 1)"
    conn.execute(  # plain SQL takes it; the HTTP API refuses a control character in a path
        "INSERT INTO page_views (site, path, viewed_at) SELECT %s, %s, %s FROM generate_series(1, 500)",
        (
            SITE,
            f"/x\n{forged}",
            datetime.datetime.combine(last_week.first_day, datetime.time(12), datetime.UTC),
        ),
    )
    with SmtpServer() as smtp:
        run_once(database_url, pool, smtp, f"{SITE}=owner@example.com", today)
        (message,) = smtp.received()
    lines = message.get_body(("plain",)).get_content().splitlines()
    assert forged not in lines and not any(line.startswith(forged) for line in lines)
    assert any("/x%0AViews:%20999,999" in line for line in lines)  # as a browser addresses it


@pytest.mark.parametrize("stage", ["greeting", "end of data"])
def test_a_server_that_drips_its_reply_is_cut_off_within_the_conversations_bound(stage, monkeypatch):
    # SMTP_TIMEOUT_SECONDS bounds each read of the socket: a reply arriving a byte every
    # half second never met it, and one send lasted as long as the server liked.
    import socket
    import threading
    import time

    from tally import mail
    from tally.env import SmtpServer as Server
    from tests.conftest import free_port

    port = free_port()
    listener = socket.create_server(("127.0.0.1", port))
    stop = threading.Event()

    def tarpit() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(1)
            if stage == "end of data":
                conn.sendall(b"220 ready\r\n")
                buffer = b""
                while not stop.is_set() and not buffer.endswith(b"\r\n.\r\n"):
                    try:
                        chunk = conn.recv(65536)
                    except TimeoutError:
                        continue
                    if not chunk:
                        return
                    buffer += chunk
                    for command in (b"EHLO", b"MAIL", b"RCPT", b"DATA"):
                        if chunk.upper().startswith(command):
                            conn.sendall(b"354 go on\r\n" if command == b"DATA" else b"250 ok\r\n")
            for byte in b"250-" + b"slowly " * 4:  # 16 s of a reply of several lines, unfinished
                if stop.wait(0.5):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    thread = threading.Thread(target=tarpit, daemon=True)
    thread.start()
    message = mail.compose("t@example.com", "o@example.com", "S", "text", "<p>html</p>", message_id="<a@b>")
    # Once the message is in, its answer may take SMTP_DATA_REPLY_SECONDS: bounded too.
    monkeypatch.setattr(mail, "SMTP_DATA_REPLY_SECONDS", 3.0)
    bound = mail.SMTP_CONVERSATION_SECONDS if stage == "greeting" else mail.SMTP_DATA_REPLY_SECONDS
    started = time.monotonic()
    try:
        with pytest.raises(mail.TemporaryFailure, match=f"took longer than {bound:g} s"):
            mail.send(Server("127.0.0.1", port, False), message)
        assert time.monotonic() - started < mail.SMTP_CONVERSATION_SECONDS + 2
    finally:
        stop.set()
        listener.close()
        thread.join(5)


def test_a_server_slow_to_answer_the_message_gets_it_once(database_url, pool, conn, monkeypatch):
    """The message is in once its data is sent; a server that answered it after the 8 s every
    other reply gets (RFC 5321 gives it 10 minutes) got a copy at each try: 7 of one report.
    Here the bounds are cut to 1 s and the server answers in 2.5 s."""
    from tally import mail

    monkeypatch.setattr(mail, "SMTP_TIMEOUT_SECONDS", 1.0)
    monkeypatch.setattr(mail, "SMTP_CONVERSATION_SECONDS", 1.0)
    views_over_weeks(conn, count=100)
    today = local_today(conn)
    with SmtpServer(delay=2.5) as slow:
        outcome = run_once(database_url, pool, slow, f"{SITE}=a@example.com", today)
        assert outcome["sent"] == 1 and len(slow.received()) == 1


def test_a_send_hangs_up_when_the_job_is_asked_to_stop(monkeypatch):
    """A draining worker (or a job past its time limit) asks the job to stop, and the send,
    in a thread nothing interrupts, waited for the server: it hangs up within a moment."""
    import threading
    import time

    from tally import mail
    from tally.env import SmtpServer as Server

    message = mail.compose("t@example.com", "o@example.com", "S", "text", "<p>html</p>", message_id="<a@b>")
    asked = threading.Event()
    threading.Timer(0.5, asked.set).start()
    with SmtpServer(delay=20) as slow:
        started = time.monotonic()
        with pytest.raises(mail.TemporaryFailure, match="asked to stop"):
            mail.send(Server("127.0.0.1", slow.port, False), message, asked.is_set)
        # The message was in: its answer had ABORT_REPLY_SECONDS more (tests/test_reports_abort.py).
        assert time.monotonic() - started < 0.5 + mail.ABORT_REPLY_SECONDS + 1


def test_starttls_when_offered_with_a_login_and_smtps(database_url, pool, conn, tmp_path, monkeypatch):
    from aiosmtpd.smtp import AuthResult

    views_over_weeks(conn, count=100)
    today = local_today(conn)
    cert, key = self_signed_certificate(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", cert)  # the client verifies the server as usual
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    logins = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append((session.ssl is not None, auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"p@ss:word")

    options = {"tls_context": context, "require_starttls": True, "authenticator": authenticator}
    with SmtpServer(**options, auth_require_tls=True) as smtp:
        url = f"smtp://us%40er:p%40ss%3Aword@127.0.0.1:{smtp.port}"
        outcome = run_once(database_url, pool, smtp, f"{SITE}=a@example.com", today, SMTP_URL=url)
        assert outcome["sent"] == 1 and [m["To"] for m in smtp.received()] == ["a@example.com"]
        assert logins == [(True, b"us@er", b"p@ss:word")]  # over TLS only
    with SmtpServer(ssl_context=context) as smtps:
        url = f"smtps://127.0.0.1:{smtps.port}"
        outcome = run_once(database_url, pool, smtps, f"{SITE}=c@example.com", today, SMTP_URL=url)
        assert outcome["sent"] == 1 and [m["To"] for m in smtps.received()] == ["c@example.com"]


def test_a_password_goes_over_tls_only_unless_the_relay_is_on_this_machine(database_url, pool, conn):
    """A server (not on this machine) that offers no STARTTLS got SMTP_URL's password in clear:
    one in the middle who strips STARTTLS from the greeting reads it. Refused for good now."""
    from aiosmtpd.smtp import AuthResult

    views_over_weeks(conn, count=100)
    today = local_today(conn)
    logins = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append(auth_data.login)
        return AuthResult(success=True)

    options = {"authenticator": authenticator, "auth_require_tls": False}
    with SmtpServer(hostname="127.0.0.2", **options) as elsewhere:  # another address, no TLS
        url = f"smtp://user:secret@127.0.0.2:{elsewhere.port}"
        outcome = run_once(database_url, pool, elsewhere, f"{SITE}=a@example.com", today, SMTP_URL=url)
        assert outcome["failed"] == 1 and elsewhere.received() == [] and logins == []
        error = conn.execute("SELECT error FROM tally_report_deliveries").fetchone()[0]
        assert "STARTTLS" in error and "secret" not in error
    with SmtpServer(**options) as relay:  # 127.0.0.1: a relay on this machine
        url = f"smtp://user:secret@127.0.0.1:{relay.port}"
        outcome = run_once(database_url, pool, relay, f"{SITE}=b@example.com", today, SMTP_URL=url)
        assert outcome["sent"] == 1 and logins == [b"user"]


# --- a worker killed mid-run -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_worker_killed_mid_run_leaves_the_rest_to_the_rescued_job(database_url, conn, start_process):
    views_over_weeks(conn, count=300)
    recipients = ",".join(f"{SITE}=r{n:02d}@example.com" for n in range(40))
    with SmtpServer(delay=0.2) as smtp:  # a slow server: 40 messages take 8 s or more
        env = report_env(database_url, smtp, recipients, WORKER_CONCURRENCY="1")
        first = start_process(["worker.py"], {**env, "DYNO": "worker.1"})
        first.wait_for_line("Starting worker")
        defer_by_sql(conn, "send_reports")
        # Killed while the server holds back its reply to a message it has taken: that one
        # is in flight, its row still 'sending'.
        wait_until(lambda: len(smtp.received()) >= 10 and smtp.handler.in_flight, 60, 0.005, "10 messages")
        first.signal(signal.SIGKILL)
        first.wait(10)
        at_kill = len(smtp.received())
        assert at_kill < 40
        second = start_process(["worker.py"], {**env, "DYNO": "worker.2"})
        second.wait_for_line("Starting worker")
        wait_until(lambda: statuses(conn, "send_reports") == ["succeeded"], 90, message="the rescued job")
        assert "re-queued job" in second.output()
        messages = smtp.received()
    by_recipient: dict[str, list[str]] = {}
    for message in messages:
        by_recipient.setdefault(message["To"], []).append(message["Message-ID"])
    assert sorted(by_recipient) == [f"r{n:02d}@example.com" for n in range(40)]  # every one
    assert max(len(ids) for ids in by_recipient.values()) <= 2  # none more than twice
    assert len(messages) - 40 <= 1  # only the one in flight at the kill
    assert all(len(set(ids)) == 1 for ids in by_recipient.values())  # a duplicate has one Message-ID
    rows = deliveries(conn)
    assert len(rows) == 40 and {row[0] for row in rows.values()} == {"sent"}
    assert {r: row[1] for r, row in rows.items()} == {r: ids[0] for r, ids in by_recipient.items()}
    print(f"killed after {at_kill} messages; {len(messages) - 40} sent twice")


@pytest.mark.slow
def test_a_worker_draining_a_send_to_a_silent_server_exits_inside_herokus_30_s(
    database_url, conn, start_process
):
    """A send in progress cannot be interrupted (the job runs in a thread): a draining worker
    waits for it past its grace, as long as the SMTP timeout. With 30 s, a server that stopped
    answering kept the worker 30.3 s after SIGTERM with the default 20 s grace."""
    import socket
    import time
    import types

    from tally.config import DEFAULT_GRACEFUL_SECONDS
    from tally.mail import SMTP_TIMEOUT_SECONDS

    assert DEFAULT_GRACEFUL_SECONDS + SMTP_TIMEOUT_SECONDS <= 28  # Heroku sends SIGKILL at 30 s
    views_over_weeks(conn, count=100)
    grace = 1.0  # the test's own, so it waits seconds, not the default 20
    # Takes connections (the kernel's backlog) and never says a word: no greeting, no reply.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        server = types.SimpleNamespace(url=f"smtp://127.0.0.1:{silent.getsockname()[1]}")
        env = report_env(database_url, server, f"{SITE}=a@example.com", WORKER_GRACEFUL_SECONDS=str(grace))
        worker = start_process(["worker.py"], env)
        worker.wait_for_line("Starting worker")
        defer_by_sql(conn, "send_reports")
        worker.wait_for_line("Starting job send_reports")
        time.sleep(0.5)  # the send is waiting for the greeting
        stopped = time.monotonic()
        worker.signal(signal.SIGTERM)
        assert worker.wait(grace + SMTP_TIMEOUT_SECONDS + 5) == 0
        assert time.monotonic() - stopped < grace + SMTP_TIMEOUT_SECONDS + 3


def test_a_second_run_waits_for_the_first_however_deferred(database_url, conn, start_process):
    """A job deferred by SQL has no procrastinate lock; the run's session lock still keeps two
    runs apart: here the test holds it, as a run would, and the job's attempt fails on it."""
    import psycopg

    from jobs.reports import RUN_LOCK_KEY

    views_over_weeks(conn, count=100)
    with SmtpServer() as smtp, psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (RUN_LOCK_KEY,))
        worker = start_process(["worker.py"], report_env(database_url, smtp, f"{SITE}=a@example.com"))
        worker.wait_for_line("Starting worker")
        defer_by_sql(conn, "send_reports")
        wait_until(lambda: "LockNotAvailable" in worker.output(), 30, message="the attempt to meet the lock")
        assert smtp.received() == [] and deliveries(conn) == {}
        holder.execute("SELECT pg_advisory_unlock(%s)", (RUN_LOCK_KEY,))
        wait_until(lambda: statuses(conn, "send_reports") == ["succeeded"], 60, message="the retried run")
        assert [m["To"] for m in smtp.received()] == ["a@example.com"]


def test_the_job_retries_with_backoff_but_not_an_unknown_period():
    from procrastinate.jobs import Job

    from jobs.reports import REPORT_RETRY, ReportsNotDelivered, UnknownPeriod

    def job(attempts: int) -> Job:
        return Job(
            id=1, queue="default", lock=None, queueing_lock=None, task_name="send_reports", attempts=attempts
        )

    waits = [REPORT_RETRY.get_retry_decision(exception=ReportsNotDelivered(), job=job(n)) for n in range(6)]
    assert all(decision.retry_at is not None for decision in waits[:5]) and waits[5] is None
    assert REPORT_RETRY.get_retry_decision(exception=UnknownPeriod(), job=job(0)) is None


@pytest.mark.parametrize("period", ["yearly", '"><script>alert(1)</script>'])
def test_a_period_that_is_neither_weekly_nor_monthly_fails_the_job_even_with_reports_off(period):
    """`defer send_reports '{"period": "yearly"}'` succeeded, silently, when SMTP_URL or
    REPORT_RECIPIENTS was unset: the typo showed only once mail was set up."""
    from jobs import settings
    from jobs.reports import UnknownPeriod, send_reports

    assert settings.smtp is None or not settings.report_recipients  # reports off, as in the suite
    with pytest.raises(UnknownPeriod, match="weekly, monthly"):
        send_reports.func(None, period=period)
    assert send_reports.func(None, period="monthly") == {}  # a valid one: nothing to send


def test_a_tick_ahead_of_the_database_sends_no_period_the_database_has_not_ended(
    database_url, conn, start_process
):
    """The clock's host ticks at the start of a week while the database's clock is still in the
    last day of it: the week is not over where its views are counted. The run sends nothing and
    is tried again later (as for a temporary failure), not a report of an unfinished week."""
    views_over_weeks(conn, count=100)
    today = local_today(conn)
    # The Monday after next: still ahead of the database if its day turns during the test.
    monday = today + datetime.timedelta(days=14 - today.weekday())
    tick = datetime.datetime.combine(monday, datetime.time(0, 0, 30), zoneinfo.ZoneInfo(TZ))
    with SmtpServer() as smtp:
        worker = start_process(["worker.py"], report_env(database_url, smtp, f"{SITE}=a@example.com"))
        worker.wait_for_line("Starting worker")
        conn.execute(
            "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW('default', 'send_reports', 0, NULL, NULL,"
            " jsonb_build_object('timestamp', %s::bigint), NULL)::procrastinate_job_to_defer_v1])",
            (int(tick.timestamp()),),
        )
        # Refused and to be tried again, 4 s later, then 16, 64... (the log line comes before the
        # job's row says so: wait for the row)
        job = "SELECT status::text, attempts FROM procrastinate_jobs"
        wait_until(lambda: conn.execute(job).fetchone() == ("todo", 1), 30, message="the retry")
        assert "PeriodNotOverInTheDatabase" in worker.output()
        assert smtp.received() == [] and deliveries(conn) == {}
        unfinished = reports.last_full_period("weekly", monday).name
        assert f"{unfinished} is not over there yet" in worker.output()


def test_a_server_that_cannot_be_reached_stops_the_run_at_its_first_report(database_url, pool, conn):
    """With the mail server down each recipient waited out its three tries (about 3 s) before
    the next: a run of 200 recipients reached the job's time limit. The first that cannot
    connect stops the run; the rest are claimed by its retry, each sent once."""
    from jobs.reports import SEND_BACKOFF_SECONDS
    from tally import mail

    views_over_weeks(conn)
    today = local_today(conn)
    recipients = f"{SITE}=a@example.com,{SITE}=b@example.com,{SITE}=c@example.com"
    with SmtpServer() as gone:
        pass  # its port refuses connections from here on
    started = time.monotonic()
    with pytest.raises(mail.ServerUnreachable, match="ConnectionRefusedError"):
        run_once(database_url, pool, gone, recipients, today)
    assert time.monotonic() - started < 3 * SEND_BACKOFF_SECONDS + 2  # one recipient's tries, not three
    ((recipient, (status, _, attempts, error)),) = deliveries(conn).items()
    assert (status, attempts) == ("retrying", 1) and error.startswith("ConnectionRefusedError")
    with SmtpServer() as smtp:
        outcome = run_once(database_url, pool, smtp, recipients, today)
        assert outcome == {"sent": 3, "failed": 0, "retrying": 0, "already_done": 0}
        assert sorted(m["To"] for m in smtp.received()) == ["a@example.com", "b@example.com", "c@example.com"]
    assert deliveries(conn)[recipient][:3:2] == ("sent", 2)


def test_a_report_left_retrying_in_an_earlier_period_is_sent_by_the_next_run(conn):
    """A run that caught up two weeks left one report of the first `retrying`; its retry, and
    every run after, sent only weeks after the latest claimed, and the report stayed unsent."""
    from tally.db import QUERIES

    today = local_today(conn)
    last = reports.last_full_period("weekly", today)
    earlier = last.before()
    conn.execute(
        "INSERT INTO tally_report_deliveries (site, period, recipient, message_id, status)"
        " VALUES (%s, %s, 'a@example.com', '<a>', 'retrying'), (%s, %s, 'a@example.com', '<b>', 'sent')",
        (SITE, earlier.name, SITE, last.name),
    )
    last_claimed, unfinished = conn.execute(QUERIES["last_report_period"], {"kind": "weekly"}).fetchone()
    assert (last_claimed, unfinished) == (last.name, earlier.name)
    chosen = reports.periods_to_send("weekly", today, last_claimed, 4, unfinished)
    assert [period.name for period in chosen] == [earlier.name, last.name]
    assert reports.periods_to_send("weekly", today, last_claimed, 4) == [last]  # as it was
