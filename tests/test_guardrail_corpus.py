"""The default guardrails on realistic text (tests/guardrail_corpus.py): every positive caught as
its own kind and never shown, not even five characters of it, at every chunking and in both
actions; every negative (code that names secrets, identifiers, amounts, Hinglish and Urdu prose)
passed through untouched."""

from __future__ import annotations

import itertools

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
from streamchat.guardrails.normalize import Normalizer, normalize
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


# --- the cheap first questions -----------------------------------------------------------------
# The guard tells each policy where new matches can start (`since`): everything before has been
# decided, so the policy asks its cheap question (four digits or an @; a format's prefix or a
# secret's name) only from a little before there. These check that the question never skips a
# match: wherever `since` falls up to a match's start, the match is still found.


@pytest.mark.parametrize(("kind", "value", "sentence"), POSITIVES, ids=POSITIVE_IDS)
def test_a_match_is_found_from_any_point_up_to_its_start(kind, value, sentence):
    text = normalize("Pehle kuch aur baat, phir: " + sentence.format(v=value))
    for policy in POLICIES:
        whole = [m for m in policy.find(text) if m.kind == kind]
        for match in whole:
            for since in range(match.start + 1):
                assert match in policy.find(text, since), (policy.name, since)


@pytest.mark.parametrize(("kind", "value", "sentence"), POSITIVES, ids=POSITIVE_IDS)
@pytest.mark.parametrize("action", ["stop", "redact"])
def test_a_positive_split_in_two_anywhere_and_checked_at_every_piece_is_caught(
    kind, value, sentence, action
):
    text = "Pehle kuch aur baat. " + sentence.format(v=value) + " Baaki sab theek."
    for cut in range(1, len(text)):
        guard = Guard(POLICIES, action=action, check_every_chars=1, check_every_s=0.0)
        released = ""
        for piece in (text[:cut], text[cut:]):
            step = guard.feed(piece)
            released += step.release
            if step.stopped:
                break
        else:
            released += guard.finish().release
        assert kind in [v.kind for v in guard.record.violations], cut
        assert not leaked(value, released, text), cut
        assert guard.record.check_errors == 0, cut


@pytest.mark.parametrize(("kind", "value", "sentence"), POSITIVES, ids=POSITIVE_IDS)
def test_a_positive_fed_a_character_at_a_time_and_checked_at_each_is_caught(kind, value, sentence):
    text = "Pehle kuch aur baat. " + sentence.format(v=value) + " Baaki sab theek."
    guard = Guard(POLICIES, action="redact", check_every_chars=1, check_every_s=0.0)
    released = "".join(guard.feed(char).release for char in text) + guard.finish().release
    assert kind in [v.kind for v in guard.record.violations]
    assert not leaked(value, released, text)
    assert guard.record.check_errors == 0


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="ab1 \t\n\r.\u200bｂ", max_size=40),
    cuts=st.lists(st.integers(0, 40), max_size=6),
)
def test_normalising_in_pieces_equals_normalising_the_whole(text, cuts):
    normalizer = Normalizer()
    points = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    for start, end in itertools.pairwise(points):
        normalizer.feed(text[start:end])
    whole = Normalizer()
    whole.feed(text)
    assert normalizer.window(0) == normalize(text) == whole.window(0)
    positions = range(len(whole) + 2)
    assert [normalizer.to_original(i) for i in positions] == [
        whole.to_original(i) for i in positions
    ]
