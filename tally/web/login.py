"""The owner's login form, logging in and logging out (routes in tally/web/routes_auth.py).

The cookie and the form's page are tally/web/sessions.py; who may read what once logged in is
tally/web/auth.py, whose failed-login limit the form shares with every other token. Logging
out ends the session on every dyno, not only in this browser: its digest is kept in PostgreSQL
until the session would have expired (tally/web/ended_sessions.py).
"""

from __future__ import annotations

import logging

import bottle

from tally.logs import describe_error
from tally.web import sessions
from tally.web.auth import MAX_FORM_BYTES, SESSION_CHECK_FAILED, Auth, same_token
from tally.web.headers import form_fields

logger = logging.getLogger("tally.web.auth")

NOT_RECORDED = (
    "Logged out in this browser only: the database is unreachable, so a copy of this session's"
    " cookie would still open the stats until it expires. Log in and out again once it is back,"
    " or change ADMIN_TOKEN to end every session."
)


class Login:
    """The login form's three answers, for the owner of `auth`'s ADMIN_TOKEN."""

    def __init__(self, auth: Auth):
        self.auth = auth

    def form(self) -> bottle.HTTPResponse:
        return self.auth.page(200, None)

    def log_in(self) -> bottle.HTTPResponse:
        """Check the form's token; on success set the session cookie and go to the page the form
        names (the one the login form stood in for), else to the dashboard."""
        auth = self.auth
        if not sessions.sent_from_own_pages():
            return auth.page(403, "This form only works from Tally's own pages.")
        if auth.sessions is None:
            return auth.page(403, "Owner login is off: set ADMIN_TOKEN and restart Tally.")
        if bottle.request.content_length > MAX_FORM_BYTES:
            return auth.page(413, "That form is far larger than a token.")
        token = (form_fields().getunicode("token") or "").strip()
        if not token:
            return auth.page(400, "Enter the admin token.")
        auth.check_failures()
        if not same_token(token, auth.admin_token or ""):
            auth.count_failure()
            return auth.page(401, "That is not the admin token.")
        return sessions.start_session(auth.sessions, auth.return_address() or "/")

    def log_out(self) -> bottle.HTTPResponse:
        """End the session on every dyno and clear its cookie; the form must come from the
        dashboard of this session."""
        auth = self.auth
        if not sessions.sent_from_own_pages():
            return auth.page(403, "This form only works from Tally's own pages.")
        if bottle.request.content_length > MAX_FORM_BYTES:
            return auth.page(413, "That form is far larger than a logout.")
        session = auth.signed_session()
        if session is None:  # none, expired, or another token's: only the cookie to clear
            return sessions.end_session()
        if not same_token(form_fields().getunicode("csrf") or "", session["csrf"]):
            return auth.page(403, "That logout form is not from this session: reload the dashboard.")
        try:
            auth.ended.end(session["csrf"])
        except SESSION_CHECK_FAILED as error:
            logger.warning("logout not recorded: %s", describe_error(error))
            return sessions.end_session(NOT_RECORDED)
        return sessions.end_session()
