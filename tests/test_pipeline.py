"""One pipeline behind every face: the checks on what people submit are written once, and the
runs it builds screen the input, guard the answer and coalesce what reaches the sink."""

from __future__ import annotations

import pytest

from streamchat.chat import ChatOptions, ChatSession
from streamchat.core.errors import ConfigError
from streamchat.core.sinks import MemorySink
from streamchat.core.types import ChatMessage, ChatRequest, EndReason
from streamchat.pipeline import (
    Pipeline,
    check_guardrail_files,
    check_model_name,
    check_system_prompt,
    check_temperature,
    length_problem,
)
from streamchat.runtime import settings_or_error
from streamchat.settings import guardrail_config
from tests.scripted import ScriptedSource

REQUEST = ChatRequest(messages=(ChatMessage("user", "q"),), model="m")
EMAIL = "jane.doe@example.com"


@pytest.mark.parametrize("value", ["hot", 2.5, -0.1, "nan", "inf", None])
def test_a_temperature_outside_0_to_2_is_refused_naming_what_was_asked(value):
    with pytest.raises(ConfigError, match=r"^temperature must be a number between 0 and 2"):
        check_temperature(value, name="temperature")


@pytest.mark.parametrize(("value", "expected"), [("1.2", 1.2), (0, 0.0), (2, 2.0)])
def test_a_temperature_from_0_to_2_is_taken_from_text_or_number(value, expected):
    assert check_temperature(value) == expected


def test_length_problem_names_the_text_the_length_and_the_limit():
    assert length_problem("The prompt", "x" * 10, 10) is None
    assert length_problem("The prompt", "x" * 11, 10) == (
        "The prompt is too long (11 characters; the limit is 10)."
    )


def test_model_name_and_system_prompt_checks():
    assert check_model_name(" m ") == "m"
    with pytest.raises(ConfigError, match="cannot be empty"):
        check_model_name("  ")
    with pytest.raises(ConfigError, match="system prompt is too long"):
        check_system_prompt("x" * 20_001)


async def test_screen_refuses_a_message_over_the_limit_before_anything_goes_upstream():
    source = ScriptedSource(["never"])
    pipeline = Pipeline(source, max_input_chars=5)
    sink = MemorySink()
    refused = await pipeline.screen("x" * 6, sink)
    assert refused is not None and refused.error is not None
    assert "Your message is too long (6 characters; the limit is 5)" in refused.error.user_message
    assert source.requests == [] and sink.result is refused
    assert await pipeline.screen("x" * 5, MemorySink()) is None


async def test_screen_refuses_a_message_the_guardrails_block():
    pipeline = Pipeline(ScriptedSource(["never"]), guardrails=guardrail_config({}))
    refused = await pipeline.screen(f"mail {EMAIL}", MemorySink())
    assert refused is not None and refused.violation is not None
    assert refused.reason is EndReason.GUARDRAIL
    off = guardrail_config({"GUARDRAILS": "off"})
    assert await pipeline.screen(f"mail {EMAIL}", MemorySink(), off) is None


async def test_a_run_from_the_pipeline_guards_the_answer_with_its_guardrails():
    text = f"Write to {EMAIL} for help, and more text after it so the hold-back passes."
    pipeline = Pipeline(ScriptedSource([text]), guardrails=guardrail_config({}))
    sink = MemorySink()
    result = await pipeline.run(sink, stream_id="s1").run(REQUEST)
    assert result.reason is EndReason.GUARDRAIL and result.stream_id == "s1"
    assert "@" not in sink.text
    unguarded = Pipeline(ScriptedSource([text])).run(MemorySink())
    assert unguarded.guard is None


async def test_a_chat_answers_through_its_pipeline():
    pipeline = Pipeline(ScriptedSource(["hello"]), max_input_chars=3)
    chat = ChatSession.on(pipeline, ChatOptions(model="m", temperature=0, system_prompt=""))
    assert chat.pipeline is pipeline and chat.source is pipeline.source
    refused = await chat.answer("long", MemorySink())
    assert refused.error is not None and chat.history.turns == ()
    assert (await chat.answer("hi", MemorySink())).text == "hello"


def test_unstreamed_needs_a_provider():
    assert Pipeline(ScriptedSource([])).unstreamed() is None


def test_an_unusable_pattern_file_is_a_configuration_error_when_the_runtime_is_built(tmp_path):
    bad = tmp_path / "patterns.txt"
    bad.write_text("(unclosed\n")
    environ = {"GUARDRAILS": "regex", "GUARDRAIL_REGEX_FILE": str(bad)}
    runtime, problem = settings_or_error(environ)
    assert runtime is None and isinstance(problem, ConfigError)
    assert "GUARDRAIL_REGEX_FILE" in str(problem) and "line 1" in str(problem)
    missing = {"GUARDRAILS": "pii", "GUARDRAIL_BLOCKLIST_FILE": str(tmp_path / "nope.txt")}
    assert settings_or_error(missing)[0] is not None  # blocklist is not among the policies
    with pytest.raises(ConfigError, match="GUARDRAIL_BLOCKLIST_FILE: cannot read"):
        check_guardrail_files(guardrail_config({"GUARDRAIL_BLOCKLIST_FILE": str(bad) + ".gone"}))
