"""Guardrail settings from the environment, and building policies and guards from them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache

from streamchat.errors import ConfigError
from streamchat.guardrails.guard import Guard, Violation, check_text
from streamchat.guardrails.policies import (
    BlocklistPolicy,
    PiiPolicy,
    Policy,
    RegexPolicy,
    SecretsPolicy,
    load_blocklist,
)

POLICY_NAMES = ("pii", "secrets", "blocklist", "regex")
DEFAULT_POLICIES = ("pii", "secrets", "blocklist")


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
    def from_env(cls, environ: Mapping[str, str]) -> GuardrailConfig:
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
        return cls(
            policies=policies,
            mode=mode,
            requested_action=action,
            buffer_chars=int(buffer_raw),
            blocklist_file=(environ.get("GUARDRAIL_BLOCKLIST_FILE") or "").strip() or None,
            regex_file=regex_file,
            locked=locked_raw in ("true", "1", "yes"),
            phone_regions=regions,
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
    """The configured policies, compiled once and shared (building a Guard per stream is cheap)."""
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
    return check_text(build_policies(config), text)


def guardrail_note(config: GuardrailConfig) -> str:
    """What the settings panel says about the guardrails, in a sentence or two."""
    if not config.enabled:
        return "No guardrails are configured (GUARDRAILS=off)."
    notes = [f"Action: {config.action}."]
    if config.requested_action == "redact":
        notes.append(
            "Redact works only in hold mode (shown text cannot be un-shown); "
            "in buffered mode a violation stops the answer instead."
        )
    if config.locked:
        notes.append("Set by the operator (GUARDRAILS_LOCKED).")
    return " ".join(notes)
