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

from tally.env import SmtpServer

# One SMTP conversation never waits longer than this for the server (connect, any reply). A
# draining worker cannot interrupt a send in progress (the job runs in a thread) and waits for
# it after its grace (WORKER_GRACEFUL_SECONDS, 20 s): with 30 s here a server that stopped
# answering kept the worker 30.3 s past SIGTERM, and Heroku kills at 30. A timeout is a
# temporary failure: the message is sent again later.
SMTP_TIMEOUT_SECONDS = 8.0
# ... and the whole conversation no longer than this. The timeout above bounds each read of
# the socket, not a reply: a server sending its reply a byte every few seconds (a tarpit)
# held one send for minutes, past the job's time limit and the worker's drain.
SMTP_CONVERSATION_SECONDS = SMTP_TIMEOUT_SECONDS


# A relay on the same machine, the one place a password may go without TLS.
SAME_MACHINE = frozenset({"localhost", "127.0.0.1", "::1"})


class TemporaryFailure(Exception):
    """The server could not take the message now (4xx, lost connection): send it again later."""


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


def send(server: SmtpServer, message: email.message.EmailMessage) -> None:
    """Deliver `message` to its To: address, in one SMTP conversation of its own.

    Raises TemporaryFailure or PermanentFailure; returns only once the server accepted it.
    """
    if server.tls:
        client: smtplib.SMTP = smtplib.SMTP_SSL(
            timeout=SMTP_TIMEOUT_SECONDS, context=ssl.create_default_context()
        )
    else:
        client = smtplib.SMTP(timeout=SMTP_TIMEOUT_SECONDS)
    # Made unconnected, to start the cut-off before the greeting; TLS checks the certificate
    # against _host, which only a constructor given the host sets.
    client._host = server.host
    hung_up = threading.Event()
    cut_off = threading.Timer(SMTP_CONVERSATION_SECONDS, _hang_up, (client, hung_up))
    cut_off.daemon = True
    cut_off.start()
    try:
        _converse(client, server, message)
    except TemporaryFailure:
        if hung_up.is_set():  # we hung up: say why, not "connection closed" or a reply cut short
            raise TemporaryFailure(
                f"the server took longer than {SMTP_CONVERSATION_SECONDS:g} s to take the message"
            ) from None
        raise
    finally:
        cut_off.cancel()
        client.close()


def _hang_up(client: smtplib.SMTP, hung_up: threading.Event) -> None:
    """Wake the sending thread where it waits for the server: its read then ends at once."""
    hung_up.set()
    sock = client.sock
    if sock is not None:
        with contextlib.suppress(OSError):  # closed already
            sock.shutdown(socket.SHUT_RDWR)


def _converse(client: smtplib.SMTP, server: SmtpServer, message: email.message.EmailMessage) -> None:
    try:
        client.connect(server.host, server.port)
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
                client.login(server.user, server.password or "")
            refused = client.send_message(message)
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
