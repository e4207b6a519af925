"""Lessons in two languages: telling Hinglish / Roman Urdu from English, the system-prompt
instruction, the Hinglish lesson set and the offline model answering from it."""

from __future__ import annotations

import re

import pytest

from streamchat.guardrails import GuardrailConfig, build_policies, check_text
from streamchat.languages import (
    DEFAULT_LANGUAGE,
    HINGLISH_INSTRUCTION,
    LABELS,
    LANGUAGES,
    instruction,
    label,
    language_from_messages,
    looks_hinglish,
    parse_language,
)
from streamchat.offline.lessons import (
    DEMO_NOTICE,
    GUARDRAIL_DEMO_KINDS,
    choose_answer,
    guardrail_demo,
    lessons,
)
from streamchat.offline.moderation import DEMO_PHRASE, flagged_categories
from tests.test_offline import check_continuation

ENGLISH_QUESTIONS = [
    "What is a token?",
    "what does stream=True do",
    "why does time to first token matter?",
    "SSE or websockets?",
    "how does backpressure work",
    "how do guardrails work",
    "what happens on a 429 or a dropped connection?",
    "how do I deploy this behind nginx?",
    "Show me an HTML injection demo",
    "Hi, how are you?",
    "hello",
    "namaste",
    "Is the SSE protocol better than WebSockets?",
    "Can you explain backpressure to me?",
    "Why is my stream so slow behind nginx?",
    "Show me a guardrail demo with a credit card",
    "Yeh, but why does TTFT matter?",
    "Does the main process keep a buffer of chunks?",
    "Karen asked: what is a token and who pays for it?",
    "Is Redis needed to resume a stream in production?",
    "What does the ki in Wikipedia stand for?",
    "Ka-ching! Is streaming billed per token?",
    "The Hindi word hai means is, and kya means what. What is streaming?",
    "Your previous answer was cut off. Continue it exactly where it stopped.",
    "What is a token? [fault: drop after=20]",
]

HINGLISH_QUESTIONS = [
    "Streaming kya hai aur kaise kaam karti hai?",
    "TTFT ka matlab samjhao",
    "Token kya hota hai?",
    "mujhe backpressure samjhao",
    "SSE ya WebSocket, kaunsa behtar hai?",
    "Streaming kia hy aur kese kaam karti hy?",
    "nginx ke peeche deploy kaise karein?",
    "Email ke saath guardrail demo dikhao",
    "Token kya hai? [fault: drop after=20]",
    "Mujhe batao ke server-sent events, websockets aur gRPC streams mein kya farq hai",
]

# A Hinglish question per lesson, and the lesson file it must get.
HINGLISH_LESSON_QUESTIONS = [
    ("Token kya hota hai?", "01-tokens.md"),
    ("stream=True kya karta hai?", "02-stream-true.md"),
    ("Streaming kya hai aur kaise kaam karti hai?", "02-stream-true.md"),
    ("TTFT ka matlab samjhao", "03-ttft.md"),
    ("Time to first token kyun ahem hai?", "03-ttft.md"),
    ("SSE aur WebSocket mein kya farq hai?", "04-sse-websocket.md"),
    ("Backpressure kaise kaam karta hai?", "05-backpressure.md"),
    ("Guardrails kaise kaam karte hain?", "06-guardrails.md"),
    ("429 error ya connection toot jaye to kya hota hai?", "07-errors-resume.md"),
    ("nginx ke peeche deploy kaise karein?", "08-production.md"),
    ("Model ka output untrusted kyun hai? XSS samjhao", "09-untrusted-output.md"),
]

# The English questions tests/test_offline.py asks, and the lesson file each one gets.
ENGLISH_LESSON_QUESTIONS = [
    ("What is a token?", "01-tokens.md"),
    ("what does stream=True do", "02-stream-true.md"),
    ("why does time to first token matter?", "03-ttft.md"),
    ("SSE or websockets?", "04-sse-websocket.md"),
    ("how does backpressure work", "05-backpressure.md"),
    ("how do guardrails work", "06-guardrails.md"),
    ("what happens on a 429 or a dropped connection?", "07-errors-resume.md"),
    ("how do I deploy this behind nginx?", "08-production.md"),
    ("Show me an HTML injection demo", "09-untrusted-output.md"),
]

DEMO_VALUES = {
    "email": "jane.doe@example.com",
    "card": "4111 1111 1111 1111",
    "phone": "+1 415 555 0123",
    "secret": "sk-proj-",
    "blocked_word": "darn",
    "moderation": DEMO_PHRASE,
}
HINGLISH_DEMO_QUESTIONS = {
    "email": "Email ke saath guardrail demo dikhao",
    "card": "credit card ka guardrail demo dikhao",
    "phone": "phone number ka demo dikhao",
    "secret": "API key ka demo dikhao",
    "blocked_word": "gaali wala guardrail demo dikhao",
    "moderation": "moderation ka demo dikhao",
}
LABEL_KEYS = {
    "raw_chunks",
    "raw_chunks_step",
    "second_model",
    "second_temperature",
    "stop_lane",
    "token_view",
    "slow_motion",
    "compare",
    "side_by_side",
    "guardrail_demo",
    "fault_demo",
    "timeline",
    "first_text",
    "total_time",
    "tokens",
    "not_streamed",
    "streamed",
    "tagline",
    "offline_source",
    "provider_source",
    "settings_hint",
    "classroom_tagline",
}


def ask(text: str) -> list[dict[str, object]]:
    return [{"role": "user", "content": text}]


def in_hinglish_chat(text: str) -> list[dict[str, object]]:
    """The request the app sends once a user picked Hinglish: the instruction in the system
    prompt, after whatever system prompt the chat already had."""
    return [
        {"role": "system", "content": f"You are a helpful teacher. {instruction('hinglish')}"},
        *ask(text),
    ]


def lesson_named(name: str, language: str):
    return next(lesson for lesson in lessons(language) if lesson.name == name)


def shape(body: str) -> dict[str, object]:
    """What a translation must keep: markdown structure, code, numbers."""
    lines = body.splitlines()
    return {
        "headings": sum(1 for line in lines if line.startswith("#")),
        "list items": sum(1 for line in lines if re.match(r"\s*(?:[-*]|\d+\.)\s", line)),
        "paragraphs": len([block for block in body.split("\n\n") if block.strip()]),
        "bold terms": len(re.findall(r"\*\*[^*]+\*\*", body)),
        "code": sorted(re.findall(r"`[^`]+`", body)),
        "numbers": sorted(re.findall(r"\d+", re.sub(r"`[^`]+`", "", body))),
    }


# --- telling the languages apart --------------------------------------------------------------


@pytest.mark.parametrize("question", ENGLISH_QUESTIONS)
def test_ordinary_english_questions_are_never_taken_for_hinglish(question):
    assert not looks_hinglish(question)
    assert language_from_messages(ask(question)) == "en"


@pytest.mark.parametrize("question", HINGLISH_QUESTIONS)
def test_typical_hinglish_questions_are_recognised(question):
    assert looks_hinglish(question)
    assert language_from_messages(ask(question)) == "hinglish"


@pytest.mark.parametrize("text", ["samjhao", "Token kya?", "TTFT ka ke ki ko se", "kya kya kya"])
def test_one_marker_word_is_not_enough(text):
    # Postpositions (ka, ke, ki, ko, se) all together count as one marker, and a word repeated
    # is still one word.
    assert not looks_hinglish(text)


def test_the_system_prompt_instruction_switches_the_language():
    assert language_from_messages(in_hinglish_chat("What is a token?")) == "hinglish"
    assert language_from_messages(ask("What is a token?")) == "en"
    # Only the exact instruction counts, not a system prompt that merely mentions Hinglish.
    other = [{"role": "system", "content": "Students may write in Hinglish."}, *ask("Hi")]
    assert language_from_messages(other) == "en"


def test_the_latest_user_message_decides_without_an_instruction():
    conversation = [
        *ask("Token kya hota hai?"),
        {"role": "assistant", "content": "## Token kya hota hai?"},
        *ask("And what is SSE?"),
    ]
    assert language_from_messages(conversation) == "en"
    assert language_from_messages(conversation[:1]) == "hinglish"
    assert language_from_messages([]) == DEFAULT_LANGUAGE


def test_content_given_as_parts_is_read():
    parts = [{"type": "text", "text": "TTFT ka matlab"}, {"type": "text", "text": "samjhao"}]
    assert language_from_messages([{"role": "user", "content": parts}]) == "hinglish"
    system = [{"role": "system", "content": [{"type": "text", "text": HINGLISH_INSTRUCTION}]}]
    assert language_from_messages([*system, *ask("hello")]) == "hinglish"


# --- codes, instruction, labels ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("en", "en"),
        ("English", "en"),
        (" EN ", "en"),
        ("hinglish", "hinglish"),
        ("Hinglish", "hinglish"),
        ("roman-urdu", "hinglish"),
        ("Roman Urdu", "hinglish"),
        ("roman_urdu", "hinglish"),
        ("URDU", "hinglish"),
        ("hi-Latn", "hinglish"),
        ("Hinglish / Roman Urdu", "hinglish"),
    ],
)
def test_parse_language_accepts_the_usual_names(value, code):
    assert parse_language(value) == code


@pytest.mark.parametrize("value", ["fr", "hindi", "", "en-US", None, 3])
def test_parse_language_rejects_unknown_names_and_says_what_works(value):
    with pytest.raises(ValueError, match=r"Unknown language .*use en .* hinglish"):
        parse_language(value)


def test_instruction_is_only_needed_for_hinglish():
    assert instruction("en") is None
    assert instruction("hinglish") == HINGLISH_INSTRUCTION == instruction("roman-urdu")
    assert "Hinglish / Roman Urdu" in HINGLISH_INSTRUCTION
    with pytest.raises(ValueError):
        instruction("klingon")


def test_labels_are_complete_in_both_languages():
    assert set(LABELS) == set(LANGUAGES) == {"en", "hinglish"}
    for language in LANGUAGES:
        assert set(LABELS[language]) == LABEL_KEYS
        assert all(text.strip() for text in LABELS[language].values())
    assert label("compare", "en") == "Normal vs streaming"
    assert label("total_time", "hinglish") == "Kul waqt"


def test_labels_fall_back_to_english():
    assert label("timeline", "fr") == "Latency timeline"
    with pytest.raises(KeyError):
        label("no_such_label", "en")


# --- the Hinglish lessons ---------------------------------------------------------------------


def test_every_english_lesson_has_a_hinglish_counterpart():
    assert [lesson.name for lesson in lessons("hinglish")] == [
        lesson.name for lesson in lessons("en")
    ]
    assert len(lessons("en")) == 11, "the English set is read without the hinglish folder"


@pytest.mark.parametrize("name", [lesson.name for lesson in lessons("en")])
def test_a_hinglish_lesson_keeps_the_structure_code_and_keywords(name):
    english, hinglish = lesson_named(name, "en"), lesson_named(name, "hinglish")
    assert shape(hinglish.body) == shape(english.body)
    assert set(english.keywords) <= set(hinglish.keywords), "English questions still match"
    assert hinglish.title != english.title
    assert looks_hinglish(hinglish.body)


def test_the_untrusted_output_lesson_carries_the_same_html_lines():
    def html_lines(language: str) -> list[str]:
        body = lesson_named("09-untrusted-output.md", language).body
        return [line for line in body.splitlines() if line.startswith("<")]

    assert len(html_lines("en")) == 2 and html_lines("hinglish") == html_lines("en")
    answer = choose_answer(in_hinglish_chat("Show me an HTML injection demo"))
    assert all(line in answer for line in html_lines("en"))


# --- the offline model answering in Hinglish --------------------------------------------------


@pytest.mark.parametrize(("question", "name"), HINGLISH_LESSON_QUESTIONS)
def test_a_hinglish_question_gets_the_hinglish_lesson(question, name):
    lesson = lesson_named(name, "hinglish")
    assert choose_answer(ask(question)).endswith(f"## {lesson.title}\n\n{lesson.body}")


@pytest.mark.parametrize(("question", "name"), ENGLISH_LESSON_QUESTIONS)
def test_an_english_question_in_a_hinglish_chat_gets_the_hinglish_lesson(question, name):
    lesson = lesson_named(name, "hinglish")
    assert choose_answer(in_hinglish_chat(question)).endswith(f"## {lesson.title}\n\n{lesson.body}")
    english = lesson_named(name, "en")
    assert f"## {english.title}\n\n" in choose_answer(ask(question))


def test_the_first_hinglish_answer_carries_a_hinglish_notice_and_later_ones_do_not():
    first = choose_answer(ask("Token kya hota hai?"))
    assert not first.startswith(DEMO_NOTICE)
    assert first.startswith("*Yeh streamchat ka offline demo model hai")
    later = choose_answer(
        [*ask("hi"), {"role": "assistant", "content": "hello"}, *ask("Token kya hota hai?")]
    )
    assert later.startswith("## Token kya hota hai?")


def test_greetings_and_unknown_questions_list_the_hinglish_topics():
    greeting = choose_answer(in_hinglish_chat("Salaam"))
    unknown = choose_answer(ask("France ki capital kya hai?"))
    for answer in (greeting, unknown):
        assert "Main in topics par baat kar sakta hoon:" in answer
        assert all(f"- **{lesson.title}**" in answer for lesson in lessons("hinglish"))
    assert "Main ek scripted demo model hoon" in unknown


@pytest.mark.parametrize("kind", GUARDRAIL_DEMO_KINDS)
def test_hinglish_guardrail_demos_keep_the_demo_value_in_the_middle(kind):
    answer = choose_answer(ask(HINGLISH_DEMO_QUESTIONS[kind]))
    assert answer.startswith("*Yeh streamchat")
    demo = guardrail_demo(kind, "hinglish")
    assert answer.endswith(demo) and demo != guardrail_demo(kind)
    position = answer.index(DEMO_VALUES[kind])
    assert 50 < position < len(answer) - 100
    assert choose_answer(in_hinglish_chat(f"show me a guardrail demo with a {kind}")).endswith(
        guardrail_demo(kind, "hinglish")
    )


@pytest.mark.parametrize("kind", [k for k in GUARDRAIL_DEMO_KINDS if k != "moderation"])
def test_the_default_guardrails_catch_the_hinglish_demo_value_and_nothing_else(kind):
    demo = guardrail_demo(kind, "hinglish")
    violations = check_text(build_policies(GuardrailConfig()), demo)
    assert len(violations) == 1
    assert demo[violations[0].start :].startswith(DEMO_VALUES[kind])


def test_the_hinglish_moderation_demo_is_flagged():
    assert flagged_categories(guardrail_demo("moderation", "hinglish")) == ["harassment"]


def test_hinglish_lessons_pass_the_default_guardrails():
    policies = build_policies(GuardrailConfig())
    for lesson in lessons("hinglish"):
        assert check_text(policies, f"{lesson.title}\n\n{lesson.body}") == [], lesson.name
        assert flagged_categories(lesson.body) == [], lesson.name
    assert check_text(policies, choose_answer(ask("France ki capital kya hai?"))) == []


def test_a_hinglish_continuation_repeats_a_few_words_then_goes_on():
    follow_up = check_continuation(ask("Token kya hota hai?"), 260)
    # Asked in Hinglish too.
    hinglish_follow_up = [*follow_up[:-1], {"role": "user", "content": "Jawab jaari rakho"}]
    assert choose_answer(hinglish_follow_up) == choose_answer(follow_up)
