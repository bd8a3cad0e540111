"""The owner's login form, login and logout; tally/web/auth.py holds the checks."""

from __future__ import annotations

import bottle

from tally.web.auth import Auth


def register(app: bottle.Bottle, auth: Auth) -> None:
    """Add the login and logout routes to `app`."""

    @app.get("/login")
    def show_login():
        """Show the owner's login form."""
        return auth.login_page()

    @app.post("/login")
    def log_in():
        """Check the admin token from the login form and start a session."""
        return auth.log_in()

    @app.post("/logout")
    def log_out():
        """End the session."""
        return auth.log_out()
