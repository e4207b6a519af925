"""The moderation policy: sentences judged off the hot path, hold and buffered semantics, the
GUARDRAIL_ON_ERROR rule, input checks, configuration, and the offline stand-in endpoint."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamchat.chat import ChatOptions, ChatSession
from streamchat.core.errors import ConfigError
from streamchat.core.metrics import ProcessMetrics
from streamchat.core.relay import StreamRun
from streamchat.core.sinks import MemorySink
from streamchat.core.types import ChatMessage, ChatRequest, EndReason
from streamchat.guardrails import build_guard, screen_input
from streamchat.guardrails.moderation import (
    Moderator,
    OpenAIModerationClient,
    SentenceSplitter,
    moderation_kind,
)
from streamchat.offline import OfflineServer
from streamchat.offline.moderation import DEMO_PHRASE, flagged_categories
from streamchat.settings import guardrail_config
from tests.scripted import ScriptedSource

REQUEST = ChatRequest(messages=(ChatMessage("user", "q"),), model="m")
CLEAN = "Streaming sends text as it is made. Each piece is small. "
BAD = "Then it says you worthless fool to the reader. "
AFTER = "And this part must never be shown. The end."


def tokens(text: str, size: int = 4) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


class FakeModeration:
    """Flags texts containing `bad`; each verdict waits for `release` (when given)."""

    def __init__(
        self,
        bad: str = "worthless fool",
        *,
        release: asyncio.Event | None = None,
        error: Exception | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self.bad = bad
        self.release = release
        self.error = error
        self.delay_s = delay_s
        self.seen: list[str] = []
        self.waiting = 0
        self._changed = asyncio.Condition()

    async def waiting_for(self, count: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.waiting >= count)

    async def categories(self, text: str) -> list[str]:
        self.seen.append(text)
        self.waiting += 1
        async with self._changed:
            self._changed.notify_all()
        try:
            if self.release is not None:
                await self.release.wait()
            if self.delay_s:
                await asyncio.sleep(self.delay_s)  # a slow moderation endpoint: not a wait
        finally:
            self.waiting -= 1
        if self.error is not None:
            raise self.error
        return ["harassment"] if self.bad in text else []


def run_with(
    client: FakeModeration,
    source: ScriptedSource,
    sink: MemorySink,
    *,
    mode: str = "hold",
    on_error: str = "block",
    timeout_s: float = 5.0,
    metrics: ProcessMetrics | None = None,
    errors: list[str] | None = None,
) -> StreamRun:
    config = guardrail_config({"GUARDRAIL_MODE": mode})
    moderator = Moderator(
        client,
        on_error=on_error,
        timeout_s=timeout_s,
        on_check_error=(errors if errors is not None else []).append,
    )
    return StreamRun(
        source,
        sink,
        guard=build_guard(config),
        moderator=moderator,
        metrics=metrics or ProcessMetrics(),
    )


# --- sentences --------------------------------------------------------------------------------


def test_sentences_end_at_punctuation_followed_by_space_or_at_a_line_break():
    splitter = SentenceSplitter()
    assert splitter.feed("Version 3.5 is out. It is") == ["Version 3.5 is out. "]
    assert splitter.feed(" fast! Really?") == ["It is fast! "]
    assert splitter.feed("\nA list:\n- one") == ["Really?\n", "A list:\n"]
    assert splitter.finish() == "- one"


def test_a_sentence_without_an_end_is_cut_at_a_space_before_the_cap():
    splitter = SentenceSplitter(max_chars=20)
    pieces = splitter.feed("word " * 10)
    assert pieces and all(len(p) <= 20 and p.endswith(" ") for p in pieces)
    assert "".join(pieces) + splitter.finish() == "word " * 10


@settings(max_examples=150, deadline=None)
@given(
    st.text(alphabet=st.sampled_from("ab .!?\n3"), max_size=300),
    st.lists(st.integers(min_value=1, max_value=9), max_size=60),
)
def test_sentences_are_a_lossless_cut_of_any_chunking(text, sizes):
    splitter = SentenceSplitter(max_chars=40)
    out: list[str] = []
    position = 0
    for size in sizes:
        out.extend(splitter.feed(text[position : position + size]))
        position += size
    out.extend(splitter.feed(text[position:]))
    assert "".join(out) + splitter.finish() == text
    assert all(len(piece) <= 40 for piece in out)


# --- the gate in the relay --------------------------------------------------------------------


async def test_hold_mode_never_shows_the_flagged_sentence_and_closes_upstream():
    client = FakeModeration()
    source = ScriptedSource(tokens(CLEAN + BAD + AFTER))
    sink = MemorySink()
    result = await run_with(client, source, sink).run(REQUEST)
    assert result.reason is EndReason.GUARDRAIL
    assert result.violation is not None
    assert result.violation.policy == "moderation"
    assert result.violation.kind == "moderation:harassment"
    assert result.violation.start == len(CLEAN)
    assert sink.text == CLEAN == result.text
    assert "worthless" not in "".join(sink.writes)
    assert source.closed.is_set()
    assert result.note() == (
        "Stopped: the answer contained content the moderation check flagged (harassment)."
    )


async def test_each_sentence_is_judged_with_the_previous_one_as_context():
    client = FakeModeration()
    sink = MemorySink()
    result = await run_with(client, ScriptedSource(tokens(CLEAN + AFTER)), sink).run(REQUEST)
    assert result.reason is EndReason.COMPLETE
    assert sink.text == CLEAN + AFTER
    assert client.seen[0] == "Streaming sends text as it is made. "
    assert client.seen[1] == "Streaming sends text as it is made. Each piece is small."


async def test_hold_mode_shows_nothing_before_its_verdict_but_keeps_reading_upstream():
    release = asyncio.Event()
    client = FakeModeration(release=release)
    source = ScriptedSource(tokens(CLEAN + AFTER))
    sink = MemorySink()
    task = asyncio.ensure_future(run_with(client, source, sink).run(REQUEST))
    # The whole answer arrives and every sentence goes for a verdict without waiting.
    await asyncio.wait_for(source.closed.wait(), 5)
    await asyncio.wait_for(client.waiting_for(4), 5)
    assert sink.text == ""
    release.set()
    result = await asyncio.wait_for(task, 5)
    assert result.reason is EndReason.COMPLETE and sink.text == CLEAN + AFTER


async def test_buffered_mode_shows_at_once_and_retracts_to_the_flagged_sentence():
    release = asyncio.Event()
    client = FakeModeration(release=release)
    source = ScriptedSource(tokens(CLEAN + BAD + AFTER), hang_after=30)
    sink = MemorySink()
    task = asyncio.ensure_future(run_with(client, source, sink, mode="buffered").run(REQUEST))
    await asyncio.wait_for(source.reached_hang.wait(), 5)
    # A slow verdict does not stall the stream: the text is on screen already.
    assert "worthless fool" in sink.text and client.waiting > 0
    release.set()
    # The upstream is silent (hanging), yet the flag ends the answer at once.
    result = await asyncio.wait_for(task, 5)
    assert result.reason is EndReason.GUARDRAIL
    assert sink.text == CLEAN == result.text
    assert source.closed.is_set()


async def test_a_failed_check_blocks_by_default_and_is_counted():
    client = FakeModeration(error=RuntimeError("boom"))
    errors: list[str] = []
    sink = MemorySink()
    run = run_with(client, ScriptedSource(tokens(CLEAN + AFTER)), sink, errors=errors)
    result = await run.run(REQUEST)
    assert result.reason is EndReason.GUARDRAIL and result.violation is not None
    assert result.violation.kind == "check_error"
    assert sink.text == ""
    assert result.note() == (
        "Stopped: the moderation check could not be completed, so the rest is withheld."
    )
    assert run.guard is not None and run.guard.record.check_errors >= 1
    assert errors and set(errors) == {"moderation"}


async def test_a_failed_check_lets_text_through_with_on_error_allow():
    client = FakeModeration(error=RuntimeError("boom"))
    sink = MemorySink()
    run = run_with(client, ScriptedSource(tokens(CLEAN + AFTER)), sink, on_error="allow")
    result = await run.run(REQUEST)
    assert result.reason is EndReason.COMPLETE and sink.text == CLEAN + AFTER
    assert run.guard is not None and run.guard.record.check_errors == 4


async def test_a_check_that_times_out_counts_as_failed():
    client = FakeModeration(delay_s=5)
    sink = MemorySink()
    run = run_with(client, ScriptedSource(tokens(CLEAN)), sink, timeout_s=0.1)
    result = await asyncio.wait_for(run.run(REQUEST), 5)
    assert result.violation is not None and result.violation.kind == "check_error"


async def test_stop_drops_what_still_waits_for_a_verdict():
    release = asyncio.Event()
    client = FakeModeration(release=release)
    source = ScriptedSource(tokens(CLEAN + AFTER))
    sink = MemorySink()
    run = run_with(client, source, sink)
    task = asyncio.ensure_future(run.run(REQUEST))
    await asyncio.wait_for(source.closed.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sink.result is not None and sink.result.reason is EndReason.STOPPED_BY_USER
    assert sink.text == "" == run.last_text
    assert run.gate is not None and not run.gate._pending


async def test_local_policies_still_run_first():
    client = FakeModeration()
    sink = MemorySink()
    text = "Mail jane.doe@example.com now. More text here to follow."
    result = await run_with(client, ScriptedSource(tokens(text)), sink).run(REQUEST)
    assert result.violation is not None and result.violation.kind == "email"
    assert sink.text == "Mail " and all("jane" not in seen for seen in client.seen)


# --- input ------------------------------------------------------------------------------------


async def test_a_flagged_message_is_not_sent_upstream():
    config = guardrail_config({"GUARDRAILS": "pii,moderation", "OPENAI_API_KEY": "sk-test"})
    moderator = Moderator(FakeModeration())
    violation = await screen_input(config, f"hey {DEMO_PHRASE}", moderator)
    assert violation is not None and violation.policy == "moderation"
    assert violation.input_message().startswith("Your message was not sent: it contains content")
    source = ScriptedSource(["never"])
    chat = ChatSession(
        source,
        ChatOptions(model="m", temperature=0.5, system_prompt=""),
        guardrails=config,
        moderator=moderator,
    )
    result = await chat.answer(f"hey {DEMO_PHRASE}", MemorySink())
    assert result.input_blocked and not source.requests and not chat.history.turns


def test_moderation_kinds_read_well():
    assert moderation_kind(["self-harm/intent"]) == "moderation:self-harm/intent"
    config = guardrail_config({"GUARDRAILS": "moderation", "OPENAI_API_KEY": "k"})
    assert config.moderated and config.enabled


# --- configuration ----------------------------------------------------------------------------


def test_moderation_goes_to_openai_with_an_openai_key():
    config = guardrail_config({"GUARDRAILS": "moderation", "OPENAI_API_KEY": "sk-x"})
    assert config.moderation_base_url == "https://api.openai.com/v1"
    assert config.moderation_api_key == "sk-x"
    assert config.moderation_model == "omni-moderation-latest"
    assert "sk-x" not in repr(config)


def test_moderation_offline_uses_the_demo_endpoint():
    config = guardrail_config({"GUARDRAILS": "moderation"})
    assert config.moderated and config.moderation_base_url is None


def test_moderation_with_another_provider_needs_its_own_endpoint():
    env = {"GUARDRAILS": "moderation", "OPENAI_BASE_URL": "http://localhost:11434/v1"}
    with pytest.raises(ConfigError, match="GUARDRAIL_MODERATION_BASE_URL"):
        guardrail_config(env)
    config = guardrail_config(
        {**env, "GUARDRAIL_MODERATION_BASE_URL": "https://api.openai.com/v1/"}
    )
    assert config.moderation_base_url == "https://api.openai.com/v1"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GUARDRAIL_ON_ERROR", "ignore"),
        ("GUARDRAIL_MODERATION_TIMEOUT_S", "0"),
        ("GUARDRAIL_MODERATION_TIMEOUT_S", "soon"),
        ("GUARDRAIL_MODERATION_BASE_URL", "api.openai.com"),
    ],
)
def test_bad_moderation_settings_name_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        guardrail_config({"GUARDRAILS": "moderation", name: value})


# --- the offline stand-in, through the openai SDK ---------------------------------------------


def test_demo_phrases_are_flagged_and_lessons_are_not():
    assert flagged_categories(f"Now: {DEMO_PHRASE.upper()}!") == ["harassment"]
    assert flagged_categories("A token is a piece of a word. Kill the process.") == []


async def test_the_sdk_reads_the_offline_moderation_endpoint(offline_server: OfflineServer):
    client = OpenAIModerationClient(base_url=offline_server.base_url, api_key=None)
    try:
        assert await client.categories(f"well, {DEMO_PHRASE}.") == ["harassment"]
        assert await client.categories("Streaming is fun.") == []
        moderator = Moderator(client, timeout_s=2)
        offline_server.moderation_fault = "error"
        verdict = await moderator.verdict("Streaming is fun.")
        assert verdict.error and verdict.kind == "check_error"
        offline_server.moderation_fault = "slow=3"
        moderator.timeout_s = 0.3
        verdict = await moderator.verdict("Streaming is fun.")
        assert verdict.error and verdict.kind == "check_error"
    finally:
        offline_server.moderation_fault = None
        await client.aclose()


def test_offline_server_rejects_an_unknown_moderation_fault():
    with pytest.raises(ValueError, match="moderation_fault"):
        OfflineServer(moderation_fault="sometimes")
