"""/metrics is served before Chainlit's catch-all GET route and speaks Prometheus text."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from starlette.testclient import TestClient

from streamchat.core.metrics import ProcessMetrics, StreamStats
from streamchat.faces.web import mount
from streamchat.runtime import Runtime
from streamchat.settings import Settings


def app_with_catch_all() -> FastAPI:
    """Built like chainlit.server.app: the UI's catch-all GET route in an included router."""
    app = FastAPI()
    router = APIRouter()

    @router.get("/{full_path:path}")
    async def ui(full_path: str) -> HTMLResponse:  # stands in for Chainlit's UI route
        return HTMLResponse("<html>ui</html>")

    app.include_router(router)
    return app


def test_metrics_route_wins_over_the_catch_all_and_counts_streams():
    metrics = ProcessMetrics()
    metrics.record(StreamStats(0.2, 1.0, 12, 3, True, 14), "complete", None)
    metrics.record(StreamStats(None, 0.1, 0, 0, False, 0), "error", "rate_limited")
    app = app_with_catch_all()
    mount(app, metrics=metrics)
    response = TestClient(app).get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    body = response.text
    assert 'streamchat_streams_total{reason="complete"} 1.0' in body
    assert "streamchat_tokens_total 12.0" in body
    assert 'streamchat_errors_total{kind="rate_limited"} 1.0' in body
    assert "streamchat_first_token_seconds_count 1.0" in body
    assert "streamchat_streams_active 0.0" in body
    assert TestClient(app).get("/anything").text == "<html>ui</html>"


def test_metrics_token_is_required_when_set():
    app = app_with_catch_all()
    runtime = Runtime(Settings.from_env({"METRICS_TOKEN": "s3cret-token"}))
    mount(app, metrics=ProcessMetrics(), runtime=runtime)
    client = TestClient(app)
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
    assert ok.status_code == 200 and "streamchat_tokens_total" in ok.text


def test_mounting_twice_adds_the_route_once():
    app = app_with_catch_all()
    mount(app, metrics=ProcessMetrics())
    mount(app, metrics=ProcessMetrics())
    assert [getattr(r, "path", "") for r in app.router.routes].count("/metrics") == 1


def test_a_bearer_that_is_not_ascii_is_refused_not_a_server_error():
    app = app_with_catch_all()
    runtime = Runtime(Settings.from_env({"METRICS_TOKEN": "s3cret-token"}))
    mount(app, metrics=ProcessMetrics(), runtime=runtime)
    client = TestClient(app, raise_server_exceptions=False)
    refused = client.get("/metrics", headers={"Authorization": "Bearer s3cr\u00e9t".encode()})
    assert refused.status_code == 401
