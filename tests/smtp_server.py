"""A real SMTP server for the report tests: aiosmtpd on a free local port, in a thread of the
test process, keeping every message it accepted. It can be told, per recipient, to answer
451 or 550, or to drop the connection once the message is in, and to be slow.

    >>> with SmtpServer() as server:
    ...     server.script("a@example.com", "451")   # the first DATA to a@ gets a 451
    ...     server.received()                       # [email.message.EmailMessage, ...]
"""

from __future__ import annotations

import asyncio
import collections
import email
import email.policy
import subprocess
import threading
import time
from pathlib import Path

from aiosmtpd.controller import Controller

from tests.conftest import free_port


class Handler:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[email.message.EmailMessage] = []
        self.actions: dict[str, collections.deque[str]] = collections.defaultdict(collections.deque)
        self.delay = 0.0
        self.dropped = 0
        self.in_flight = 0  # messages taken whose reply the slow server still holds back

    def _next(self, recipient: str, kinds: tuple[str, ...]) -> str | None:
        with self.lock:
            queue = self.actions[recipient.lower()]
            if queue and queue[0] in kinds:
                return queue.popleft()
        return None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self._next(address, ("550",)):
            return "550 5.1.1 No such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        recipient = envelope.rcpt_tos[0]
        action = self._next(recipient, ("451", "drop"))
        if action == "451":
            return "451 4.3.0 Try again later"
        if action == "drop":  # the whole message arrived; the client never hears back
            with self.lock:
                self.dropped += 1
            server.transport.abort()
            return "250 OK"
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:  # delivered from here on, whether or not the client hears the reply
            self.messages.append(message)
        if self.delay:  # a slow server: the client waits this long for the reply
            self.in_flight += 1
            try:
                await asyncio.sleep(self.delay)
            finally:
                self.in_flight -= 1
        return "250 OK"


class SmtpServer:
    def __init__(self, delay: float = 0.0, hostname: str = "127.0.0.1", **options: object) -> None:
        """`options` go to aiosmtpd's Controller: tls_context (STARTTLS), ssl_context (smtps),
        authenticator..."""
        self.handler = Handler()
        self.handler.delay = delay
        self.hostname = hostname
        self.port = free_port()
        self.controller = Controller(self.handler, hostname=hostname, port=self.port, **options)

    @property
    def url(self) -> str:
        return f"smtp://{self.hostname}:{self.port}"

    def script(self, recipient: str, *actions: str) -> None:
        """What the next exchanges with `recipient` meet: '451', '550' or 'drop', in order."""
        self.handler.actions[recipient.lower()].extend(actions)

    def received(self) -> list[email.message.EmailMessage]:
        with self.handler.lock:
            return list(self.handler.messages)

    def wait_for(self, count: int, timeout: float) -> list[email.message.EmailMessage]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.received()) >= count:
                return self.received()
            time.sleep(0.02)
        raise AssertionError(
            f"the SMTP server got {len(self.received())} messages, not {count}, in {timeout} s"
        )

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


def self_signed_certificate(folder: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key (openssl), for a server that speaks TLS; a client
    trusts it with SSL_CERT_FILE pointing at the certificate."""
    cert, key = folder / "smtp-cert.pem", folder / "smtp-key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)
