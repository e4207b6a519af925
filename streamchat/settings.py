"""Settings: every variable declared once (`VARIABLES`), read by one reader, from one place.

The environment is read here and nowhere else: the process environment over `.env`, parsed by
`ConfigReader` as `VARIABLES` declares it, so a boolean, a number or a list means the same in
every variable and a bad value is explained the same way. `Settings` is the frozen whole the app
runs on; the hosting modules read what they need at import through the same reader. Every
default works offline: with neither `OPENAI_API_KEY` nor `OPENAI_BASE_URL` set, the app talks to
the built-in offline demo model. Tests hand in their own `environ`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from dotenv import dotenv_values

from streamchat.core.errors import ConfigError, public_url
from streamchat.guardrails import GuardrailConfig
from streamchat.guardrails.config import (
    DEFAULT_MODERATION_MODEL,
    DEFAULT_POLICIES,
    POLICY_NAMES,
    moderation_endpoint,
)
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

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
# For the variables declared with `off=True`: these words mean "none at all".
OFF_WORDS = ("off", "none", "false", "0")

Kind = Literal["text", "url", "flag", "number", "whole", "choice", "list"]


@dataclass(frozen=True, slots=True)
class Variable:
    """One configuration variable: how it is parsed, its default and what it means.

    `default` is written as in `.env.example` ("" for none). Numbers are checked against `low`
    and `high` (no `high`: no upper bound). `choices` are the words a choice or a list accepts
    (case-insensitive), or a URL's schemes. `hint` ends the sentence saying what is accepted.
    """

    name: str
    kind: Kind
    default: str
    meaning: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    off: bool = False
    hint: str = ""

    @property
    def accepts(self) -> str:
        """What the variable accepts, as the end of "NAME must be ..."."""
        if self.kind == "flag":
            accepts = "true or false, or yes/no, on/off, 1/0"
        elif self.kind in ("number", "whole"):
            what = "a whole number" if self.kind == "whole" else "a number"
            if self.high is None:
                accepts = f"{what} of at least {_figure(self.low)}"
            else:
                accepts = f"{what} between {_figure(self.low)} and {_figure(self.high)}"
        elif self.kind == "choice":
            accepts = f"one of {', '.join(self.choices)}"
        elif self.kind == "list":
            accepts = "a comma-separated list"
            if self.choices:
                accepts += f" of {', '.join(self.choices)}"
        elif self.kind == "url":
            schemes = " or ".join(f"{scheme}://" for scheme in self.choices)
            article = "an" if self.choices[0][0] in "aeiouh" else "a"
            return f"{article} {schemes} URL such as {self.hint}"
        else:
            return self.hint or "text"
        if self.off:
            accepts += ", or off"
        return f"{accepts}; {self.hint}" if self.hint else accepts

    def problem(self, raw: str) -> ConfigError:
        """The error for a value this variable does not accept. A URL is never echoed: it may
        carry a password."""
        got = "a value that is not" if self.kind == "url" else repr(raw)
        return ConfigError(f"{self.name} must be {self.accepts} (got {got}).")


def _figure(value: float | None) -> str:
    """A bound as a person writes it: 10000000, 0.05."""
    value = 0.0 if value is None else float(value)
    return str(int(value)) if value.is_integer() else f"{value:g}"


_HTTP = ("http", "https")
_LIMIT = "0 means no limit"

VARIABLES: dict[str, Variable] = {
    v.name: v
    for v in (
        # Provider
        Variable("OPENAI_API_KEY", "text", "", "Key for OpenAI or your provider."),
        Variable(
            "OPENAI_BASE_URL",
            "url",
            "",
            "Base URL of an OpenAI-compatible server; works without a key.",
            choices=_HTTP,
            hint="http://localhost:11434/v1",
        ),
        Variable("OPENAI_MODEL", "text", "", "Model name; changeable per chat."),
        Variable("OPENAI_TIMEOUT_S", "number", "60", "Seconds to wait for data.", 1, 3600),
        Variable("OPENAI_CONNECT_TIMEOUT_S", "number", "5", "Seconds to connect.", 0.1, 600),
        Variable(
            "OPENAI_HTTP_CLIENT",
            "choice",
            "aiohttp",
            "The HTTP stack under the openai SDK.",
            choices=("aiohttp", "httpx"),
        ),
        Variable("STREAM_RETRIES", "whole", "2", "Retries before the first token.", 0, 10),
        Variable("STREAM_RESUMES", "whole", "1", "Resumes of a broken stream.", 0, 10),
        Variable(
            "STREAM_STALL_S", "number", "30", "Seconds of silence that break a stream.", 0.05, 3600
        ),
        Variable(
            "STREAM_FIRST_TOKEN_TIMEOUT_S",
            "number",
            "60",
            "Seconds to wait for the first token.",
            0.05,
            3600,
        ),
        # Answers
        Variable("SYSTEM_PROMPT", "text", DEFAULT_SYSTEM_PROMPT, "System message sent first."),
        Variable("TEMPERATURE", "number", "0.7", "Sampling temperature.", 0, 2),
        Variable("MAX_TOKENS", "whole", "", "Upper bound of tokens per answer.", low=1),
        Variable("STREAM_FLUSH_MS", "number", "40", "Least ms between UI updates.", 0, 5000),
        Variable(
            "STREAM_PAINT_HOLD_MS",
            "number",
            "2000",
            "Longest ms a UI update waits for the browser to paint the last one.",
            0,
            60000,
        ),
        Variable(
            "STREAM_PART_CHARS",
            "whole",
            "8000",
            "Characters after which a long answer goes on in a new message (0: never).",
            0,
            10_000_000,
        ),
        Variable("STREAM_READ_PACING", "flag", "true", "Read chunks once per UI update."),
        Variable(
            "EVENT_LOOP",
            "choice",
            "auto",
            "The app's event loop.",
            choices=("auto", "uvloop", "asyncio"),
        ),
        Variable("UVICORN_WS_PER_MESSAGE_DEFLATE", "flag", "false", "Websocket compression."),
        Variable("STREAM_SPEEDUPS", "flag", "true", "Speed-ups on other libraries' internals."),
        # Guardrails
        Variable(
            "GUARDRAILS",
            "list",
            ",".join(DEFAULT_POLICIES),
            "Active guardrail policies.",
            choices=POLICY_NAMES,
            off=True,
        ),
        Variable(
            "GUARDRAIL_MODE", "choice", "hold", "Hold or buffered.", choices=("hold", "buffered")
        ),
        Variable(
            "GUARDRAIL_ACTION", "choice", "stop", "Stop or redact.", choices=("stop", "redact")
        ),
        Variable(
            "GUARDRAIL_BUFFER_CHARS", "whole", "200", "Buffered mode check interval.", 1, 100_000
        ),
        Variable("GUARDRAIL_BLOCKLIST_FILE", "text", "", "More blocked words, one per line."),
        Variable("GUARDRAIL_REGEX_FILE", "text", "", "Your own patterns (turns on regex)."),
        Variable("GUARDRAIL_PHONE_REGIONS", "list", "US,IN,PK", "Phone number regions."),
        Variable("GUARDRAILS_LOCKED", "flag", "false", "Users cannot change guardrails."),
        Variable(
            "GUARDRAIL_ON_ERROR",
            "choice",
            "block",
            "What a failed moderation check means.",
            choices=("block", "allow"),
        ),
        Variable(
            "GUARDRAIL_MODERATION_MODEL", "text", DEFAULT_MODERATION_MODEL, "Moderation model."
        ),
        Variable(
            "GUARDRAIL_MODERATION_BASE_URL",
            "url",
            "",
            "Where moderation checks go.",
            choices=_HTTP,
            hint="https://api.openai.com/v1",
        ),
        Variable("GUARDRAIL_MODERATION_API_KEY", "text", "", "Key of the moderation endpoint."),
        Variable(
            "GUARDRAIL_MODERATION_TIMEOUT_S",
            "number",
            "10",
            "Seconds before a moderation check fails.",
            0.1,
            120,
        ),
        # Offline demo model
        Variable("OFFLINE_TPS", "number", "30", "Offline model: tokens per second.", 0.1, 100_000),
        Variable(
            "OFFLINE_TTFT_MS", "number", "300", "Offline model: first-token delay.", 0, 60_000
        ),
        Variable("OFFLINE_FAULT", "text", "", "Offline model: a fault in every answer."),
        # Agent profile
        Variable("AGENT_MAX_TURNS", "whole", "6", "Agent: model calls per answer.", 1, 100),
        Variable("AGENT_MCP_SERVERS", "list", "", "Agent: MCP servers (URLs or commands)."),
        # Hosting
        Variable("CHAINLIT_AUTH_SECRET", "text", "", "Set: login required."),
        Variable("AUTH_USERS_FILE", "text", "users.txt", "Password users file."),
        Variable("AUTH_HEADER", "text", "", "User name header set by a trusted proxy."),
        Variable(
            "DATABASE_URL", "text", "sqlite:///streamchat.db", "Chat history database.", off=True
        ),
        Variable(
            "PARTIAL_SAVE_S",
            "number",
            "1",
            "Seconds between saves of an answer being written.",
            0.2,
            60,
        ),
        Variable(
            "DRAIN_TIMEOUT_S", "number", "5", "On SIGTERM: seconds answers get to end.", 0, 600
        ),
        Variable("RATE_LIMIT_RPM", "whole", "", "Messages per minute per user.", 0, hint=_LIMIT),
        Variable("RATE_LIMIT_CONCURRENT", "whole", "", "Answers at once per user.", 0, hint=_LIMIT),
        Variable(
            "RATE_LIMIT_TOKENS_PER_DAY", "whole", "", "Tokens per user per day.", 0, hint=_LIMIT
        ),
        Variable(
            "REDIS_URL",
            "url",
            "",
            "State shared by replicas.",
            choices=("redis", "rediss", "unix"),
            hint="redis://localhost:6379/0",
        ),
        Variable(
            "SHARED_ANSWERS",
            "choice",
            "off",
            "Identical questions share one upstream answer.",
            choices=("off", "on", "all"),
        ),
        Variable(
            "ANSWER_CACHE_TTL_S",
            "number",
            "0",
            "Seconds a complete answer is replayed from cache.",
            0,
            604800,
            hint="0 means no cache",
        ),
        Variable("ANSWER_CACHE_MAX_MB", "number", "64", "Memory for cached answers.", 0.1, 65536),
        Variable(
            "FORWARDED_ALLOW_IPS",
            "list",
            "",
            "Proxies whose X-Forwarded-For names the client.",
        ),
        Variable("ALLOW_ORIGINS", "list", "", "Other sites whose pages may call the app."),
        Variable("IMAGE_SOURCES", "list", "", "Other sites answers may show images from."),
        Variable(
            "LOGIN_MAX_FAILURES",
            "whole",
            "10",
            "Wrong passwords per user name, and per address, in a window.",
            0,
            hint="0 means no throttle",
        ),
        Variable("LOGIN_WINDOW_S", "number", "300", "Login throttle window (seconds).", 1, 86_400),
        # Operations
        Variable("SHOW_METRICS", "flag", "true", "Stats line under each answer."),
        Variable("SHOW_REASONING", "flag", "true", "A reasoning model's thinking shown apart."),
        Variable("MAX_INPUT_CHARS", "whole", "32000", "Longest question accepted.", 1, 10_000_000),
        Variable(
            "ANSWER_LANGUAGE",
            "text",
            DEFAULT_LANGUAGE,
            "The answers' language.",
            hint="en (or english) or hinglish (or roman-urdu, urdu, hi-latn)",
        ),
        Variable(
            "MAX_HISTORY_TOKENS",
            "whole",
            "8000",
            "History sent upstream, in estimated tokens.",
            0,
            10_000_000,
            hint="0 sends all",
        ),
        Variable("SSE_GRACE_S", "number", "30", "SSE: reconnect grace period.", 0, 3600),
        Variable("SSE_KEEPALIVE_S", "number", "15", "SSE: keep-alive interval.", 0.05, 3600),
        Variable("SSE_TTL_S", "number", "300", "SSE: finished streams kept.", 1, 86_400),
        Variable("METRICS_TOKEN", "text", "", "Bearer token for /metrics."),
        Variable(
            "LOG_LEVEL",
            "choice",
            "INFO",
            "Log level.",
            choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
        ),
    )
}


def load_env_file(path: str | os.PathLike[str] = ".env") -> dict[str, str]:
    """Return the process environment with `.env` values filled in beneath it.

    Real environment variables win over the file, as python-dotenv does by default, so a
    deployment can override what a developer left in `.env`.
    """
    file_values = {k: v for k, v in dotenv_values(path).items() if v is not None}
    return {**file_values, **os.environ}


def install_forwarded_allow_ips(environ: Mapping[str, str]) -> tuple[str, ...]:
    """Have uvicorn (which `chainlit run` starts after loading the app) take a client's address
    from X-Forwarded-For only when the connection comes from a proxy in FORWARDED_ALLOW_IPS.
    uvicorn reads that variable from the process environment and trusts loopback when it is
    unset, so any local process could claim any address; here unset means no proxy at all."""
    proxies = ConfigReader(environ).items("FORWARDED_ALLOW_IPS")
    os.environ["FORWARDED_ALLOW_IPS"] = ",".join(proxies)
    return proxies


class ConfigReader:
    """Typed access to an environment mapping, as `VARIABLES` declares each variable.

    A blank value counts as unset (the declared default). Every accessor checks that it is
    asked for a declared variable of its kind, so a variable cannot be read two ways.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._env = load_env_file() if environ is None else environ

    def _raw(self, name: str, kind: Kind) -> tuple[Variable, str]:
        variable = VARIABLES[name]
        if variable.kind != kind:
            raise TypeError(f"{name} is declared as {variable.kind}, not {kind}")
        value = (self._env.get(name) or "").strip()
        return variable, value or variable.default

    def text(self, name: str) -> str | None:
        """The value, stripped; None when unset (and no default), or off where that is allowed."""
        variable, raw = self._raw(name, "text")
        if not raw or (variable.off and raw.lower() in OFF_WORDS):
            return None
        return raw

    def url(self, name: str) -> str | None:
        """A URL with one of the declared schemes and a host, without a trailing slash."""
        variable, raw = self._raw(name, "url")
        if not raw:
            return None
        parts = urlsplit(raw)
        if parts.scheme not in variable.choices or not (parts.hostname or parts.scheme == "unix"):
            raise variable.problem(raw)
        return raw.rstrip("/")

    def flag(self, name: str) -> bool:
        variable, raw = self._raw(name, "flag")
        lowered = raw.lower()
        if lowered in TRUE_WORDS:
            return True
        if lowered in FALSE_WORDS:
            return False
        raise variable.problem(raw)

    def number(self, name: str) -> float:
        variable, raw = self._raw(name, "number")
        try:
            value = float(raw)
        except ValueError:
            raise variable.problem(raw) from None
        self._check_range(variable, raw, value)
        return value

    def whole(self, name: str) -> int | None:
        """A whole number; None when unset and declared without a default."""
        variable, raw = self._raw(name, "whole")
        if not raw:
            return None
        try:
            value = int(raw)
        except ValueError:
            raise variable.problem(raw) from None
        self._check_range(variable, raw, value)
        return value

    def choice(self, name: str) -> str:
        """One of the declared choices, in their declared spelling, matched case-insensitively."""
        variable, raw = self._raw(name, "choice")
        for choice in variable.choices:
            if raw.lower() == choice.lower():
                return choice
        raise variable.problem(raw)

    def items(self, name: str) -> tuple[str, ...]:
        """Comma-separated items, stripped, blanks and repeats dropped; () when unset or off.
        With declared choices, each item is one of them (lower-cased)."""
        variable, raw = self._raw(name, "list")
        if variable.off and raw.lower() in OFF_WORDS:
            return ()
        items = [item.strip() for item in raw.split(",") if item.strip()]
        if variable.choices:
            items = [item.lower() for item in items]
            if any(item not in variable.choices for item in items):
                raise variable.problem(raw)
        return tuple(dict.fromkeys(items))

    @staticmethod
    def _check_range(variable: Variable, raw: str, value: float) -> None:
        low = -math.inf if variable.low is None else variable.low
        high = math.inf if variable.high is None else variable.high
        if not math.isfinite(value) or not low <= value <= high:
            raise variable.problem(raw)


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
    stream_paint_hold_ms: float = 2000.0  # an update waits this long at most for a paint (paint.py)
    stream_part_chars: int = 8000  # a long answer goes on in a new message (segments.py); 0: never
    read_pacing: bool = True  # leave chunks in the kernel until the next UI update (pacing.py)
    speedups: bool = True  # STREAM_SPEEDUPS: off, only public APIs (streamchat/speedups)
    stream_resumes: int = 1
    stream_stall_s: float = 30.0
    first_token_timeout_s: float = 60.0
    offline_tps: float = 30.0
    offline_ttft_ms: float = 300.0
    offline_fault: str | None = None
    agent_max_turns: int = 6  # the Agent profile's model calls per answer
    agent_mcp_servers: tuple[str, ...] = ()  # MCP servers' URLs or stdio command lines
    log_level: str = "INFO"
    metrics_token: str | None = field(default=None, repr=False)
    show_metrics: bool = True
    show_reasoning: bool = True
    max_input_chars: int = 32_000
    max_history_tokens: int | None = 8_000  # None: the whole history is always sent
    language: str = DEFAULT_LANGUAGE  # the answers' language; each chat can change it
    http_client: str = "aiohttp"  # the HTTP stack under the openai SDK: aiohttp or httpx
    rate_limits: RateLimits = field(default_factory=RateLimits)
    sse_grace_s: float = 30.0
    sse_keepalive_s: float = 15.0
    sse_ttl_s: float = 300.0
    guardrails: GuardrailConfig = field(default_factory=GuardrailConfig)
    shared_answers: str = "off"  # off | on | all (sharing.py)
    answer_cache_ttl_s: float = 0.0  # 0: no answer cache
    answer_cache_max_mb: float = 64.0
    login: bool = False  # CHAINLIT_AUTH_SECRET set: answers are per user

    @property
    def offline(self) -> bool:
        """True when the built-in demo model is used: no key and no base URL configured."""
        return not self.api_key and not self.base_url

    @property
    def provider_label(self) -> str:
        """A short, secret-free name of where answers come from, for the UI and logs."""
        if self.offline:
            return "offline demo model"
        return public_url(self.base_url or OPENAI_DEFAULT_BASE_URL)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate settings. Raises ConfigError naming the variable and the fix."""
        read = ConfigReader(environ)
        api_key, base_url = _provider(read)
        return cls(
            api_key=api_key,
            base_url=base_url,
            model=read.text("OPENAI_MODEL"),
            system_prompt=read.text("SYSTEM_PROMPT") or DEFAULT_SYSTEM_PROMPT,
            temperature=read.number("TEMPERATURE"),
            max_tokens=read.whole("MAX_TOKENS"),
            request_timeout_s=read.number("OPENAI_TIMEOUT_S"),
            connect_timeout_s=read.number("OPENAI_CONNECT_TIMEOUT_S"),
            retries=read.whole("STREAM_RETRIES") or 0,
            stream_flush_ms=read.number("STREAM_FLUSH_MS"),
            stream_paint_hold_ms=read.number("STREAM_PAINT_HOLD_MS"),
            stream_part_chars=read.whole("STREAM_PART_CHARS") or 0,
            read_pacing=read.flag("STREAM_READ_PACING"),
            speedups=read.flag("STREAM_SPEEDUPS"),
            stream_resumes=read.whole("STREAM_RESUMES") or 0,
            stream_stall_s=read.number("STREAM_STALL_S"),
            first_token_timeout_s=read.number("STREAM_FIRST_TOKEN_TIMEOUT_S"),
            offline_tps=read.number("OFFLINE_TPS"),
            offline_ttft_ms=read.number("OFFLINE_TTFT_MS"),
            offline_fault=read.text("OFFLINE_FAULT"),
            agent_max_turns=read.whole("AGENT_MAX_TURNS") or 6,
            agent_mcp_servers=read.items("AGENT_MCP_SERVERS"),
            log_level=read.choice("LOG_LEVEL"),
            metrics_token=read.text("METRICS_TOKEN"),
            show_metrics=read.flag("SHOW_METRICS"),
            show_reasoning=read.flag("SHOW_REASONING"),
            max_input_chars=read.whole("MAX_INPUT_CHARS") or 0,
            language=_language(read),
            rate_limits=RateLimits(
                requests_per_minute=read.whole("RATE_LIMIT_RPM") or None,
                concurrent_streams=read.whole("RATE_LIMIT_CONCURRENT") or None,
                tokens_per_day=read.whole("RATE_LIMIT_TOKENS_PER_DAY") or None,
                redis_url=read.url("REDIS_URL"),
            ),
            http_client=read.choice("OPENAI_HTTP_CLIENT"),
            max_history_tokens=read.whole("MAX_HISTORY_TOKENS") or None,
            sse_grace_s=read.number("SSE_GRACE_S"),
            sse_keepalive_s=read.number("SSE_KEEPALIVE_S"),
            sse_ttl_s=read.number("SSE_TTL_S"),
            guardrails=_guardrails(read, api_key, base_url),
            shared_answers=read.choice("SHARED_ANSWERS"),
            answer_cache_ttl_s=read.number("ANSWER_CACHE_TTL_S"),
            answer_cache_max_mb=read.number("ANSWER_CACHE_MAX_MB"),
            login=bool(read.text("CHAINLIT_AUTH_SECRET")),
        )


@dataclass(frozen=True, slots=True)
class SpeedupChoices:
    """The speed-up variables app.py reads while it loads, before Settings: a value that cannot
    be followed falls back to its default and is reported in `problems`."""

    enabled: bool = True  # STREAM_SPEEDUPS
    event_loop: str = "auto"  # EVENT_LOOP
    ws_per_message_deflate: bool = False  # UVICORN_WS_PER_MESSAGE_DEFLATE
    problems: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SpeedupChoices:
        read = ConfigReader(environ)
        problems: list[str] = []

        def flag(name: str) -> bool:
            try:
                return read.flag(name)
            except ConfigError as exc:  # the declared default, and say so
                problems.append(f"{exc} Using the default, {VARIABLES[name].default}.")
                return ConfigReader({}).flag(name)

        try:
            event_loop = read.choice("EVENT_LOOP")
        except ConfigError as exc:
            problems.append(f"{exc} Using the default, {VARIABLES['EVENT_LOOP'].default}.")
            event_loop = ConfigReader({}).choice("EVENT_LOOP")
        return cls(
            enabled=flag("STREAM_SPEEDUPS"),
            event_loop=event_loop,
            ws_per_message_deflate=flag("UVICORN_WS_PER_MESSAGE_DEFLATE"),
            problems=tuple(problems),
        )


def guardrail_config(environ: Mapping[str, str] | None = None) -> GuardrailConfig:
    """The guardrail settings alone (moderation follows the provider, as in `Settings`)."""
    read = ConfigReader(environ)
    return _guardrails(read, *_provider(read))


def _provider(read: ConfigReader) -> tuple[str | None, str | None]:
    api_key = read.text("OPENAI_API_KEY")
    if api_key == CHAINLIT_CI_PLACEHOLDER_KEY:
        # `chainlit run --ci` (also switched on by CI=true) puts this fake key in the
        # environment; it can never work, so it counts as no key at all.
        api_key = None
    return api_key, read.url("OPENAI_BASE_URL")


def _guardrails(
    read: ConfigReader, provider_key: str | None, provider_base_url: str | None
) -> GuardrailConfig:
    policies = read.items("GUARDRAILS")
    regex_file = read.text("GUARDRAIL_REGEX_FILE")
    if regex_file and policies and "regex" not in policies:
        policies = (*policies, "regex")  # naming a patterns file turns the regex policy on
    try:
        return GuardrailConfig(
            policies=policies,
            mode=read.choice("GUARDRAIL_MODE"),
            requested_action=read.choice("GUARDRAIL_ACTION"),
            buffer_chars=read.whole("GUARDRAIL_BUFFER_CHARS") or 0,
            blocklist_file=read.text("GUARDRAIL_BLOCKLIST_FILE"),
            regex_file=regex_file,
            locked=read.flag("GUARDRAILS_LOCKED"),
            phone_regions=tuple(r.upper() for r in read.items("GUARDRAIL_PHONE_REGIONS")),
            on_error=read.choice("GUARDRAIL_ON_ERROR"),
            moderation_model=read.text("GUARDRAIL_MODERATION_MODEL") or DEFAULT_MODERATION_MODEL,
            moderation_base_url=moderation_endpoint(
                read.url("GUARDRAIL_MODERATION_BASE_URL"),
                policies,
                provider_key=provider_key,
                provider_base_url=provider_base_url,
            ),
            moderation_api_key=read.text("GUARDRAIL_MODERATION_API_KEY") or provider_key,
            moderation_timeout_s=read.number("GUARDRAIL_MODERATION_TIMEOUT_S"),
        )
    except ValueError as exc:  # the guardrail package's own checks, in its own words
        raise ConfigError(str(exc)) from None


def _language(read: ConfigReader) -> str:
    raw = read.text("ANSWER_LANGUAGE") or DEFAULT_LANGUAGE
    try:
        return parse_language(raw)
    except ValueError:
        raise VARIABLES["ANSWER_LANGUAGE"].problem(raw) from None


def project_root() -> Path:
    """The folder holding app.py: where `.env`, `public/` and `.chainlit/` live."""
    return Path(__file__).resolve().parent.parent
