"""The default guardrails on realistic text (tests/guardrail_corpus.py): every positive caught as
its own kind and never shown, not even five characters of it, at every chunking and in both
actions; every negative (code that names secrets, identifiers, amounts, Hinglish and Urdu prose)
passed through untouched."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamchat.guardrails import (
    BlocklistPolicy,
    Guard,
    GuardrailConfig,
    PiiPolicy,
    SecretsPolicy,
    build_policies,
)
from streamchat.guardrails.policies import default_blocklist, label
from streamchat.offline.lessons import lessons
from tests.guardrail_corpus import NEGATIVES, POSITIVES

POLICIES = (PiiPolicy(), SecretsPolicy(), BlocklistPolicy(default_blocklist()))
SIZES = [1, 3, 97, 100_000]


def stream(text: str, size: int | list[int], action: str = "stop") -> tuple[str, Guard]:
    """Feed `text` in pieces (one size, or sizes in turn) and return what was released."""
    sizes = size if isinstance(size, list) else [size]
    guard = Guard(POLICIES, action=action)
    released: list[str] = []
    position = turn = 0
    while position < len(text):
        piece = text[position : position + sizes[turn % len(sizes)]]
        position, turn = position + len(piece), turn + 1
        step = guard.feed(piece)
        released.append(step.release)
        if step.stopped:
            return "".join(released), guard
    released.append(guard.finish().release)
    return "".join(released), guard


def leaked(value: str, released: str, text: str) -> list[str]:
    """Five-character pieces of `value` that were shown and are not in the text around it."""
    around = text.replace(value, "\0")
    return [
        value[i : i + 5]
        for i in range(len(value) - 4)
        if value[i : i + 5] in released and value[i : i + 5] not in around
    ]


POSITIVE_IDS = [f"{kind}-{index}" for index, (kind, _, _) in enumerate(POSITIVES)]


@pytest.mark.parametrize(("kind", "value", "sentence"), POSITIVES, ids=POSITIVE_IDS)
@pytest.mark.parametrize("size", SIZES)
def test_stop_ends_the_answer_at_the_value_for_the_right_reason(kind, value, sentence, size):
    text = sentence.format(v=value)
    released, guard = stream(text, size)
    assert guard.stopped, f"{kind} was not caught"
    violation = guard.record.violations[-1]
    assert violation.kind == kind
    assert released == text[: violation.start]
    assert not leaked(value, released, text)


@pytest.mark.parametrize(("kind", "value", "sentence"), POSITIVES, ids=POSITIVE_IDS)
@pytest.mark.parametrize("size", SIZES)
def test_redact_replaces_the_whole_value_and_goes_on(kind, value, sentence, size):
    text = sentence.format(v=value)
    released, guard = stream(text, size, action="redact")
    assert not guard.stopped
    assert [v.kind for v in guard.record.violations] == [kind]
    before, _, after = sentence.partition("{v}")
    assert released == before.format() + label(kind) + after.format()
    assert guard.record.check_errors == 0


@pytest.mark.parametrize("text", NEGATIVES)
@pytest.mark.parametrize("size", [1, 3, 7, 97, 100_000])
def test_code_and_prose_that_only_name_secrets_pass_untouched(text, size):
    released, guard = stream(text, size)
    assert guard.record.violations == [], [v.kind for v in guard.record.violations]
    assert released == text
    assert guard.record.check_errors == 0


@settings(max_examples=150, deadline=None)
@given(
    texts=st.lists(st.sampled_from(NEGATIVES), min_size=2, max_size=4),
    joiner=st.sampled_from(["\n", " ", "\n\n", ". "]),
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=5),
)
def test_negatives_side_by_side_still_pass_untouched(texts, joiner, sizes):
    text = joiner.join(texts)
    released, guard = stream(text, sizes)
    assert guard.record.violations == [], [v.kind for v in guard.record.violations]
    assert released == text


@pytest.mark.parametrize("language", ["en", "hinglish"])
def test_the_offline_models_own_lessons_pass_untouched(language):
    for lesson in lessons(language):
        released, guard = stream(lesson.body, [4])
        assert guard.record.violations == [], (lesson.name, guard.record.violations)
        assert released == lesson.body


prose = st.text(alphabet="abcdefghijklmnopqrstuvwxyz ,.:=\n", max_size=60)


@settings(max_examples=300, deadline=None)
@given(
    before=prose,
    after=prose,
    positive=st.sampled_from(POSITIVES),
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=5),
    action=st.sampled_from(["stop", "redact"]),
)
def test_no_five_characters_of_a_positive_are_ever_shown(before, after, positive, sizes, action):
    kind, value, sentence = positive
    text = before + " " + sentence.format(v=value) + " " + after
    released, guard = stream(text, sizes, action=action)
    assert kind in [v.kind for v in guard.record.violations]
    assert not leaked(value, released, text)


@pytest.mark.parametrize(
    "text",
    [
        "Tu chutiya hai kya?",
        "Abe harami, chup kar.",
        "Saala kamina nikla woh.",
        "Bhenchod traffic hai aaj.",
        "Woh gaandu hai.",
        "Madarchod log.",
        "Tum kanjar ho.",
        "You are an asshole.",
    ],
)
def test_common_hindi_and_urdu_abuse_in_roman_script_is_blocked(text):
    _, guard = stream(text + " The rest of the answer.", 3)
    assert guard.stopped and guard.record.violations[-1].kind == "blocked_word"


def test_default_configuration_uses_the_same_policies():
    names = [p.name for p in build_policies(GuardrailConfig())]
    assert names == ["pii", "secrets", "blocklist"]
