"""GET /api/openapi.json: the API's description (tally/web/openapi.py), public."""

from __future__ import annotations

import bottle

from tally.web import openapi
from tally.web.responses import json_response


def register(app: bottle.Bottle) -> None:
    """Add the description's route to `app`."""
    document = openapi.document()

    @app.get("/api/openapi.json")
    def show_openapi():
        """Describe every route in OpenAPI 3.1."""
        return json_response(200, document, **{"Access-Control-Allow-Origin": "*"})
