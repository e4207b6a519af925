"""Who may talk to the app from another web origin, and the security headers on every response.

`ALLOW_ORIGINS` lists the origins (scheme://host[:port]) of other sites whose pages may call the
app: its HTTP API (CORS) and its Socket.IO endpoint (the Origin header of the websocket
handshake, which browsers do not police themselves). The app's own origin is always allowed.
Unset, it is `*` for local use and nothing but the app itself once login is on, so a hosted
app is never open to scripts on other sites by accident.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamchat.core.errors import ConfigError
from streamchat.settings import ConfigReader

# Sent with every HTTP response. No Content-Security-Policy: Chainlit's UI sets up its own
# scripts and styles, and a wrong policy would break it silently; output is kept inert by
# rendering markdown without HTML instead (see docs/deployment.md).
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"strict-origin-when-cross-origin"),
    (b"x-frame-options", b"SAMEORIGIN"),
)


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
    """Adds SECURITY_HEADERS to every HTTP response that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in SECURITY_HEADERS if h[0] not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
