"""HTTP routes streamchat adds to Chainlit's own FastAPI app (same port as the UI).

Chainlit serves its UI from a catch-all `GET /{full_path:path}` route, so a GET route added
after it is never reached. `mount` inserts our routes before the catch-all.
"""

from __future__ import annotations

import hmac

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute

from streamchat.metrics import PROCESS_METRICS, ProcessMetrics

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_CATCH_ALL = "/{full_path:path}"


def mount(
    app: FastAPI, *, metrics: ProcessMetrics = PROCESS_METRICS, metrics_token: str | None = None
) -> None:
    """Add /metrics (Prometheus text; bearer token required when `metrics_token` is set)."""
    if getattr(app.state, "streamchat_mounted", False):
        return
    app.state.streamchat_mounted = True

    async def prometheus_metrics(request: Request) -> Response:
        if metrics_token and not _bearer_matches(request, metrics_token):
            return Response(
                '{"error": "a valid bearer token is required for /metrics"}',
                status_code=401,
                media_type="application/json",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return Response(metrics.exposition(), media_type=PROMETHEUS_CONTENT_TYPE)

    routes = [APIRoute("/metrics", prometheus_metrics, methods=["GET"], include_in_schema=False)]
    _insert_before_catch_all(app, routes)


def _bearer_matches(request: Request, token: str) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip(), token)


def _insert_before_catch_all(app: FastAPI, routes: list[APIRoute]) -> None:
    existing = app.router.routes
    position = next(
        (i for i, route in enumerate(existing) if getattr(route, "path", None) == _CATCH_ALL),
        len(existing),
    )
    existing[position:position] = routes
