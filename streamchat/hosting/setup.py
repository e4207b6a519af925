"""What hosted use puts in front of Chainlit's server while the app loads: the login throttle,
cross-site access (ALLOW_ORIGINS), security headers with the Content-Security-Policy, and the
chat history's database. A setting that cannot be followed keeps the strictest choice and is
reported, never a crash."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from streamchat.core.errors import ConfigError
from streamchat.hosting.auth import AuthConfig
from streamchat.hosting.login_throttle import LoginLimits, LoginThrottle, LoginThrottleMiddleware
from streamchat.hosting.persistence import Database
from streamchat.hosting.security import (
    ContentSecurityPolicy,
    OriginPolicy,
    SecurityHeadersMiddleware,
    apply_origin_policy,
)


@dataclass
class Hosting:
    """What was installed, and what could not be followed (shown in each chat)."""

    auth: AuthConfig
    database: Database | None = None  # with login on: where history is kept
    database_error: str | None = None
    origin_error: str | None = None  # a bad ALLOW_ORIGINS: only the app's own pages may connect
    problems: list[str] = field(default_factory=list)


def install_hosting(
    environ: Mapping[str, str], *, app: Any, sio: Any, cors_origins: list[str]
) -> Hosting:
    """Add the middleware to `app` (Chainlit's server) and the origin check to `sio` (its
    Socket.IO server), before Chainlit serves a request."""
    hosting = Hosting(auth=AuthConfig.from_env(environ))
    if hosting.auth.enabled:
        try:
            limits = LoginLimits.from_env(environ)
        except ConfigError as exc:
            limits = LoginLimits()
            hosting.problems.append(f"{exc} The default login throttle applies.")
        # Too many wrong passwords for a name or from an address: 429 before any is checked.
        app.add_middleware(LoginThrottleMiddleware, throttle=LoginThrottle(limits))
    try:
        origins = OriginPolicy.from_env(environ, login=hosting.auth.enabled)
    except ConfigError as exc:
        origins, hosting.origin_error = OriginPolicy(), str(exc)  # this app's pages only
    apply_origin_policy(origins, cors_origins=cors_origins, sio=sio)
    try:
        content_policy = ContentSecurityPolicy.from_env(environ)
    except ConfigError as exc:
        content_policy = ContentSecurityPolicy()  # the strictest: images from this app only
        hosting.problems.append(f"{exc} Answers show images from this app only.")
    app.add_middleware(SecurityHeadersMiddleware, policy=content_policy)
    # Chat history needs login: with it, a database (a SQLite file unless DATABASE_URL says).
    if hosting.auth.enabled:
        try:
            hosting.database = Database.from_env(environ)
        except ConfigError as exc:
            hosting.database_error = str(exc)
    return hosting
