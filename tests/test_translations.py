"""The Hinglish / Roman Urdu UI strings (.chainlit/translations/hi-Latn.json) match the keys and
placeholders of the installed Chainlit's English file, so an upgrade that adds strings is caught,
and Chainlit's own loader serves them for the language tag hi-Latn."""

from __future__ import annotations

import json
import re
from pathlib import Path

import chainlit
import chainlit.config

REPO = Path(__file__).resolve().parent.parent
OURS = REPO / ".chainlit" / "translations" / "hi-Latn.json"
SHIPPED = Path(chainlit.__file__).parent / "translations" / "en-US.json"
PLACEHOLDER = re.compile(r"\{\{\s*\w+\s*\}\}")


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_every_string_of_the_installed_chainlit_is_translated_with_its_placeholders():
    english = flatten(json.loads(SHIPPED.read_text(encoding="utf-8")))
    hinglish = flatten(json.loads(OURS.read_text(encoding="utf-8")))
    assert set(hinglish) == set(english)
    for key, text in english.items():
        assert hinglish[key].strip(), key
        assert sorted(PLACEHOLDER.findall(hinglish[key])) == sorted(PLACEHOLDER.findall(text)), key
    assert hinglish["chat.input.placeholder"] == "Apna message yahan likhein..."


def test_chainlits_loader_serves_the_file_for_hi_latn(monkeypatch):
    monkeypatch.setattr(chainlit.config, "config_translation_dir", str(OURS.parent))
    loaded = chainlit.config.config.load_translation("hi-Latn")
    assert loaded == json.loads(OURS.read_text(encoding="utf-8"))
