"""Guardrails on the stream: policies find violations, the incremental Guard decides what may
be shown. See docs/guardrails.md."""

from streamchat.guardrails.config import (
    GuardrailConfig,
    build_guard,
    build_policies,
    check_input,
    guardrail_note,
    screen_input,
)
from streamchat.guardrails.guard import Guard, GuardRecord, GuardStep, Violation, check_text
from streamchat.guardrails.policies import (
    BlocklistPolicy,
    Match,
    PiiPolicy,
    Policy,
    RegexPolicy,
    SecretsPolicy,
)

__all__ = [
    "BlocklistPolicy",
    "Guard",
    "GuardRecord",
    "GuardStep",
    "GuardrailConfig",
    "Match",
    "PiiPolicy",
    "Policy",
    "RegexPolicy",
    "SecretsPolicy",
    "Violation",
    "build_guard",
    "build_policies",
    "check_input",
    "check_text",
    "guardrail_note",
    "screen_input",
]
