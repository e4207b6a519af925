"""Errors raised by streamchat.

The tree, with what the user is told for each::

    StreamChatError                 base of everything we raise on purpose
    ├── ConfigError                 a setting has a value we cannot use
    └── ProviderError               the model provider failed us; carries `user_message`
        ├── AuthenticationFailed    401/403: the key is missing, wrong or not allowed
        ├── ModelNotFound           404: the model name is unknown to the provider
        ├── BadRequest              400/422: the provider refused the request as sent
        ├── RateLimited             429: too many requests; `retry_after` when the provider said
        ├── ProviderUnavailable     5xx: the provider failed on its side
        ├── ProviderUnreachable     no connection, DNS failure, timeout before any answer
        ├── StreamBroken            the stream broke after it started (drop, stall, bad chunk)
        └── InputRejected           we did not send the request at all (the message too long)

Front ends (UI, SSE, CLI) show `user_message`; details go to the log. No message ever contains
an API key: `redact_secrets` is applied to anything that came from outside.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

# Anything that looks like a bearer credential. Provider error bodies sometimes echo the key
# ("Incorrect API key provided: sk-abc...xyz"), so we scrub before logging or showing.
_SECRET_PATTERN = re.compile(
    r"(sk-[A-Za-z0-9_\-*.]{3,}|Bearer\s+[A-Za-z0-9_\-.=*]+|[A-Za-z0-9_\-]{32,})"
)


def redact_secrets(text: str) -> str:
    """Replace anything that looks like a key or token with a fixed placeholder."""
    return _SECRET_PATTERN.sub("[redacted]", text)


class StreamChatError(Exception):
    """Base class for errors streamchat raises on purpose."""


class ConfigError(StreamChatError):
    """A setting has a value we cannot use. The message names the variable and the fix."""


class ProviderError(StreamChatError):
    """The model provider failed. `user_message` is short, actionable and free of secrets."""

    kind = "provider_error"
    retryable = False

    def __init__(self, user_message: str, *, status: int | None = None, detail: str = "") -> None:
        super().__init__(user_message)
        self.user_message = user_message
        self.status = status
        self.detail = redact_secrets(detail)


class AuthenticationFailed(ProviderError):
    kind = "auth"


class ModelNotFound(ProviderError):
    kind = "model_not_found"


class BadRequest(ProviderError):
    kind = "bad_request"


class RateLimited(ProviderError):
    kind = "rate_limited"
    retryable = True

    def __init__(
        self,
        user_message: str,
        *,
        status: int | None = 429,
        detail: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(user_message, status=status, detail=detail)
        self.retry_after = retry_after


class ProviderUnavailable(ProviderError):
    kind = "server_error"
    retryable = True


class ProviderUnreachable(ProviderError):
    kind = "unreachable"
    retryable = True


class StreamBroken(ProviderError):
    """The stream broke. `cause` is one of: dropped, stalled, malformed, error_event, ended_early.
    Before the first token it is retried like a connection error; after it, the answer is resumed.
    """

    kind = "stream_broken"
    retryable = True

    def __init__(
        self,
        user_message: str,
        *,
        cause: str = "dropped",
        status: int | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(user_message, status=status, detail=detail)
        self.cause = cause

    @property
    def short_cause(self) -> str:
        """For markers such as "Interrupted: connection lost after 212 tokens"."""
        return {
            "stalled": "the stream stalled",
            "malformed": "an unreadable chunk",
            "error_event": "a provider error",
        }.get(self.cause, "connection lost")


class InputRejected(ProviderError):
    """The request was not sent: the user's message breaks a limit we enforce ourselves."""

    kind = "input_rejected"


def public_url(url: str) -> str:
    """A URL safe to show or log: user info, query and fragment removed."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
