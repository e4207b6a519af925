"""The languages answers and classroom labels come in: English, and Hinglish / Roman Urdu (Hindi
and Urdu written in Latin letters, mixed with English technical terms, as many classes speak).

`instruction(code)` is the sentence appended to the system prompt so that a real model answers
in that register; `language_from_messages()` reads the language back out of a request, which is
how the offline demo model picks its lesson set.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

LANGUAGES: dict[str, str] = {"en": "English", "hinglish": "Hinglish / Roman Urdu"}
DEFAULT_LANGUAGE = "en"

HINGLISH_INSTRUCTION = (
    "Reply in Hinglish / Roman Urdu: Hindi-Urdu written in Latin letters, mixed naturally with "
    "English technical terms, as spoken in classrooms in India and Pakistan."
)
_INSTRUCTIONS: dict[str, str | None] = {"en": None, "hinglish": HINGLISH_INSTRUCTION}

# Accepted spellings (after lower-casing, with "_" and spaces read as "-") -> language code.
_ALIASES = {
    "en": "en",
    "english": "en",
    "hinglish": "hinglish",
    "roman-urdu": "hinglish",
    "urdu": "hinglish",
    "hi-latn": "hinglish",
}

LABELS: dict[str, dict[str, str]] = {
    "en": {
        "raw_chunks": "Raw chunks",
        # A step's name: Chainlit shows it after "Used" ("Used 408 raw chunks"), and asks for
        # an avatar by it, so it keeps to letters, digits, spaces, dots and hyphens.
        "raw_chunks_step": "{count} raw chunks",
        "second_model": "second model",
        "second_temperature": "second temperature",
        "stop_lane": "Stop",
        "token_view": "Token boundaries",
        "slow_motion": "Slow motion",
        "compare": "Normal vs streaming",
        "side_by_side": "Side by side",
        "guardrail_demo": "Guardrail demo",
        "fault_demo": "Fault demo",
        "timeline": "Latency timeline",
        "first_text": "Time to first visible text",
        "total_time": "Total time",
        "tokens": "tokens",
        "not_streamed": "Not streamed",
        "streamed": "Streamed",
        "tagline": "Answers stream token by token, checked by guardrails as they arrive.",
        "offline_source": (
            "Answering: the **offline demo model** (scripted lessons about streaming, not an "
            "LLM). Connect a real model with `OPENAI_API_KEY` or `OPENAI_BASE_URL` in `.env`."
        ),
        "provider_source": "Answering: **{model}** at {where}.",
        "settings_hint": "Model, temperature and language: the gear icon below.",
        "classroom_tagline": (
            "Streaming made visible: raw chunks, token boundaries, slow motion and demos "
            "(type `/`)."
        ),
    },
    "hinglish": {
        "raw_chunks": "Chunks jaise aaye",
        "raw_chunks_step": "{count} raw chunks jaise aaye",
        "second_model": "doosra model",
        "second_temperature": "doosra temperature",
        "stop_lane": "Rokiye",
        "token_view": "Tokens kahan tootte hain",
        "slow_motion": "Dheemi raftaar",
        "compare": "Normal aur streaming ka muqabla",
        "side_by_side": "Saath saath",
        "guardrail_demo": "Guardrail ka demo",
        "fault_demo": "Fault ka demo",
        "timeline": "Latency ki timeline",
        "first_text": "Pehla text nazar aane tak ka waqt",
        "total_time": "Kul waqt",
        "tokens": "tokens",
        "not_streamed": "Stream ke baghair",
        "streamed": "Stream ke saath",
        "tagline": (
            "Jawab token by token stream hote hain, aur aate hi guardrails unhe check karte hain."
        ),
        "offline_source": (
            "Jawab de raha hai: **offline demo model** (streaming ke scripted lessons, LLM "
            "nahi). Asli model ke liye `.env` mein `OPENAI_API_KEY` ya `OPENAI_BASE_URL` set "
            "kijiye."
        ),
        "provider_source": "Jawab de raha hai: **{model}**, {where} par.",
        "settings_hint": "Model, temperature aur zabaan: neeche gear icon mein.",
        "classroom_tagline": (
            "Streaming ko aankhon se dekhiye: raw chunks, token ki hadein, dheemi raftaar aur "
            "demos (`/` likhiye)."
        ),
    },
}

# The Chat profile's starter questions (each one a lesson of the offline demo model).
STARTERS: dict[str, tuple[str, ...]] = {
    "en": (
        "What is a token?",
        "What does stream=True do?",
        "Why does time to first token matter?",
        "How do guardrails work on a stream?",
    ),
    "hinglish": (
        "Token kya hota hai?",
        "stream=True kya karta hai?",
        "Time to first token kyun ahem hai?",
        "Stream par guardrails kaise kaam karte hain?",
    ),
}

# Words that mark a message as Hinglish / Roman Urdu. Each is common in that register and is not
# an English word a streaming question would use: "main", "me", "to", "par", "is", "do", "hum",
# "jab", "tab", "agar" and "karen" are left out on purpose, because they are (also) English.
_MARKERS = frozenset(
    {
        # question words
        "kya", "kia", "kyaa", "kaise", "kaisa", "kaisi", "kese", "kaisay", "kyun", "kyu",
        "kyon", "kiyun", "kyunke", "kyunki", "kyonki", "kab", "kahan", "kaun", "kitna",
        "kitni", "kitne", "kaunsa", "kaunsi", "kaunse", "konsa", "konsi",
        # to be, to do, can, should
        "hai", "hain", "hein", "hy", "tha", "thi", "hota", "hoti", "hote", "hoga", "hogi",
        "karta", "karti", "karte", "karna", "karo", "karein", "kijiye", "sakta", "sakti",
        "sakte", "chahiye", "raha", "rahi", "rahe", "jata", "jati", "jate", "jaata", "jaati",
        "jaate", "jaye", "jaaye", "lagta", "lagti", "lagte", "aata", "aati", "aate",
        # explain, tell, show, meaning
        "matlab", "mtlb", "samjhao", "samjhaiye", "samjhayein", "samjhaen", "samjhain",
        "samjha", "samajh", "batao", "bataiye", "batayein", "bataen", "btao", "dikhao",
        "dikhaiye",
        # pronouns and small words
        "mujhe", "mujhko", "muje", "hamein", "humein", "aap", "apna", "apne", "apni", "yeh",
        "woh", "kuch", "koi", "aur", "mein", "nahi", "nahin", "lekin", "magar", "toh", "bhi",
        "sirf", "abhi", "liye", "wala", "wali", "wale", "ek", "bahut", "bohat", "zyada",
        # nouns a question about streaming uses
        "kaam", "jawab", "sawal", "sawaal", "farq", "waqt", "behtar", "ahem", "zaroori",
    }
)  # fmt: skip
# Postpositions are short and could turn up in English text (a name, an abbreviation), so all of
# them together count as one marker, and only between two words ("TTFT ka matlab").
_POSTPOSITIONS = frozenset({"ka", "ki", "ke", "ko", "se"})
_MIN_MARKERS = 2
_MIN_MARKER_SHARE = 0.2  # so an English sentence quoting a Hindi word or two stays English
_WORD = re.compile(r"[a-z]+")


def parse_language(value: object) -> str:
    """The language code ("en" or "hinglish") for a name people use; ValueError if unknown."""
    text = value.strip() if isinstance(value, str) else ""
    key = re.sub(r"[\s_]+", "-", text.lower())
    if key in _ALIASES:
        return _ALIASES[key]
    for code, name in LANGUAGES.items():
        if text.casefold() == name.casefold():
            return code
    raise ValueError(
        f"Unknown language {value!r}: use en (or english) or hinglish "
        "(or roman-urdu, urdu, hi-latn)."
    )


def instruction(code: str) -> str | None:
    """The sentence to append to the system prompt so a model answers in this language, or None
    when no instruction is needed (English)."""
    return _INSTRUCTIONS[parse_language(code)]


def label(key: str, language: str) -> str:
    """A classroom UI label in `language`, falling back to English (KeyError for unknown keys)."""
    try:
        code = parse_language(language)
    except ValueError:
        code = DEFAULT_LANGUAGE
    return LABELS[code].get(key) or LABELS[DEFAULT_LANGUAGE][key]


def starter_questions(language: str) -> tuple[str, ...]:
    """The starter questions in `language` (English for an unknown one)."""
    try:
        return STARTERS[parse_language(language)]
    except ValueError:
        return STARTERS[DEFAULT_LANGUAGE]


def ui_language(configured: str, browser: str | None) -> str:
    """The language of the welcome screen: the configured answer language if it is not English,
    else the browser's (Chainlit's hi-Latn reads as Hinglish), else English."""
    if configured != DEFAULT_LANGUAGE:
        return configured
    try:
        return parse_language(browser or DEFAULT_LANGUAGE)
    except ValueError:
        return DEFAULT_LANGUAGE


def looks_hinglish(text: str) -> bool:
    """True when `text` is clearly written in Hinglish / Roman Urdu: at least two distinct marker
    words, making up a fair share of all its words."""
    words = _WORD.findall(text.lower())
    found = {word for word in words if word in _MARKERS}
    hits = sum(1 for word in words if word in _MARKERS)
    if any(word in _POSTPOSITIONS for word in words[1:-1]):
        found.add("<postposition>")
        hits += 1
    return len(found) >= _MIN_MARKERS and hits >= _MIN_MARKER_SHARE * len(words)


def language_from_messages(messages: Sequence[Mapping[str, object]]) -> str:
    """The language a request asks for: Hinglish when a system message carries the Hinglish
    instruction or the latest user message is itself in Hinglish, English otherwise."""
    for message in messages:
        if message.get("role") == "system" and HINGLISH_INSTRUCTION in _text_of(message):
            return "hinglish"
    for message in reversed(messages):
        if message.get("role") == "user":
            return "hinglish" if looks_hinglish(_text_of(message)) else DEFAULT_LANGUAGE
    return DEFAULT_LANGUAGE


def _text_of(message: Mapping[str, object]) -> str:
    """A message's text, whether its content is a string or a list of OpenAI content parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text") or "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""
