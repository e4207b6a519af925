"""Settings: one frozen object built from the environment (and `.env`), read in one place.

Every default works offline: with neither `OPENAI_API_KEY` nor `OPENAI_BASE_URL` set, the app
talks to the built-in offline demo model. Tests hand in their own `environ`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from dotenv import dotenv_values

from streamchat.core.errors import ConfigError
from streamchat.core.relay import Resilience
from streamchat.guardrails import GuardrailConfig
from streamchat.hosting.limits import RateLimits
from streamchat.languages import DEFAULT_LANGUAGE, parse_language

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant. Answer clearly and concisely, and say so when you are not sure."
)
# The model used against api.openai.com when OPENAI_MODEL is not set. For any other base URL we
# ask the server's /v1/models instead, because local servers name their models freely.
DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
CHAINLIT_CI_PLACEHOLDER_KEY = "sk-FAKE-OPENAI-API-KEY"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def load_env_file(path: str | os.PathLike[str] = ".env") -> dict[str, str]:
    """Return the process environment with `.env` values filled in beneath it.

    Real environment variables win over the file, as python-dotenv does by default, so a
    deployment can override what a developer left in `.env`.
    """
    file_values = {k: v for k, v in dotenv_values(path).items() if v is not None}
    return {**file_values, **os.environ}


def public_url(url: str) -> str:
    """A URL safe to show or log: user info, query and fragment removed."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything configurable, validated. Build it with `Settings.from_env`."""

    api_key: str | None = field(default=None, repr=False)
    base_url: str | None = None
    model: str | None = None
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    temperature: float = 0.7
    max_tokens: int | None = None
    request_timeout_s: float = 60.0
    connect_timeout_s: float = 5.0
    retries: int = 2
    stream_flush_ms: float = 40.0
    read_pacing: bool = True  # leave chunks in the kernel until the next UI update (pacing.py)
    stream_resumes: int = 1
    stream_stall_s: float = 30.0
    first_token_timeout_s: float = 60.0
    offline_tps: float = 30.0
    offline_ttft_ms: float = 300.0
    offline_fault: str | None = None
    log_level: str = "INFO"
    metrics_token: str | None = field(default=None, repr=False)
    show_metrics: bool = True
    max_input_chars: int = 32_000
    max_history_tokens: int | None = 8_000  # None: the whole history is always sent
    language: str = DEFAULT_LANGUAGE  # the answers' language; each chat can change it
    http_client: str = "aiohttp"  # the HTTP stack under the openai SDK: aiohttp or httpx
    rate_limits: RateLimits = field(default_factory=RateLimits)
    sse_grace_s: float = 30.0
    sse_keepalive_s: float = 15.0
    sse_ttl_s: float = 300.0
    guardrails: GuardrailConfig = field(default_factory=GuardrailConfig)

    @property
    def offline(self) -> bool:
        """True when the built-in demo model is used: no key and no base URL configured."""
        return not self.api_key and not self.base_url

    @property
    def resilience(self) -> Resilience:
        return Resilience(
            retries=self.retries,
            resumes=self.stream_resumes,
            stall_s=self.stream_stall_s,
            first_token_timeout_s=self.first_token_timeout_s,
        )

    @property
    def provider_label(self) -> str:
        """A short, secret-free name of where answers come from, for the UI and logs."""
        if self.offline:
            return "offline demo model"
        return public_url(self.base_url or OPENAI_DEFAULT_BASE_URL)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate settings. Raises ConfigError naming the variable and the fix."""
        env = load_env_file() if environ is None else environ
        reader = _Reader(env)
        base_url = reader.text("OPENAI_BASE_URL")
        if base_url is not None:
            parts = urlsplit(base_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(
                    "OPENAI_BASE_URL must be an http(s) URL such as "
                    "http://localhost:11434/v1 (got a value that is not)."
                )
        raw_level = reader.text("LOG_LEVEL") or "INFO"
        level = raw_level.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(
                "LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL "
                f"(got {raw_level!r})."
            )
        api_key = reader.text("OPENAI_API_KEY")
        if api_key == CHAINLIT_CI_PLACEHOLDER_KEY:
            # `chainlit run --ci` (also switched on by CI=true) puts this fake key in the
            # environment; it can never work, so it counts as no key at all.
            api_key = None
        return cls(
            api_key=api_key,
            base_url=base_url.rstrip("/") if base_url else None,
            model=reader.text("OPENAI_MODEL"),
            system_prompt=reader.text("SYSTEM_PROMPT", keep_empty=True) or DEFAULT_SYSTEM_PROMPT,
            temperature=reader.number("TEMPERATURE", 0.7, low=0.0, high=2.0),
            max_tokens=reader.optional_int("MAX_TOKENS", low=1),
            request_timeout_s=reader.number("OPENAI_TIMEOUT_S", 60.0, low=1.0, high=3600.0),
            connect_timeout_s=reader.number("OPENAI_CONNECT_TIMEOUT_S", 5.0, low=0.1, high=600.0),
            retries=int(reader.number("STREAM_RETRIES", 2, low=0, high=10, integer=True)),
            stream_flush_ms=reader.number("STREAM_FLUSH_MS", 40.0, low=0.0, high=5000.0),
            read_pacing=reader.flag("STREAM_READ_PACING", True),
            stream_resumes=int(reader.number("STREAM_RESUMES", 1, low=0, high=10, integer=True)),
            stream_stall_s=reader.number("STREAM_STALL_S", 30.0, low=0.05, high=3600.0),
            first_token_timeout_s=reader.number(
                "STREAM_FIRST_TOKEN_TIMEOUT_S", 60.0, low=0.05, high=3600.0
            ),
            offline_tps=reader.number("OFFLINE_TPS", 30.0, low=0.1, high=100_000.0),
            offline_ttft_ms=reader.number("OFFLINE_TTFT_MS", 300.0, low=0.0, high=60_000.0),
            offline_fault=reader.text("OFFLINE_FAULT"),
            log_level=level,
            metrics_token=reader.text("METRICS_TOKEN"),
            show_metrics=reader.flag("SHOW_METRICS", True),
            max_input_chars=int(
                reader.number("MAX_INPUT_CHARS", 32_000, low=1, high=10_000_000, integer=True)
            ),
            language=_language(reader.text("ANSWER_LANGUAGE")),
            rate_limits=RateLimits(
                requests_per_minute=reader.limit("RATE_LIMIT_RPM"),
                concurrent_streams=reader.limit("RATE_LIMIT_CONCURRENT"),
                tokens_per_day=reader.limit("RATE_LIMIT_TOKENS_PER_DAY"),
                redis_url=_redis_url(reader.text("REDIS_URL")),
            ),
            http_client=reader.choice("OPENAI_HTTP_CLIENT", ("aiohttp", "httpx"), "aiohttp"),
            max_history_tokens=int(
                reader.number("MAX_HISTORY_TOKENS", 8_000, low=0, high=10_000_000, integer=True)
            )
            or None,
            sse_grace_s=reader.number("SSE_GRACE_S", 30.0, low=0.0, high=3600.0),
            sse_keepalive_s=reader.number("SSE_KEEPALIVE_S", 15.0, low=0.05, high=3600.0),
            sse_ttl_s=reader.number("SSE_TTL_S", 300.0, low=1.0, high=86_400.0),
            guardrails=GuardrailConfig.from_env(
                env, provider_key=api_key or "", provider_base_url=base_url or ""
            ),
        )


def _redis_url(value: str | None) -> str | None:
    if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("REDIS_URL must look like redis://host:6379/0 (or rediss:// for TLS).")
    return value


def _language(value: str | None) -> str:
    if value is None:
        return DEFAULT_LANGUAGE
    try:
        return parse_language(value)
    except ValueError as exc:
        raise ConfigError(f"ANSWER_LANGUAGE: {exc}") from None


class _Reader:
    """Typed access to an environment mapping with messages a person can act on."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def text(self, name: str, *, keep_empty: bool = False) -> str | None:
        value = self._env.get(name)
        if value is None:
            return None
        value = value.strip()
        if not value and not keep_empty:
            return None
        return value

    def number(
        self,
        name: str,
        default: float,
        *,
        low: float,
        high: float,
        integer: bool = False,
    ) -> float:
        raw = self.text(name)
        if raw is None:
            return default
        kind = "a whole number" if integer else "a number"
        try:
            value = float(int(raw)) if integer else float(raw)
        except ValueError:
            raise ConfigError(
                f"{name} must be {kind} between {low:g} and {high:g} (got {raw!r})."
            ) from None
        if not math.isfinite(value) or not low <= value <= high:
            raise ConfigError(f"{name} must be {kind} between {low:g} and {high:g} (got {raw!r}).")
        return value

    def optional_int(self, name: str, *, low: int, meaning: str = "") -> int | None:
        raw = self.text(name)
        if raw is None:
            return None
        problem = f"{name} must be a whole number of at least {low}{meaning} (got {raw!r})."
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(problem) from None
        if value < low:
            raise ConfigError(problem)
        return value

    def limit(self, name: str) -> int | None:
        """A limit where 0 (or nothing) means none."""
        return self.optional_int(name, low=0, meaning="; 0 means no limit") or None

    def choice(self, name: str, allowed: tuple[str, ...], default: str) -> str:
        raw = self.text(name)
        if raw is None:
            return default
        if raw.lower() not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)} (got {raw!r}).")
        return raw.lower()

    def flag(self, name: str, default: bool) -> bool:
        raw = self.text(name, keep_empty=True)
        if raw is None:
            return default
        lowered = raw.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f"{name} must be true or false (got {raw!r}).")


def env_flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    """A true-or-false variable read as Settings reads its own; ConfigError for anything else."""
    return _Reader(environ).flag(name, default)


def project_root() -> Path:
    """The folder holding app.py: where `.env`, `public/` and `.chainlit/` live."""
    return Path(__file__).resolve().parent.parent
