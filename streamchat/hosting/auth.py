"""Login for hosted deployments: on when CHAINLIT_AUTH_SECRET is set.

Password login checks the users file (streamchat-users manages it); header login trusts a
header set by an identity-aware proxy (AUTH_HEADER). The SSE endpoint accepts the same session:
Chainlit's cookie, or its token as `Authorization: Bearer <token>`. Password attempts are
throttled per user name and per client address in front of the login route (login_throttle.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from streamchat.hosting.users import UsersFile
from streamchat.settings import ConfigReader


@dataclass(frozen=True, slots=True)
class AuthConfig:
    enabled: bool
    users_file: Path
    header: str | None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> AuthConfig:
        read = ConfigReader(environ)
        header = read.text("AUTH_HEADER")
        return cls(
            enabled=read.text("CHAINLIT_AUTH_SECRET") is not None,
            users_file=Path(read.text("AUTH_USERS_FILE") or "users.txt"),
            header=header.lower() if header else None,
        )

    def check_password(self, username: str, password: str) -> bool:
        return UsersFile(self.users_file).check(username, password)

    def header_identity(self, headers: Mapping[str, str]) -> str | None:
        if self.header is None:
            return None
        value = (headers.get(self.header) or "").strip()
        return value[:200] or None


def request_identity(authorization: str | None, cookies: Mapping[str, str]) -> str | None:
    """The user a request was made by (a valid Chainlit session token), or None."""
    from chainlit.auth import decode_jwt
    from chainlit.auth.cookie import get_token_from_cookies

    token = None
    if authorization and authorization.lower().startswith("bearer "):
        token = authorization[7:].strip()
    token = token or get_token_from_cookies(dict(cookies))
    if not token:
        return None
    try:
        return decode_jwt(token).identifier
    except Exception:  # expired, forged or malformed: not a user
        return None
