"""Logging: one line per event, process type and dyno on every line, waitress tamed."""

from __future__ import annotations

import io
import logging

import pytest

from tally import logs
from tally.config import from_env


@pytest.fixture
def captured(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stdout", stream)
    logs.setup_logging(from_env({"DYNO": "web.3"}, process_type="web"))
    yield stream
    logging.getLogger().handlers.clear()
    for name in ("waitress.queue", "psycopg.pool", logs.READS_BUSY_LOGGER):
        logging.getLogger(name).filters.clear()


def test_every_line_names_type_and_dyno_and_tracebacks_stay_on_one_line(captured):
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        logging.getLogger("tally.test").exception("it failed")
    logging.getLogger("tally.test").info("plain")
    lines = captured.getvalue().splitlines()
    assert len(lines) == 2
    assert all("web.3 type=web" in line for line in lines)
    assert "Traceback" in lines[0] and "boom" in lines[0] and "second line" in lines[0]


def test_start_line_names_file_and_process_type(captured):
    logs.log_start(from_env({"DYNO": "web.3"}, process_type="web"), "web.py", port=5000)
    assert "WEB PROCESS STARTED file=web.py processType=web dyno=web.3 port=5000" in captured.getvalue()


def test_the_start_line_is_written_whatever_the_log_level(monkeypatch):
    """DESIGN: each process logs one start line. With LOG_LEVEL=WARNING or ERROR there was none,
    and a restarted dyno showed nothing in the log."""
    stream = io.StringIO()
    monkeypatch.setattr("sys.stdout", stream)
    settings = from_env({"DYNO": "worker.2", "LOG_LEVEL": "ERROR"}, process_type="worker")
    try:
        logs.setup_logging(settings)
        logs.log_start(settings, "worker.py", concurrency=4)
        logging.getLogger("tally.test").info("not at ERROR")
    finally:
        logging.getLogger().handlers.clear()
        logging.getLogger().setLevel(logging.WARNING)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and "WORKER PROCESS STARTED file=worker.py" in lines[0], lines


def test_waitress_queue_depth_warnings_do_not_flood(captured):
    queue_logger = logging.getLogger("waitress.queue")
    for depth in range(500):
        queue_logger.warning("Task queue depth is %d", depth)
    assert captured.getvalue().count("Task queue depth") == 1


def test_reads_turned_away_do_not_flood_the_log(captured):
    """A read beyond the web's share of the database is a 503 at once (tally/web/replica.py);
    a client that asks again at once wrote a WARNING line per refusal (80,715 in 40 s)."""
    import bottle
    import webtest

    from tally.web.replica import ReadsBusy
    from tally.web.responses import database_unavailable

    app = bottle.Bottle()

    @app.get("/busy")
    @database_unavailable
    def busy():
        raise ReadsBusy("8 reads hold or wait for the primary's 2 turns")

    client = webtest.TestApp(app)
    for _ in range(300):
        assert client.get("/busy", status=503).headers["Retry-After"] == "5"
    assert captured.getvalue().count("reads busy") == 1


def test_an_error_is_described_by_its_type_and_frames_never_its_message():
    """A UnicodeDecodeError's repr holds the whole undecodable header: a client's user agent."""
    agent = b"Mozilla/5.0 MyApp/1.2 (\xe9t\xe9 Unique/4242)"
    try:
        try:
            agent.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"bad agent {agent!r}") from error
    except ValueError as error:
        line = logs.describe_error(error)
    assert "builtins.ValueError at test_logs.py:" in line and "builtins.UnicodeDecodeError" in line
    assert "Unique/4242" not in line and "MyApp" not in line and "bad agent" not in line


def test_a_database_error_is_one_line_with_its_cause():
    """The clock logged `ConnectorException('\\n    Database error.\\n    ')`: procrastinate keeps
    the server's reason in the cause."""
    from tally.logs import database_error

    try:
        try:
            raise ValueError('connection failed: FATAL:  database "nodb"\n does not exist')
        except ValueError as cause:
            raise RuntimeError("\n    Database error.\n    ") from cause
    except RuntimeError as error:
        line = database_error(error)
    reason = 'connection failed: FATAL: database "nodb" does not exist'
    assert line == f"RuntimeError: Database error. (from ValueError: {reason})"


def test_a_lost_prepared_statement_names_the_setting(conn):
    """Behind a transaction pooler the worker's and the clock's lines said only
    `DuplicatePreparedStatement` / `InvalidSqlStatementName`: the fix is DATABASE_POOLER."""
    import psycopg

    from tally.logs import database_error

    with pytest.raises(psycopg.errors.InvalidSqlStatementName) as raised:
        conn.execute("EXECUTE _pg3_0")
    assert database_error(raised.value).endswith(
        "set DATABASE_POOLER=transaction for the processes that use it"
    )
    with pytest.raises(psycopg.errors.UndefinedTable) as other:
        conn.execute("SELECT * FROM no_such_table")
    assert "DATABASE_POOLER" not in database_error(other.value)
