"""Routes of the job queue's API: the summary, one job, defer, retry, cancel (one or in bulk),
and pausing and resuming queues.

Reads are the owner's (`@auth.owner_only`); changes take the bearer token, or the jobs
page's session with its CSRF token (`@auth.owner_changes`). A change from the page answers
303 back to the page it came from (its `next` field) with the outcome as `?notice=`; from
a script, JSON.
"""

from __future__ import annotations

import json
import urllib.parse

import bottle
import procrastinate
import psycopg_pool

from tally.web import job_actions, queue_state
from tally.web.auth import BY_SESSION, Auth
from tally.web.error_page import page_errors
from tally.web.headers import form_fields
from tally.web.job_actions import QUEUE_NAME, Outcome
from tally.web.params import parse_before, parse_job_filters, refuse_unknown
from tally.web.responses import database_unavailable, json_error, json_response
from tally.web.sessions import PAGE_HEADERS


def back_to_page(outcome: Outcome) -> bottle.HTTPResponse:
    """303 to the form's `next` (a path of the jobs pages only: no open redirect; printable ASCII
    only, as a Location header holds: Bottle refuses a line break or NUL there), with a notice."""
    target = form_fields().getunicode("next") or "/jobs"
    if not (target == "/jobs" or target.startswith(("/jobs?", "/jobs/"))) or "\\" in target:
        target = "/jobs"
    if not all("!" <= character <= "~" for character in target):
        target = "/jobs"
    separator = "&" if "?" in target else "?"
    location = target + separator + urllib.parse.urlencode({"notice": outcome.sentence})
    return bottle.HTTPResponse(status=303, headers={"Location": location, **PAGE_HEADERS})


# What a defer may carry: the jobs page's form fields, never arguments of the task.
FORM_FIELDS = frozenset({"csrf", "next"})
MAX_DEFER_BODY_BYTES = 64 * 1024


def arguments_sent(request: bottle.BaseRequest) -> str | None:
    """What a defer was sent as the task's arguments, in words ("the argument 'period'": a query
    parameter, a form field that is not the page's, or a JSON object's key), or None. Such a
    request was answered 202 and deferred its job with none of them. An empty body, `{}` (however
    spaced) or `null` sends none."""
    for name in request.query:
        return f"the argument {name!r}"
    if "json" in (request.content_type or ""):
        body = request.body.read(MAX_DEFER_BODY_BYTES + 1).strip()
        if not body:
            return None
        document = json.loads(body)  # ValueError: not JSON
        if document is None or document == {}:
            return None
        if isinstance(document, dict):
            return f"the argument {next(iter(document))!r}"
        return "a JSON body that is not an object of arguments"
    for name in form_fields():
        if name not in FORM_FIELDS:
            return f"the argument {name!r}"
    return None


def register(
    app: bottle.Bottle, pool: psycopg_pool.ConnectionPool, auth: Auth, jobs_app: procrastinate.App
) -> None:
    """Add the job and queue routes to `app`."""
    deferrable = sorted(name for name in jobs_app.tasks if "." not in name and ":" not in name)

    def answer(outcome: Outcome) -> bottle.HTTPResponse:
        if auth.actor() == BY_SESSION:
            return back_to_page(outcome)
        body = {name: value for name, value in outcome.body.items() if name != "done"}
        return json_response(outcome.status, body)

    def takes_no_parameters() -> None:
        # A misspelt or stray parameter (`?force=1`) would be answered as if it were absent.
        refuse_unknown(bottle.request.query, frozenset(), "this route takes no query parameters")

    def queue_name(name: str) -> str:
        if not QUEUE_NAME.fullmatch(name):
            raise json_error(400, "A queue name is 1 to 40 letters, digits or _ . : - characters.")
        return name

    @app.get("/api/jobs")
    @auth.owner_only
    @database_unavailable
    def show_queue():
        """Summarise the queue: counts by status and task, oldest waiting job, last failures."""
        takes_no_parameters()
        with pool.connection() as conn:
            return json_response(200, queue_state.queue_summary(conn))

    @app.get("/api/jobs/<job_id:int>")
    @auth.owner_only
    @database_unavailable
    def show_job(job_id: int):
        """Show one job: task, status, attempts, queue and timestamps."""
        takes_no_parameters()
        with pool.connection() as conn:
            job = queue_state.job_detail(conn, job_id)
        if job is None:
            return json_error(404, f"There is no job {job_id}.")
        return json_response(200, job)

    @app.get("/api/jobs/<job_id>")
    @auth.owner_only
    def show_job_not_a_number(job_id: str):
        """Job ids are whole numbers: anything else names no job."""
        return json_error(404, f"There is no job {job_id!r}: job ids are whole numbers.")

    @app.post("/api/jobs/<job_id:int>/retry")
    @page_errors
    @auth.owner_changes
    @database_unavailable
    def retry_failed_job(job_id: int):
        """Queue a failed, cancelled or aborted job again, to run at once (owner)."""
        takes_no_parameters()
        with pool.connection() as conn:
            return answer(job_actions.retry(conn, job_id, auth.actor()))

    @app.post("/api/jobs/<job_id:int>/cancel")
    @page_errors
    @auth.owner_changes
    @database_unavailable
    def cancel_job(job_id: int):
        """Cancel a waiting job, or ask a running one to abort (owner)."""
        takes_no_parameters()
        with pool.connection() as conn:
            return answer(job_actions.cancel(conn, jobs_app, job_id, auth.actor()))

    @app.post("/api/jobs/bulk/retry")
    @page_errors
    @auth.owner_changes
    @database_unavailable
    def retry_matching_jobs():
        """Queue again the failed, cancelled and aborted jobs of ?status, ?task and ?queue (owner)."""
        filters = parse_job_filters(bottle.request.query)
        parse_before(bottle.request.query)  # the page the form was on: any other value is a 400
        with pool.connection() as conn:
            return answer(job_actions.retry_matching(conn, filters, auth.actor()))

    @app.post("/api/jobs/bulk/cancel")
    @page_errors
    @auth.owner_changes
    @database_unavailable
    def cancel_matching_jobs():
        """Cancel the waiting jobs of ?status, ?task and ?queue, and abort its running ones (owner)."""
        filters = parse_job_filters(bottle.request.query)
        parse_before(bottle.request.query)  # the page the form was on: any other value is a 400
        with pool.connection() as conn:
            return answer(job_actions.cancel_matching(conn, filters, auth.actor()))

    @app.post("/api/jobs/<task>")
    @page_errors
    @auth.owner_changes
    @database_unavailable
    def defer_job(task: str):
        """Defer a job of a task by name, with no arguments (owner)."""
        if task not in deferrable:
            return json_error(404, f"There is no task {task!r}; known tasks: {', '.join(deferrable)}.")
        try:
            argument = arguments_sent(bottle.request)
        except (ValueError, RecursionError):  # RecursionError: nested past json.loads' depth
            argument = "a body that is not JSON"
        if argument is not None:
            return json_error(
                400,
                f"This defers {task} with no arguments, and {argument} was sent: nothing deferred. With"
                f" arguments: procrastinate --app=jobs.app defer {task} '{{\"name\": value}}'.",
            )
        job_id = jobs_app.tasks[task].defer()
        job_actions.logger.info("task %s deferred as job %s by %s", task, job_id, auth.actor())
        done = f"Job {job_id} of {task} deferred."
        return answer(Outcome(202, {"job_id": job_id, "task": task, "done": done}))

    @app.post("/api/queues/<name>/pause")
    @page_errors
    @auth.owner_changes
    @database_unavailable
    def pause_queue(name: str):
        """Stop workers from starting the jobs of a queue until it is resumed (owner)."""
        takes_no_parameters()
        with pool.connection() as conn:
            return answer(job_actions.pause(conn, queue_name(name), auth.actor()))

    @app.post("/api/queues/<name>/resume")
    @page_errors
    @auth.owner_changes
    @database_unavailable
    def resume_queue(name: str):
        """Let workers start a paused queue's jobs again, at once (owner)."""
        takes_no_parameters()
        with pool.connection() as conn:
            return answer(job_actions.resume(conn, queue_name(name), auth.actor()))
