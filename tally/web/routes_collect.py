"""Routes that write views: the tracker script, its beacon endpoint, and server-side senders.

No guard on any of them: they write views and tell nothing about them (tally/web/auth.py).
"""

from __future__ import annotations

import bottle

from tally.config import Config
from tally.sites import DEFAULT_SITE
from tally.web.beacon import Refused
from tally.web.collect import Collector, cors_headers
from tally.web.later import LATER
from tally.web.pageviews import MAX_BODY_BYTES, InvalidPageViews, parse_page_views
from tally.web.responses import database_unavailable, json_error, json_response
from tally.web.tracker import Tracker
from tally.web.view_writer import ViewWriter


def body_too_large() -> bottle.HTTPResponse:
    return json_error(413, f"The body is larger than {MAX_BODY_BYTES} bytes.")


def register(app: bottle.Bottle, config: Config, writer: ViewWriter, collector: Collector) -> None:
    """Add the collect routes to `app`."""
    tracker = Tracker()

    @app.post("/api/pageviews")
    @database_unavailable
    def record_page_views():
        """Store one page view or a batch of them, all or nothing."""
        media_type = (bottle.request.content_type or "").split(";")[0].strip().lower()
        if media_type != "application/json":
            return json_error(415, "Send page views as Content-Type: application/json.")
        # The declared length first, so an oversized body is never buffered.
        if bottle.request.content_length > MAX_BODY_BYTES:
            return body_too_large()
        body = bottle.request.body.read(MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            return body_too_large()
        try:
            views = parse_page_views(body)
        except InvalidPageViews as error:
            return json_error(400, str(error))
        if config.sites is not None:
            refused = {view.site for view in views} - config.sites
            named = sorted(refused - {DEFAULT_SITE})
            if named:  # a site the sender named, before the default it left out ("default" < "evil.com")
                return json_error(403, f"Views of {named[0]} are not accepted here: it is not in SITES.")
            if refused:
                # Else anyone could post into the all-sites stats what SITES keeps out of them.
                return json_error(403, "Name the site of each view: with SITES set, only those are accepted.")
        # With the views of concurrent requests, in one INSERT; served by web.py, the 201 is held
        # until that commit and no thread waits (tally/web/later.py).
        writer.write(views, bottle.request.environ.get(LATER))
        return json_response(201, {"stored": len(views)})

    @app.get("/tally.js")
    def serve_tracker():
        """Serve the tracker that a site's pages load with one script tag."""
        return tracker.response(bottle.request)

    @app.route("/api/collect", method="OPTIONS")
    def allow_collect_from_any_origin():
        """Answer the CORS preflight of a site's pages: any origin may send views here."""
        origin = bottle.request.get_header("Origin")
        return bottle.HTTPResponse(status=204, headers=cors_headers(origin, preflight=True))

    @app.post("/api/collect")
    @database_unavailable
    def collect_page_view():
        """Store the view that tally.js sent, unless a crawler sent it or its site is not in SITES."""
        cors = cors_headers(bottle.request.get_header("Origin"))
        try:
            outcome = collector.collect(bottle.request)
        except Refused as refused:
            return json_error(refused.status, str(refused), **cors)
        return json_response(outcome.status, outcome.body, **cors)
