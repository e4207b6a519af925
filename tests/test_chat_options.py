"""Chat settings submitted from the UI are validated before they apply."""

import pytest

from streamchat.chat import ChatOptions
from streamchat.core.errors import ConfigError

BASE = ChatOptions(model="m1", temperature=0.7, system_prompt="s")


def test_valid_values_apply():
    updated = BASE.updated({"model": " m2 ", "temperature": "1.2", "system_prompt": "new"})
    assert updated == ChatOptions(model="m2", temperature=1.2, system_prompt="new")


def test_unknown_keys_are_ignored():
    assert BASE.updated({"something_else": 1}) == BASE


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"model": ""}, "model name cannot be empty"),
        ({"temperature": "warm"}, "Temperature must be a number"),
        ({"temperature": 2.5}, "Temperature must be a number"),
        ({"system_prompt": "x" * 20_001}, "system prompt is too long"),
    ],
)
def test_bad_values_are_refused_with_a_reason(values, message):
    with pytest.raises(ConfigError, match=message):
        BASE.updated(values)


def test_language_adds_its_instruction_to_the_system_prompt_and_is_validated():
    from streamchat.languages import HINGLISH_INSTRUCTION

    options = ChatOptions(model="m", temperature=0.5, system_prompt="Be brief.")
    assert options.effective_system_prompt == "Be brief."
    hinglish = options.updated({"language": "Roman-Urdu"})
    assert hinglish.language == "hinglish"
    assert hinglish.effective_system_prompt == f"Be brief.\n\n{HINGLISH_INSTRUCTION}"
    assert options.updated(
        {"system_prompt": "", "language": "hinglish"}
    ).effective_system_prompt == (HINGLISH_INSTRUCTION)
    with pytest.raises(ConfigError, match="Unknown language"):
        options.updated({"language": "klingon"})
