"""The offline demo model's stand-in for OpenAI's moderation endpoint (`POST /v1/moderations`).

It is not a classifier: it flags a short, fixed list of demo phrases, so a class with no key
and no network can watch the `moderation` guardrail stop a stream. The response has the shape
of OpenAI's (every category, scores, applied input types), so the `openai` SDK parses it.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

MODERATION_MODEL = "streamchat-demo-moderation"

CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)

# category -> demo phrases (matched case-insensitively on word boundaries)
DEMO_PHRASES: dict[str, tuple[str, ...]] = {
    "harassment": ("you worthless fool", "you are a worthless fool", "nobody likes you"),
    "violence": ("i will hurt you", "i am going to hurt you"),
    "illicit": ("how to shoplift", "pick a lock to break in"),
}

# The phrase the offline model's moderation demo streams.
DEMO_PHRASE = "you worthless fool"

_PATTERNS = {
    category: re.compile(
        r"\b(?:" + "|".join(re.escape(p).replace(r"\ ", r"\s+") for p in phrases) + r")\b",
        re.IGNORECASE,
    )
    for category, phrases in DEMO_PHRASES.items()
}


def flagged_categories(text: str) -> list[str]:
    return [category for category, pattern in _PATTERNS.items() if pattern.search(text)]


def moderation_response(inputs: list[str]) -> dict[str, Any]:
    """OpenAI's response body for a list of inputs, judged by the demo phrase list."""
    results = []
    for text in inputs:
        hits = set(flagged_categories(text))
        results.append(
            {
                "flagged": bool(hits),
                "categories": {c: c in hits for c in CATEGORIES},
                "category_scores": {c: 0.97 if c in hits else 0.0001 for c in CATEGORIES},
                "category_applied_input_types": {c: ["text"] for c in CATEGORIES},
            }
        )
    return {"id": f"modr-{uuid.uuid4().hex[:20]}", "model": MODERATION_MODEL, "results": results}


def moderation_inputs(body: object) -> list[str] | None:
    """The texts of a request body (`input`: a string or a list of strings), None if malformed."""
    if not isinstance(body, dict):
        return None
    value = body.get("input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        # Multi-modal inputs: only text parts are judged here.
        return [str(v.get("text", "")) for v in value if v.get("type") == "text"] or None
    return None
