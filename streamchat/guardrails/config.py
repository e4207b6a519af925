"""Guardrail settings from the environment, and building policies and guards from them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from urllib.parse import urlsplit

from streamchat.core.errors import ConfigError
from streamchat.guardrails.guard import Guard, Violation, check_text
from streamchat.guardrails.moderation import Moderator
from streamchat.guardrails.policies import (
    BlocklistPolicy,
    PiiPolicy,
    Policy,
    RegexPolicy,
    SecretsPolicy,
    load_blocklist,
)

POLICY_NAMES = ("pii", "secrets", "blocklist", "regex", "moderation")
DEFAULT_POLICIES = ("pii", "secrets", "blocklist")
OPENAI_API_URL = "https://api.openai.com/v1"
DEFAULT_MODERATION_MODEL = "omni-moderation-latest"


@dataclass(frozen=True, slots=True)
class GuardrailConfig:
    policies: tuple[str, ...] = DEFAULT_POLICIES
    mode: str = "hold"
    requested_action: str = "stop"
    buffer_chars: int = 200
    blocklist_file: str | None = None
    regex_file: str | None = None
    locked: bool = False
    phone_regions: tuple[str, ...] = ("US", "IN", "PK")
    on_error: str = "block"  # what a failed moderation check means: block or allow
    moderation_model: str = DEFAULT_MODERATION_MODEL
    # None while moderation is on: the offline demo model's stand-in endpoint.
    moderation_base_url: str | None = None
    moderation_api_key: str | None = field(default=None, repr=False)
    moderation_timeout_s: float = 10.0

    @property
    def moderated(self) -> bool:
        return "moderation" in self.policies

    @property
    def action(self) -> str:
        """The action in force: redact needs hold mode, so buffered mode stops instead."""
        return self.requested_action if self.mode == "hold" else "stop"

    @property
    def redact_fell_back(self) -> bool:
        return self.requested_action == "redact" and self.mode != "hold"

    @property
    def enabled(self) -> bool:
        return bool(self.policies)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str],
        *,
        provider_key: str | None = None,
        provider_base_url: str | None = None,
    ) -> GuardrailConfig:
        """`provider_key` / `provider_base_url`: the chat provider's as Settings read them ("" for
        none; default: OPENAI_API_KEY / OPENAI_BASE_URL); moderation follows them unless told."""
        raw = (environ.get("GUARDRAILS") or ",".join(DEFAULT_POLICIES)).strip().lower()
        if raw in ("off", "none", "false", "0"):
            policies: tuple[str, ...] = ()
        else:
            policies = tuple(dict.fromkeys(p.strip() for p in raw.split(",") if p.strip()))
            unknown = [p for p in policies if p not in POLICY_NAMES]
            if unknown:
                raise ConfigError(
                    f"GUARDRAILS: unknown polic{'ies' if len(unknown) > 1 else 'y'} "
                    f"{', '.join(unknown)}; use any of {', '.join(POLICY_NAMES)}, or off."
                )
        mode = _choice(environ, "GUARDRAIL_MODE", ("hold", "buffered"), "hold")
        action = _choice(environ, "GUARDRAIL_ACTION", ("stop", "redact"), "stop")
        buffer_raw = (environ.get("GUARDRAIL_BUFFER_CHARS") or "200").strip()
        if not buffer_raw.isdigit() or not 1 <= int(buffer_raw) <= 100_000:
            raise ConfigError(
                "GUARDRAIL_BUFFER_CHARS must be a whole number from 1 to 100000 "
                f"(got {buffer_raw!r})."
            )
        regex_file = (environ.get("GUARDRAIL_REGEX_FILE") or "").strip() or None
        if "regex" in policies and regex_file is None:
            raise ConfigError(
                "GUARDRAILS includes regex, so GUARDRAIL_REGEX_FILE must name a file."
            )
        if regex_file and "regex" not in policies and policies:
            policies = (*policies, "regex")
        locked_raw = (environ.get("GUARDRAILS_LOCKED") or "false").strip().lower()
        if locked_raw not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"GUARDRAILS_LOCKED must be true or false (got {locked_raw!r}).")
        regions = tuple(
            r.strip().upper()
            for r in (environ.get("GUARDRAIL_PHONE_REGIONS") or "US,IN,PK").split(",")
            if r.strip()
        )
        model, moderation_url, moderation_key, timeout = _moderation_settings(
            environ,
            policies,
            _text(environ, "OPENAI_API_KEY") if provider_key is None else provider_key or None,
            _text(environ, "OPENAI_BASE_URL")
            if provider_base_url is None
            else provider_base_url or None,
        )
        return cls(
            policies=policies,
            mode=mode,
            requested_action=action,
            buffer_chars=int(buffer_raw),
            blocklist_file=(environ.get("GUARDRAIL_BLOCKLIST_FILE") or "").strip() or None,
            regex_file=regex_file,
            locked=locked_raw in ("true", "1", "yes"),
            phone_regions=regions,
            on_error=_choice(environ, "GUARDRAIL_ON_ERROR", ("block", "allow"), "block"),
            moderation_model=model,
            moderation_base_url=moderation_url,
            moderation_api_key=moderation_key,
            moderation_timeout_s=timeout,
        )

    def with_choices(
        self, *, enabled: bool | None = None, mode: str | None = None
    ) -> GuardrailConfig:
        """A chat's own choices from the settings panel; ignored when the operator locked them."""
        if self.locked:
            return self
        config = self
        if enabled is False:
            config = replace(config, policies=())
        if mode in ("hold", "buffered"):
            config = replace(config, mode=mode)
        return config


def _text(environ: Mapping[str, str], name: str) -> str | None:
    return (environ.get(name) or "").strip() or None


def _moderation_settings(
    environ: Mapping[str, str],
    policies: tuple[str, ...],
    provider_key: str | None,
    provider_base_url: str | None,
) -> tuple[str, str | None, str | None, float]:
    """Model, base URL, key and timeout of the moderation policy. It sends its checks to
    GUARDRAIL_MODERATION_BASE_URL if set, else to OpenAI's endpoint when the provider is OpenAI
    (a key and no other base URL), else (offline) to the offline demo model's stand-in."""
    timeout_raw = _text(environ, "GUARDRAIL_MODERATION_TIMEOUT_S") or "10"
    try:
        timeout = float(timeout_raw)
    except ValueError:
        timeout = -1.0
    if not 0.1 <= timeout <= 120:
        raise ConfigError(
            "GUARDRAIL_MODERATION_TIMEOUT_S must be a number of seconds from 0.1 to 120 "
            f"(got {timeout_raw!r})."
        )
    base_url = _text(environ, "GUARDRAIL_MODERATION_BASE_URL")
    if base_url is not None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                "GUARDRAIL_MODERATION_BASE_URL must be an http(s) URL such as "
                f"{OPENAI_API_URL} (got a value that is not)."
            )
        base_url = base_url.rstrip("/")
    elif "moderation" in policies and provider_base_url is not None:
        if urlsplit(provider_base_url).hostname != "api.openai.com":
            raise ConfigError(
                "GUARDRAILS includes moderation, which uses OpenAI's moderation endpoint, but "
                "OPENAI_BASE_URL points to another server. Set GUARDRAIL_MODERATION_BASE_URL "
                f"(for example {OPENAI_API_URL}) and GUARDRAIL_MODERATION_API_KEY, or remove "
                "moderation from GUARDRAILS."
            )
        base_url = provider_base_url.rstrip("/")
    elif "moderation" in policies and provider_key:
        base_url = OPENAI_API_URL
    return (
        _text(environ, "GUARDRAIL_MODERATION_MODEL") or DEFAULT_MODERATION_MODEL,
        base_url,
        _text(environ, "GUARDRAIL_MODERATION_API_KEY") or provider_key,
        timeout,
    )


def _choice(environ: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = (environ.get(name) or default).strip().lower()
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)} (got {value!r}).")
    return value


@lru_cache(maxsize=16)
def _build(
    names: tuple[str, ...],
    blocklist_file: str | None,
    regex_file: str | None,
    regions: tuple[str, ...],
) -> tuple[Policy, ...]:
    policies: list[Policy] = []
    for name in names:
        if name == "pii":
            policies.append(PiiPolicy(regions))
        elif name == "secrets":
            policies.append(SecretsPolicy())
        elif name == "blocklist":
            policies.append(BlocklistPolicy(load_blocklist(blocklist_file)))
        elif name == "regex" and regex_file:
            policies.append(RegexPolicy.from_file(regex_file))
    return tuple(policies)


def build_policies(config: GuardrailConfig) -> tuple[Policy, ...]:
    """The configured local policies, compiled once and shared (building a Guard per stream is
    cheap). The moderation policy is not among them: it runs after the Guard (moderation.py)."""
    return _build(config.policies, config.blocklist_file, config.regex_file, config.phone_regions)


def build_guard(config: GuardrailConfig, *, stream_id: str = "") -> Guard:
    return Guard(
        build_policies(config),
        mode=config.mode,
        action=config.action,
        buffer_chars=config.buffer_chars,
        stream_id=stream_id,
    )


def check_input(config: GuardrailConfig, text: str) -> list[Violation]:
    """The local policies over a user's message (the moderation policy: `screen_input`)."""
    return check_text(build_policies(config), text)


async def screen_input(
    config: GuardrailConfig, text: str, moderator: Moderator | None
) -> Violation | None:
    """Every configured policy over a user's message before it is sent: the first violation,
    or None. The local policies first; moderation only for a message they let through."""
    if not config.enabled:
        return None
    if blocked := check_input(config, text):
        return blocked[0]
    if config.moderated and moderator is not None:
        return await moderator.check_input(text)
    return None


def guardrail_note(config: GuardrailConfig) -> str:
    """What the settings panel says about the guardrails, in a sentence or two."""
    if not config.enabled:
        return "No guardrails are configured (GUARDRAILS=off)."
    notes = [f"Action: {config.action}."]
    if config.moderated:
        notes.append(
            "Moderation checks each sentence"
            + (" before it is shown." if config.mode == "hold" else " after it is shown.")
        )
    if config.requested_action == "redact":
        notes.append(
            "Redact works only in hold mode (shown text cannot be un-shown); "
            "in buffered mode a violation stops the answer instead."
        )
    if config.locked:
        notes.append("Set by the operator (GUARDRAILS_LOCKED).")
    return " ".join(notes)
