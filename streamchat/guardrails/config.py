"""Guardrail settings, and building policies and guards from them.

`GuardrailConfig` holds plain values (streamchat.settings reads them from the environment) and
checks what only holds across them, raising ValueError with a message that names the setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from urllib.parse import urlsplit

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

    def __post_init__(self) -> None:
        if "regex" in self.policies and self.regex_file is None:
            raise ValueError("GUARDRAILS includes regex, so GUARDRAIL_REGEX_FILE must name a file.")

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


def moderation_endpoint(
    configured: str | None,
    policies: Sequence[str],
    *,
    provider_key: str | None,
    provider_base_url: str | None,
) -> str | None:
    """Where the moderation policy sends its checks: `configured` (GUARDRAIL_MODERATION_BASE_URL)
    if set, else OpenAI's endpoint when the provider is OpenAI (a key and no other base URL),
    else None (offline: the offline demo model's stand-in). ValueError when moderation is on and
    the provider is another server, whose moderation endpoint cannot be guessed."""
    if configured is not None:
        return configured.rstrip("/")
    if "moderation" not in policies:
        return None
    if provider_base_url is not None:
        if urlsplit(provider_base_url).hostname != "api.openai.com":
            raise ValueError(
                "GUARDRAILS includes moderation, which uses OpenAI's moderation endpoint, but "
                "OPENAI_BASE_URL points to another server. Set GUARDRAIL_MODERATION_BASE_URL "
                f"(for example {OPENAI_API_URL}) and GUARDRAIL_MODERATION_API_KEY, or remove "
                "moderation from GUARDRAILS."
            )
        return provider_base_url.rstrip("/")
    return OPENAI_API_URL if provider_key else None


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
