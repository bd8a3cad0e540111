"""The owner's login form, login and logout; tally/web/login.py answers them."""

from __future__ import annotations

import bottle

from tally.web.auth import Auth
from tally.web.login import Login


def register(app: bottle.Bottle, auth: Auth) -> None:
    """Add the login and logout routes to `app`."""
    login = Login(auth)

    @app.get("/login")
    def show_login():
        """Show the owner's login form."""
        return login.form()

    @app.post("/login")
    def log_in():
        """Check the admin token from the login form and start a session."""
        return login.log_in()

    @app.post("/logout")
    def log_out():
        """End the session, on every web dyno."""
        return login.log_out()
