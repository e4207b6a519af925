"""Cross-site access (ALLOW_ORIGINS) and the security headers on every response."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from streamchat.core.errors import ConfigError
from streamchat.hosting.security import OriginPolicy, SecurityHeadersMiddleware, apply_origin_policy


def test_unset_means_any_origin_locally_and_only_the_app_itself_with_login():
    assert OriginPolicy.from_env({}, login=False).any_origin
    hosted = OriginPolicy.from_env({}, login=True)
    assert not hosted.any_origin and hosted.cors_origins == []
    assert hosted.allows("https://chat.example.com", "chat.example.com", "https")
    assert not hosted.allows("https://evil.example", "chat.example.com", "https")
    assert hosted.allows(None, "chat.example.com", "https"), (
        "no Origin: not a browser's cross-site call"
    )


def test_listed_origins_are_allowed_and_validated():
    policy = OriginPolicy.from_env(
        {"ALLOW_ORIGINS": "https://a.example, http://localhost:3000/"}, login=True
    )
    assert policy.cors_origins == ["https://a.example", "http://localhost:3000"]
    assert policy.allows("https://A.example", "app.internal", "http")
    assert not policy.allows("https://b.example", "app.internal", "http")
    assert OriginPolicy.from_env({"ALLOW_ORIGINS": "*"}, login=True).any_origin
    for bad in ("chat.example.com", "ftp://x.example", "https://x.example/path"):
        with pytest.raises(ConfigError, match="ALLOW_ORIGINS"):
            OriginPolicy.from_env({"ALLOW_ORIGINS": bad}, login=True)


def test_socketio_check_reads_the_handshake_and_proxy_headers():
    policy = OriginPolicy(origins=("https://partner.example",))
    direct = {"HTTP_HOST": "127.0.0.1:8000", "wsgi.url_scheme": "http"}
    assert policy.socketio_check("http://127.0.0.1:8000", direct)
    assert policy.socketio_check("https://partner.example", direct)
    assert not policy.socketio_check("https://evil.example", direct)
    proxied = {
        "HTTP_HOST": "app:8000",
        "HTTP_X_FORWARDED_HOST": "chat.example.com",
        "HTTP_X_FORWARDED_PROTO": "https",
        "wsgi.url_scheme": "http",
    }
    assert policy.socketio_check("https://chat.example.com", proxied)
    assert not policy.socketio_check("https://app:8000", proxied)


def test_apply_installs_the_policy_in_place():
    class Engine:
        cors_allowed_origins: object = []

    class Sio:
        eio = Engine()

    chainlit_list = ["*"]
    policy = OriginPolicy(origins=("https://a.example",))
    apply_origin_policy(policy, cors_origins=chainlit_list, sio=Sio())
    assert chainlit_list == ["https://a.example"]
    assert Sio.eio.cors_allowed_origins == policy.socketio_check


def test_security_headers_are_added_without_overriding_the_app():
    async def page(request):
        return PlainTextResponse("hi", headers={"X-Frame-Options": "DENY"})

    app = Starlette(routes=[Route("/", page)])
    app.add_middleware(SecurityHeadersMiddleware)
    response = TestClient(app).get("/")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "strict-origin-when-cross-origin"
    assert response.headers["x-frame-options"] == "DENY"
