"""Who may talk to the app from another web origin, and the security headers on every response.

Every response carries a Content-Security-Policy: images only from the app itself, `data:` and
the sites in `IMAGE_SOURCES` (so a Markdown image in a model's answer cannot carry chat text to
another site), scripts only from the app plus the inline scripts of the page being served (their
hashes are computed from the page itself), stylesheets and fonts from the app only (the page's
links to Google Fonts and a KaTeX CDN are taken out), and no framing by other sites.

`ALLOW_ORIGINS` lists the origins (scheme://host[:port]) of other sites whose pages may call the
app: its HTTP API (CORS) and its Socket.IO endpoint (the Origin header of the websocket
handshake, which browsers do not police themselves). The app's own origin is always allowed.
Unset, it is `*` for local use and nothing but the app itself once login is on, so a hosted
app is never open to scripts on other sites by accident.
"""

from __future__ import annotations

import base64
import contextvars
import gzip
import hashlib
import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamchat.core.errors import ConfigError
from streamchat.settings import ConfigReader

# Sent with every HTTP response (the Content-Security-Policy is added beside them).
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"strict-origin-when-cross-origin"),
    (b"x-frame-options", b"SAMEORIGIN"),
)

# The HTTP request being served, for code that Chainlit calls without it (the login callback,
# the data layer): set by SecurityHeadersMiddleware for the request's own task.
current_request: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "streamchat_current_request", default=None
)

# Pages larger than this are sent with the policy as it is, without hashing their scripts.
_MAX_HASHED_PAGE = 1 << 20
_INLINE_SCRIPT = re.compile(
    rb"<script(?![^>]*\bsrc\s*=)[^>]*>(.*?)</script\s*>", re.IGNORECASE | re.DOTALL
)
# CORS headers that Starlette's CORSMiddleware and engine.io both write on Socket.IO polling
# answers (engine.io in mixed case, so Starlette does not see its copy): browsers refuse two.
_SINGLE_HEADERS = frozenset({b"access-control-allow-origin", b"access-control-allow-credentials"})


@dataclass(frozen=True, slots=True)
class ContentSecurityPolicy:
    """The Content-Security-Policy served with every response.

    `image_sources`: other origins images may come from (IMAGE_SOURCES), beside the app itself
    and `data:`. Chainlit's frontend needs `'unsafe-eval'` (custom elements such as the
    classroom's token view are compiled in the browser) and inline styles. Stylesheets and fonts
    come from the app only: the links Chainlit's page has to Google Fonts and to KaTeX on
    jsDelivr are taken out of it (`self_contained_page`), so a page load asks no other site.
    """

    image_sources: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ContentSecurityPolicy:
        return cls(
            image_sources=tuple(
                _image_source(v) for v in ConfigReader(environ).items("IMAGE_SOURCES")
            )
        )

    def header(self, script_hashes: Iterable[str] = ()) -> str:
        scripts = " ".join(["'self'", "'unsafe-eval'", *(f"'{h}'" for h in script_hashes)])
        images = " ".join(["'self'", "data:", "blob:", *self.image_sources])
        directives = (
            "default-src 'self'",
            f"script-src {scripts}",
            "style-src 'self' 'unsafe-inline'",
            "font-src 'self' data:",
            f"img-src {images}",
            "media-src 'self' data: blob:",
            "connect-src 'self'",
            "worker-src 'self' blob:",
            "object-src 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            "frame-ancestors 'self'",
        )
        return "; ".join(directives)


def _image_source(value: str) -> str:
    """An IMAGE_SOURCES entry: an origin (https://images.example.com) or a host pattern CSP
    accepts (*.example.com); anything else could loosen the policy in ways nobody meant."""
    if re.fullmatch(r"(https?://)?(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+(:\d{1,5})?", value):
        return value.rstrip("/")
    raise ConfigError(
        "IMAGE_SOURCES must be a comma-separated list of sites images may come from, such as "
        f"https://images.example.com or *.example.com (got {value!r})."
    )


# A <link> to another site (stylesheet, font, preconnect): Chainlit's page has them for Google
# Fonts and KaTeX's CSS (the app turns LaTeX off and uses the system's fonts).
_OUTSIDE_LINK = re.compile(
    rb"<link\b[^>]*\bhref\s*=\s*[\"']?(?:https?:)?//[^>]*>\s*", re.IGNORECASE
)


def self_contained_page(page: bytes) -> bytes:
    """The page without its links to other sites, so loading it makes no request elsewhere."""
    return _OUTSIDE_LINK.sub(b"", page)


def inline_script_hashes(page: bytes) -> list[str]:
    """The CSP hashes (sha256-...) of a page's inline scripts, as the browser computes them."""
    return [
        "sha256-" + base64.b64encode(hashlib.sha256(body).digest()).decode()
        for body in _INLINE_SCRIPT.findall(page)
    ]


@dataclass(frozen=True, slots=True)
class OriginPolicy:
    """`any_origin`: every origin may connect; otherwise the app's own and `origins`."""

    origins: tuple[str, ...] = ()
    any_origin: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, login: bool) -> OriginPolicy:
        origins = ConfigReader(env).items("ALLOW_ORIGINS")
        if not origins:
            return cls(any_origin=not login)
        if origins == ("*",):
            return cls(any_origin=True)
        return cls(origins=tuple(_checked_origin(item.rstrip("/")) for item in origins))

    def allows(self, origin: str | None, host: str | None, scheme: str) -> bool:
        """Whether a request with this Origin header may go on (no header: not a browser's
        cross-site request, so yes)."""
        if self.any_origin or not origin:
            return True
        origin = origin.rstrip("/").lower()
        if host and origin == f"{scheme}://{host}".lower():
            return True
        return origin in (o.lower() for o in self.origins)

    def socketio_check(self, origin: str | None, handshake: Mapping[str, Any]) -> bool:
        """For python-engineio's `cors_allowed_origins`, called with the handshake's WSGI-style
        environ (request headers as HTTP_* keys)."""
        host = handshake.get("HTTP_X_FORWARDED_HOST") or handshake.get("HTTP_HOST")
        scheme = handshake.get("HTTP_X_FORWARDED_PROTO") or handshake.get("wsgi.url_scheme", "http")
        host = str(host).split(",")[0].strip() if host else None
        scheme = str(scheme).split(",")[0].strip()
        if self.allows(origin, host, scheme):
            return True
        # Behind a TLS-terminating proxy that does not say so, the browser's origin is https.
        return scheme == "http" and self.allows(origin, host, "https")

    @property
    def cors_origins(self) -> list[str]:
        """For Starlette's CORSMiddleware: the other sites allowed to call the HTTP API."""
        return ["*"] if self.any_origin else list(self.origins)


def _checked_origin(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
        raise ConfigError(
            "ALLOW_ORIGINS must be a comma-separated list of origins such as "
            f"https://chat.example.com (scheme and host, no path); {value!r} is not one."
        )
    return value


def apply_origin_policy(policy: OriginPolicy, *, cors_origins: list[str], sio: Any) -> None:
    """Install the policy into Chainlit before it serves its first request: `cors_origins` is
    the very list Chainlit gave its CORSMiddleware (read when the middleware stack is built),
    `sio` its Socket.IO server."""
    cors_origins[:] = policy.cors_origins
    sio.eio.cors_allowed_origins = policy.socketio_check


class SecurityHeadersMiddleware:
    """Adds SECURITY_HEADERS and the Content-Security-Policy to every HTTP response that does
    not set them itself, sends each CORS header once, and makes the request being served known
    to code running for it (`current_request`)."""

    def __init__(self, app: ASGIApp, policy: ContentSecurityPolicy | None = None) -> None:
        self.app = app
        self.policy = policy or ContentSecurityPolicy()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        current_request.set(scope)
        held: list[Message] = []  # an HTML page's start and body, until its scripts are hashed

        async def send_with_headers(message: Message) -> None:
            if held:
                held.append(message)
                more = message["type"] == "http.response.body" and message.get("more_body")
                if more and sum(len(m.get("body", b"")) for m in held[1:]) <= _MAX_HASHED_PAGE:
                    return
                await _send_page(held, self.policy, send)
                held.clear()
                return
            if message["type"] == "http.response.start":
                headers = _single(list(message.get("headers", [])))
                if _is_html(headers) and not _has(headers, b"content-security-policy"):
                    held.append({**message, "headers": headers})
                    return
                message = {**message, "headers": _with_security(headers, self.policy.header())}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _send_page(held: list[Message], policy: ContentSecurityPolicy, send: Send) -> None:
    start, bodies = held[0], held[1:]
    headers = list(start["headers"])
    complete = not bodies[-1].get("more_body", False)
    hashes: list[str] = []
    if complete:
        raw = b"".join(m.get("body", b"") for m in bodies)
        page = _decoded(raw, headers)
        hashes = inline_script_hashes(page)
        if page and (kept := self_contained_page(page)) != page:
            body = _encoded(kept, headers)
            headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            bodies = [{"type": "http.response.body", "body": body}]
    await send({**start, "headers": _with_security(headers, policy.header(hashes))})
    for message in bodies:
        await send(message)


def _with_security(headers: list[tuple[bytes, bytes]], policy: str) -> list[tuple[bytes, bytes]]:
    present = {name.lower() for name, _ in headers}
    headers.extend(h for h in SECURITY_HEADERS if h[0] not in present)
    if b"content-security-policy" not in present:
        headers.append((b"content-security-policy", policy.encode()))
    return headers


def _single(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    seen: set[bytes] = set()
    kept = []
    for name, value in headers:
        lowered = name.lower()
        if lowered in _SINGLE_HEADERS:
            if lowered in seen:
                continue
            seen.add(lowered)
        kept.append((name, value))
    return kept


def _has(headers: list[tuple[bytes, bytes]], name: bytes) -> bool:
    return any(key.lower() == name for key, _ in headers)


def _is_html(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(
        key.lower() == b"content-type" and value.lower().startswith(b"text/html")
        for key, value in headers
    )


def _encoded(page: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """`page` encoded back the way the response says its body is (see `_decoded`)."""
    encoding = next((v.lower() for k, v in headers if k.lower() == b"content-encoding"), b"")
    if encoding == b"gzip":
        return gzip.compress(page)
    if encoding == b"deflate":
        return zlib.compress(page)
    return page


def _decoded(body: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    encoding = next((v.lower() for k, v in headers if k.lower() == b"content-encoding"), b"")
    try:
        if encoding == b"gzip":
            return gzip.decompress(body)
        if encoding == b"deflate":
            return zlib.decompress(body)
    except (OSError, zlib.error, EOFError):
        return b""
    return body
