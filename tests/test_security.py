"""Cross-site access (ALLOW_ORIGINS) and the security headers on every response."""

from __future__ import annotations

import base64
import hashlib

import pytest
from starlette.applications import Starlette
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from streamchat.core.errors import ConfigError
from streamchat.hosting.security import (
    ContentSecurityPolicy,
    OriginPolicy,
    SecurityHeadersMiddleware,
    apply_origin_policy,
)


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


def inline_page() -> bytes:
    return b"<html><head><script>window.a = 1;</script><script src='/x.js'></script></head></html>"


def served(app_response, *, gzip_page: bool = False) -> TestClient:
    async def page(request):
        return app_response()

    app = Starlette(routes=[Route("/", page)])
    if gzip_page:
        app.add_middleware(GZipMiddleware, minimum_size=1)
    app.add_middleware(
        SecurityHeadersMiddleware, policy=ContentSecurityPolicy(("https://img.example",))
    )
    return TestClient(app)


@pytest.mark.parametrize("gzip_page", [False, True])
def test_a_page_is_served_with_a_policy_allowing_only_its_own_inline_scripts(gzip_page):
    response = served(lambda: HTMLResponse(inline_page()), gzip_page=gzip_page).get("/")
    policy = response.headers["content-security-policy"]
    expected = base64.b64encode(hashlib.sha256(b"window.a = 1;").digest()).decode()
    assert f"'sha256-{expected}'" in policy
    assert policy.count("'sha256-") == 1, "the script with src= is not hashed"
    assert "'unsafe-inline'" not in policy.split("script-src")[1].split(";")[0]
    assert "img-src 'self' data: blob: https://img.example;" in policy
    assert "frame-ancestors 'self'" in policy
    assert response.text == inline_page().decode()


def test_every_other_response_carries_the_policy_too():
    policy = served(lambda: JSONResponse({"ok": True})).get("/").headers["content-security-policy"]
    assert "img-src 'self' data: blob: https://img.example" in policy
    assert "sha256" not in policy


def test_each_cors_header_is_sent_once_whatever_its_case():
    def both() -> PlainTextResponse:
        response = PlainTextResponse("ok")
        response.raw_headers += [
            (b"Access-Control-Allow-Origin", b"https://a.example"),
            (b"access-control-allow-origin", b"https://a.example"),
            (b"Access-Control-Allow-Credentials", b"true"),
            (b"access-control-allow-credentials", b"true"),
        ]
        return response

    headers = served(both).get("/").headers
    assert headers.get_list("access-control-allow-origin") == ["https://a.example"]
    assert headers.get_list("access-control-allow-credentials") == ["true"]


def test_image_sources_are_read_and_checked():
    policy = ContentSecurityPolicy.from_env(
        {"IMAGE_SOURCES": "https://images.example.com, *.cdn.example"}
    )
    assert policy.image_sources == ("https://images.example.com", "*.cdn.example")
    assert ContentSecurityPolicy.from_env({}).image_sources == ()
    for bad in ("*", "https:", "'unsafe-inline'", "data:", "https://x.example/path"):
        with pytest.raises(ConfigError, match="IMAGE_SOURCES"):
            ContentSecurityPolicy.from_env({"IMAGE_SOURCES": bad})


CHAINLIT_HEAD = (
    b'<html><head><link rel="preconnect" href="https://fonts.googleapis.com" />\n'
    b'<link href="https://fonts.googleapis.com/css2?family=Inter" rel="stylesheet" />\n'
    b'<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/katex/katex.min.css" />\n'
    b'<link rel="icon" href="/favicon" /><link rel="stylesheet" href="/public/style.css">'
    b"<script>window.a = 1;</script></head></html>"
)


@pytest.mark.parametrize("gzip_page", [False, True])
def test_a_page_loses_its_links_to_other_sites_and_styles_come_from_the_app_only(gzip_page):
    response = served(lambda: HTMLResponse(CHAINLIT_HEAD), gzip_page=gzip_page).get("/")
    assert "googleapis" not in response.text and "jsdelivr" not in response.text
    assert '<link rel="icon" href="/favicon" />' in response.text
    assert 'href="/public/style.css"' in response.text
    assert int(response.headers["content-length"]) == len(response.content) or gzip_page
    policy = response.headers["content-security-policy"]
    assert "style-src 'self' 'unsafe-inline';" in policy
    assert "font-src 'self' data:;" in policy
    assert "googleapis" not in policy and "jsdelivr" not in policy and "gstatic" not in policy
