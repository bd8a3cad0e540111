"""JSON answers shared by every route: success, `{"error": ...}`, and the database's absence.

>>> json_error(404, "There is no job 7.").status_code
404
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
from collections.abc import Callable
from typing import Any

import bottle
import procrastinate
import psycopg
import psycopg_pool

from tally import db
from tally.answer_bound import AnswerTimedOut
from tally.logs import READS_BUSY_LOGGER, describe_error
from tally.web import error_page
from tally.web.filters import FILTER_NAMES
from tally.web.replica import ReadsBusy

logger = logging.getLogger("tally.web")
busy_logger = logging.getLogger(READS_BUSY_LOGGER)  # one line per 10 s (tally/logs.py)

# A request's query that ran past the web's statement_timeout, or waited past its lock_timeout
# for a table someone else locked: the database is there, and says why it stopped.
TOO_SLOW = psycopg.errors.QueryCanceled
LOCKED = psycopg.errors.LockNotAvailable
# A count that passed the statement timeout takes as long when asked again at once: a client
# (the dashboard's reload above all) waits this long before it asks again.
SLOW_COUNT_RETRY_SECONDS = 300
# What the database's absence looks like from a request: connect, pool wait, lost socket.
DATABASE_DOWN = (psycopg.OperationalError, psycopg_pool.PoolTimeout, psycopg.InterfaceError)
# What a database without Tally's schema looks like: the release step has not run.
NOT_MIGRATED = (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedFunction)
# What a database that takes no writes from DATABASE_URL looks like: a read-only role, a
# follower's URL, a plan over its row limit (Heroku revokes INSERT).
WRITES_REFUSED = (psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction)


def json_value(value: object) -> str:
    """What JSON cannot hold, as text: a time in ISO 8601, in UTC, as health writes them (a
    pause answered `2026-12-05 03:45:09.398410+00:00`, str()'s form)."""
    if isinstance(value, datetime.datetime) and value.tzinfo is not None:
        return value.astimezone(datetime.UTC).isoformat()
    return str(value)


# One encoder for every answer: json.dumps with `default` builds a new one each call (1 us of a
# beacon's 40).
_ENCODER = json.JSONEncoder(default=json_value)


def json_response(status: int, body: object, **headers: str) -> bottle.HTTPResponse:
    return bottle.HTTPResponse(
        status=status,
        body=_ENCODER.encode(body),
        headers={"Content-Type": "application/json", "Cache-Control": "no-store", **headers},
    )


def json_error(status: int, sentence: str, **headers: str) -> bottle.HTTPResponse:
    return json_response(status, {"error": sentence}, **headers)


def _writes() -> bool:
    """Whether the request being answered changes something (a view, an event, a job)."""
    return bottle.request.method not in ("GET", "HEAD")


def database_unavailable(route: Callable) -> Callable:
    """Answer 503 (not 500) when the database cannot be reached, or cannot answer in time."""

    @functools.wraps(route)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            try:
                return route(*args, **kwargs)
            except procrastinate.exceptions.ConnectorException as error:
                # Deferring and cancelling go through procrastinate's connector, which wraps
                # psycopg's and the pool's errors in its own: judge the one it wraps.
                if isinstance(error.__cause__, Exception):
                    raise error.__cause__ from None
                raise
        except TOO_SLOW:
            query = bottle.request.query
            asked = " ".join(f"{name}={query[name]}" for name in query if name not in ("share", "token"))
            logger.warning(
                "%s %s: a query passed the statement timeout (%s)",
                bottle.request.method,
                bottle.request.path,
                asked or "no parameters",  # which window and filters were slow; never the share token
            )
            if _writes():
                return json_error(
                    503,
                    f"The database did not finish this within the {db.WEB_STATEMENT_TIMEOUT_SECONDS} s a"
                    " statement may take here; nothing was changed; try again shortly.",
                )
            if not any(name in FILTER_NAMES for name in query):
                # Unfiltered answers read the rollups and the views not yet folded: slow when many
                # wait (a stopped worker, a backfill just loaded), or when a backfill's visitor ids
                # span days (their day-to-day pairs, docs/ARCHITECTURE.md, "Sites and visitors").
                return json_error(
                    503,
                    f"Counting this took longer than the {db.WEB_STATEMENT_TIMEOUT_SECONDS} s a query may"
                    " take here: either the rollup is behind (is a worker running? /api/health's"
                    " rollup_views_waiting says how many views wait), or the window holds many visitor"
                    " ids that span days (a backfill's); try again in a minute, or fewer days.",
                    **{"Retry-After": "60"},
                )
            return json_error(
                503,
                f"Counting this took longer than the {db.WEB_STATEMENT_TIMEOUT_SECONDS} s a query may take"
                " here (a filter over many views counts them one by one); try fewer days or a narrower"
                " filter.",
                **{"Retry-After": str(SLOW_COUNT_RETRY_SECONDS)},
            )
        except ReadsBusy as error:
            busy_logger.warning("%s %s: reads busy: %s", bottle.request.method, bottle.request.path, error)
            return json_error(
                503,
                "Other slow reads hold this web's share of the database (the rest stays free for the"
                " views arriving); try again in a few seconds.",
                **{"Retry-After": "5"},
            )
        except LOCKED:
            logger.warning("%s %s: a table it needs is locked", bottle.request.method, bottle.request.path)
            nothing = " nothing was changed;" if _writes() else ""
            return json_error(
                503,
                f"A table this {'writes' if _writes() else 'reads'} is locked (a migration or maintenance"
                f" is running);{nothing} try again shortly.",
            )
        except AnswerTimedOut as error:
            logger.warning("%s %s: %s", bottle.request.method, bottle.request.path, error)
            if _writes():  # sent, and maybe done: a sender that sends it again may count it twice
                return json_error(
                    503,
                    "The database took this and stopped answering; it may or may not have been"
                    " stored (it is, if the database finishes it): check before sending it again.",
                )
            return json_error(503, "The database stopped answering; try again shortly.")
        except db.PREPARED_STATEMENTS_LOST as error:
            return _prepared_statement_lost(error)
        except DATABASE_DOWN as error:
            if db.lost_prepared_statement(error):
                return _prepared_statement_lost(error)
            problem = getattr(error, "problem", "unreachable")  # a NoConnection says why
            logger.warning(
                "%s %s: database %s: %s", bottle.request.method, bottle.request.path, problem, error
            )
            if problem == "unreachable":
                return json_error(503, "The database is unreachable; try again shortly.")
            if problem.startswith("busy:"):
                return json_error(
                    503,
                    "Every database connection of this web process stayed in use (the database is up);"
                    " try again in a moment.",
                    **{"Retry-After": "1"},
                )
            if problem.startswith("full:"):
                return json_error(
                    503,
                    "The database has no free connection: every slot of its max_connections is taken;"
                    " try again shortly.",
                )
            return json_error(503, f"The database cannot be used: it is {problem}.")
        except NOT_MIGRATED as error:
            logger.error("%s %s: schema missing: %s", bottle.request.method, bottle.request.path, error)
            return json_error(503, "The database has no Tally schema yet: run `python -m migrations`.")
        except WRITES_REFUSED as error:
            logger.error("%s %s: refused: %s", bottle.request.method, bottle.request.path, error)
            if not _writes() and isinstance(error, psycopg.errors.InsufficientPrivilege):
                return json_error(
                    503,
                    "The database refuses this: DATABASE_URL's role may not read a table it needs"
                    " (its privileges were changed by hand?).",
                )
            return json_error(
                503,
                "The database refuses this: DATABASE_URL's role may not write here (a read-only"
                " credential, a follower, or a plan over its row limit).",
            )
        except psycopg.errors.InvalidParameterValue as error:
            # The only values Tally passes that PostgreSQL may refuse: a zone name that Python's
            # zone database knows and the server's does not (they are updated apart).
            logger.warning("%s %s: %s", bottle.request.method, bottle.request.path, error)
            return json_error(400, "This time zone is unknown to the database; try another name for it.")

    return wrapper


def _prepared_statement_lost(error: psycopg.Error) -> bottle.HTTPResponse:
    """A statement refused before it ran (missing, clashing, or another's of the same name): nothing
    was done. Through a transaction pooler it is most requests' fate, and a 500 said nothing of why."""
    logger.error("%s %s: %s (%s)", bottle.request.method, bottle.request.path, db.POOLER_HINT, error.sqlstate)
    nothing = " nothing was changed;" if _writes() else ""
    return json_error(
        503,
        "The database's connection pooler lost this request's prepared statement;"
        f"{nothing} try again shortly (the operator must set DATABASE_POOLER=transaction).",
    )


def error_as_json(error: bottle.HTTPError) -> str:
    """Bottle's own errors (no route, wrong method, an exception) as `{"error": ...}`."""
    bottle.response.content_type = "application/json"
    if error.status_code >= 500:
        # The type and the frames, never the message: it may hold a header (tally/web/headers.py).
        logger.error(
            "unhandled error on %s %s: %s",
            bottle.request.method,
            bottle.request.path,
            describe_error(error.exception) if error.exception else error.status_line,
        )
        return json.dumps({"error": "Internal error; it has been logged."})
    allowed = [method.strip() for method in error.headers.get("Allow", "").split(",") if method.strip()]
    if "GET" in allowed and "HEAD" not in allowed:  # bottle answers HEAD for every GET route
        error.set_header("Allow", ", ".join([*allowed, "HEAD"]))
    sentences = {404: "There is nothing at this address.", 405: "This method is not allowed here."}
    sentence = sentences.get(error.status_code, "The request was not understood.")
    if not bottle.request.path.startswith("/api/") and error_page.wants_html():
        return error_page.no_route_page(error.status_code, sentence)  # a browser at no page
    return json.dumps({"error": sentence})
