"""Sending one message over SMTP_URL with Python's smtplib, and telling a temporary failure
(4xx, a dropped connection, a timeout: try again later) from a permanent one (5xx: never).

    >>> message = compose("tally@example.com", "owner@example.com", "Subject", "text", "<p>html</p>",
    ...                   message_id="<id@example.com>")
    >>> send(settings.smtp, message)        # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import email.message
import email.utils
import hashlib
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable

from tally.env import SmtpServer

# One SMTP conversation waits at most this long for the server (connect, any reply) until the
# message is in, and lasts at most this long in all till then: a server that stopped answering,
# or sends its reply a byte every few seconds (a tarpit), is a temporary failure, and the
# message is sent again later.
SMTP_TIMEOUT_SECONDS = 8.0
SMTP_CONVERSATION_SECONDS = SMTP_TIMEOUT_SECONDS
# The answer to the message itself may take longer (RFC 5321 gives a server 10 minutes to take
# it): with 8 s a server that took each message and answered in 10 s got a copy at every try (7
# of one report). The message is in by then: giving up on the answer sends it again.
SMTP_DATA_REPLY_SECONDS = 120.0
# A draining worker (or a job past its time limit) asks the job to stop; the job runs in a
# thread that cannot be interrupted, so the send looks this often and hangs up: the worker then
# exits inside Heroku's 30 s however long the server takes.
ABORT_CHECK_SECONDS = 0.2
# Asked to stop once the message is in, the send waits this long for the server's answer to it
# before hanging up: hung up on, a server that took the message (most answer within a second)
# got it again from the next run, a copy at each drain. A drained worker gives an aborted job
# 5 s (jobs/drain.py), so this stays inside Heroku's 30 s.
ABORT_REPLY_SECONDS = 3.0


# A relay on the same machine, the one place a password may go without TLS.
SAME_MACHINE = frozenset({"localhost", "127.0.0.1", "::1"})


class TemporaryFailure(Exception):
    """The server could not take the message now (4xx, lost connection): send it again later."""


class ServerUnreachable(TemporaryFailure):
    """No conversation began (the connect refused, timed out, or its name or TLS failed): every
    message would fail alike, so a run stops at the first and leaves the rest for its retry."""


class PermanentFailure(Exception):
    """The server refused the message for good (5xx): sending it again would fail again."""


def message_id(site: str, period: str, recipient: str, sender: str) -> str:
    """The Message-ID of one report: the same for every send of (site, period, recipient), so a
    mail client folds a duplicate into the message it already has."""
    digest = hashlib.sha256(f"{site}\0{period}\0{recipient.lower()}".encode()).hexdigest()[:32]
    domain = sender.rpartition("@")[2] or "tally.invalid"
    return f"<report-{digest}@{domain}>"


def compose(
    sender: str, recipient: str, subject: str, text: str, html: str, *, message_id: str
) -> email.message.EmailMessage:
    """A multipart/alternative message: the plain text first, the HTML after (preferred)."""
    message = email.message.EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    message["Date"] = email.utils.formatdate(localtime=False)
    message["Message-ID"] = message_id
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


def send(
    server: SmtpServer, message: email.message.EmailMessage, should_abort: Callable[[], bool] = lambda: False
) -> None:
    """Deliver `message` to its To: address, in one SMTP conversation of its own; hang up as
    soon as `should_abort()` says so.

    Raises TemporaryFailure or PermanentFailure; returns only once the server accepted it.
    """
    if server.tls:
        client: smtplib.SMTP = smtplib.SMTP_SSL(
            timeout=SMTP_TIMEOUT_SECONDS, context=ssl.create_default_context()
        )
    else:
        client = smtplib.SMTP(timeout=SMTP_TIMEOUT_SECONDS)
    # Made unconnected, to start the watch before the greeting; TLS checks the certificate
    # against _host, which only a constructor given the host sets.
    client._host = server.host
    watch = _Watch(client, should_abort)
    sent_by_smtplib = client.send

    def send_noting_the_end_of_data(data: bytes | str) -> None:
        sent_by_smtplib(data)
        if isinstance(data, bytes) and data.endswith(b"\r\n.\r\n"):  # smtplib's data(): the message is in
            watch.allow(SMTP_DATA_REPLY_SECONDS)

    client.send = send_noting_the_end_of_data  # type: ignore[method-assign]
    watch.start()
    try:
        _converse(client, server, message)
    except TemporaryFailure:
        if watch.reason is not None:  # we hung up: say why, not "connection closed"
            raise TemporaryFailure(watch.reason) from None
        raise
    finally:
        watch.stop()
        client.close()


class _Watch(threading.Thread):
    """Hangs up on the server when the conversation passes its time or the job asks to stop."""

    def __init__(self, client: smtplib.SMTP, should_abort: Callable[[], bool]) -> None:
        super().__init__(daemon=True, name="smtp-watch")
        self.client = client
        self.should_abort = should_abort
        self.limit = SMTP_CONVERSATION_SECONDS
        self.deadline = time.monotonic() + self.limit
        self.reason: str | None = None
        self.stopped = threading.Event()
        self.message_in = False  # the data's end is sent: hanging up may make a duplicate

    def allow(self, seconds: float) -> None:
        """The message is in: from now on, wait up to `seconds` more, for one read too."""
        self.message_in = True
        self.limit = seconds
        self.deadline = time.monotonic() + seconds
        if self.client.sock is not None:
            self.client.sock.settimeout(seconds)

    def run(self) -> None:
        asked_to_stop_at: float | None = None
        while not self.stopped.wait(ABORT_CHECK_SECONDS):
            now = time.monotonic()
            if asked_to_stop_at is None and self.should_abort():
                asked_to_stop_at = now
            if asked_to_stop_at is not None and not self.message_in:
                self.hang_up("the job was asked to stop during the send")
            elif asked_to_stop_at is not None and now - asked_to_stop_at >= ABORT_REPLY_SECONDS:
                self.hang_up(
                    "the job was asked to stop during the send, and the server had not answered"
                    f" the message {ABORT_REPLY_SECONDS:g} s later"
                )
            elif now > self.deadline:
                self.hang_up(f"the server took longer than {self.limit:g} s to take the message")
            else:
                continue
            return

    def hang_up(self, reason: str) -> None:
        """Wake the sending thread where it waits for the server: its read then ends at once."""
        self.reason = reason
        sock = self.client.sock
        if sock is not None:
            with contextlib.suppress(OSError):  # closed already
                sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self.stopped.set()


def _converse(client: smtplib.SMTP, server: SmtpServer, message: email.message.EmailMessage) -> None:
    try:
        client.connect(server.host, server.port)
    except OSError as error:  # refused, timed out, no such name, TLS, or closed before its greeting
        client.close()
        raise ServerUnreachable(f"{type(error).__name__}: {error}") from None
    try:
        with client:
            client.ehlo()
            secured = server.tls
            if not server.tls and client.has_extn("starttls"):
                client.starttls(context=ssl.create_default_context())
                client.ehlo()
                secured = True
            if server.user:
                if not secured and server.host not in SAME_MACHINE:
                    # One who can strip STARTTLS from the greeting would read the password.
                    raise PermanentFailure(
                        "the server offered no STARTTLS: Tally sends SMTP_URL's password over TLS"
                        " only (smtps://, or a server that offers STARTTLS)"
                    )
                try:
                    client.login(server.user, server.password or "")
                except smtplib.SMTPNotSupportedError:  # an OSError: it would be tried at every run
                    raise PermanentFailure(
                        "the server offers no login (AUTH), and SMTP_URL names a user"
                    ) from None
            try:
                refused = client.send_message(message)
            except smtplib.SMTPNotSupportedError:  # likewise
                raise PermanentFailure(
                    "the server does not offer SMTPUTF8, which an address that is not ASCII needs (RFC 6531)"
                ) from None
            if refused:  # only for several recipients; ours is one, refused raises instead
                raise _failure(*next(iter(refused.values())))
    except smtplib.SMTPRecipientsRefused as error:
        code, reply = next(iter(error.recipients.values()))
        raise _failure(code, reply) from None
    except smtplib.SMTPResponseException as error:  # sender refused, data refused, auth failed
        raise _failure(error.smtp_code, error.smtp_error) from None
    except OSError as error:  # a lost or refused connection, a timeout, TLS; smtplib's other errors
        raise TemporaryFailure(f"{type(error).__name__}: {error}") from None


def _failure(code: int, reply: bytes | str) -> Exception:
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
    sentence = f"{code} {text}".strip()
    return PermanentFailure(sentence) if 500 <= code < 600 else TemporaryFailure(sentence)
