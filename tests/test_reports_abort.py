"""A send asked to stop (a draining worker, a job past its time limit) once its message is in
waits a moment for the server's answer instead of hanging up at once.

An audit SIGTERMed a worker while it mailed forty reports to a server that answered each
message in 2 s: the send hung up on the message in flight, recorded it `retrying`, and the
next run sent it again, so one recipient got the report twice (with one Message-ID). Before
the message's end is sent, hanging up sends nothing, so that still happens at once.
"""

from __future__ import annotations

import email.message
import socket
import threading
import time

import pytest

from tally import mail
from tally.env import SmtpServer as Server
from tests.smtp_server import SmtpServer

pytestmark = pytest.mark.waits  # on timers and servers (tests/suites.py)


def message() -> email.message.EmailMessage:
    return mail.compose("t@example.com", "o@example.com", "S", "text", "<p>html</p>", message_id="<a@b>")


def asked_after(seconds: float) -> threading.Event:
    asked = threading.Event()
    threading.Timer(seconds, asked.set).start()
    return asked


def test_asked_to_stop_while_the_server_answers_the_message_it_waits_for_the_answer():
    with SmtpServer(delay=1.5) as slow:  # takes the message, answers 1.5 s later
        asked = asked_after(0.5)
        started = time.monotonic()
        mail.send(Server("127.0.0.1", slow.port, False), message(), asked.is_set)  # no TemporaryFailure
        assert asked.is_set()
        assert time.monotonic() - started < 1.5 + 1
        assert len(slow.received()) == 1


def test_a_server_that_does_not_answer_the_message_in_time_is_hung_up_on():
    with SmtpServer(delay=20) as slow:
        started = time.monotonic()
        with pytest.raises(mail.TemporaryFailure, match=r"asked to stop.*not answered"):
            mail.send(Server("127.0.0.1", slow.port, False), message(), asked_after(0.3).is_set)
        assert mail.ABORT_REPLY_SECONDS <= time.monotonic() - started < 0.3 + mail.ABORT_REPLY_SECONDS + 1


def test_before_the_message_is_in_it_hangs_up_at_once():
    # Takes the connection and never greets: nothing was sent, nothing can be duplicated.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        started = time.monotonic()
        with pytest.raises(mail.TemporaryFailure, match=r"asked to stop during the send$"):
            mail.send(Server("127.0.0.1", silent.getsockname()[1], False), message(), asked_after(0.3).is_set)
        assert time.monotonic() - started < 0.3 + 1


def test_the_wait_stays_inside_a_drained_workers_bound():
    from tally import config

    assert mail.ABORT_REPLY_SECONDS + 2 * mail.ABORT_CHECK_SECONDS < config.DRAIN_ABORT_SECONDS
