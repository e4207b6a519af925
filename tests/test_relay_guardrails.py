"""Guardrails inside the relay: a violation stops the answer and closes the upstream, never
reaching the sink; redact continues; buffered retracts; the guard spans the resume seam; a
blocked user message is never sent upstream."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator

import pytest

from streamchat.chat import ChatOptions, ChatSession
from streamchat.core.errors import StreamBroken
from streamchat.core.relay import Resilience, StreamRun
from streamchat.core.sinks import MemorySink
from streamchat.core.types import ChatMessage, ChatRequest, Delta, EndReason
from streamchat.guardrails import build_guard
from streamchat.settings import guardrail_config
from tests.scripted import RecordingSleep, ScriptedSource, SequenceSource
from tests.waiting import eventually

REQUEST = ChatRequest(messages=(ChatMessage("user", "q"),), model="m")
EMAIL = "jane.doe@example.com"


def tokens(text: str, size: int = 3) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def guard(**env: str):
    return build_guard(guardrail_config(env))


async def test_violation_stops_the_answer_closes_upstream_and_never_reaches_the_sink():
    text = f"Write to {EMAIL} for help, and here is a lot more text after it."
    source = ScriptedSource(tokens(text))
    sink = MemorySink()
    result = await StreamRun(source, sink, guard=guard()).run(REQUEST)
    assert result.reason is EndReason.GUARDRAIL
    assert result.violation is not None and result.violation.kind == "email"
    assert sink.text == "Write to " == result.text
    assert all("jane" not in w and "@" not in w for w in sink.writes)
    assert source.closed.is_set()
    assert result.note() == "Stopped: the answer contained an email address."


async def test_redact_continues_with_labels():
    text = f"Write to {EMAIL} for help. That is all for now, thanks for asking."
    sink = MemorySink()
    result = await StreamRun(
        ScriptedSource(tokens(text)), sink, guard=guard(GUARDRAIL_ACTION="redact")
    ).run(REQUEST)
    assert result.reason is EndReason.COMPLETE
    assert sink.text == text.replace(EMAIL, "[email removed]")


async def test_buffered_mode_retracts_what_was_shown():
    text = "A" * 30 + f" then {EMAIL} shows up, and the stream goes on for a while more."
    sink = MemorySink()
    run = StreamRun(
        ScriptedSource(tokens(text, 2)),
        sink,
        guard=guard(GUARDRAIL_MODE="buffered", GUARDRAIL_BUFFER_CHARS="20"),
    )
    result = await run.run(REQUEST)
    assert result.reason is EndReason.GUARDRAIL
    assert "jane" in "".join(sink.writes), "buffered mode showed it before the check"
    assert sink.text == text[: text.index(EMAIL)] == result.text


async def test_a_violation_split_across_the_resume_seam_is_still_caught():
    before = "Contact us at jane.doe@exam"
    source = SequenceSource(
        ScriptedSource(tokens(before), fail_with=StreamBroken("lost", cause="dropped")),
        ScriptedSource(tokens("doe@example.com and more words follow here to the end.")),
    )
    sink = MemorySink()
    result = await StreamRun(
        source,
        sink,
        guard=guard(),
        resilience=Resilience(resumes=1),
        sleep=RecordingSleep(),
        rng=random.Random(0),
    ).run(REQUEST)
    assert result.reason is EndReason.GUARDRAIL and result.violation is not None
    assert result.violation.kind == "email"
    assert sink.text == "Contact us at "
    assert result.stats.resumes == 1


async def test_a_blocked_user_message_is_never_sent_and_not_kept():
    source = ScriptedSource(["never"])
    chat = ChatSession(
        source,
        ChatOptions(model="m", temperature=0, system_prompt=""),
        guardrails=guardrail_config({}),
    )
    sink = MemorySink()
    result = await chat.answer("my card is 4111 1111 1111 1111", sink)
    assert source.requests == []
    assert result.input_blocked and sink.result is result
    assert result.note() == "Your message was not sent: it contains a credit card number."
    assert chat.history.turns == ()


async def test_guardrails_can_be_switched_off_per_chat_unless_locked():
    options = ChatOptions(model="m", temperature=0, system_prompt="", guardrails_on=False)
    chat = ChatSession(ScriptedSource([EMAIL]), options, guardrails=guardrail_config({}))
    assert not chat.guardrail_config.enabled
    locked = guardrail_config({"GUARDRAILS_LOCKED": "true"})
    chat = ChatSession(ScriptedSource([EMAIL]), options, guardrails=locked)
    assert chat.guardrail_config.enabled


async def test_a_message_over_the_length_limit_is_refused_before_sending():
    source = ScriptedSource(["never"])
    chat = ChatSession(
        source, ChatOptions(model="m", temperature=0, system_prompt=""), max_input_chars=10
    )
    sink = MemorySink()
    result = await chat.answer("x" * 11, sink)
    assert source.requests == [] and chat.history.turns == ()
    assert result.error is not None
    assert "too long (11 characters; the limit is 10)" in result.error.user_message
    assert (await chat.answer("x" * 10, MemorySink())).text == "never"


async def test_redact_through_the_relay_never_writes_a_fragment_of_a_private_key():
    body = "\n".join(("MIIEow" + "Kq8vLm2ZxR4tYw9PbN3c" * 3)[:64] for _ in range(10))
    key = f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----"
    text = f"Here is the key:\n{key}\nKeep it safe, and rotate it if it was shared."
    sink = MemorySink()
    result = await StreamRun(
        ScriptedSource(tokens(text, 5)), sink, guard=guard(GUARDRAIL_ACTION="redact")
    ).run(REQUEST)
    assert result.reason is EndReason.COMPLETE
    assert sink.text == text.replace(key, "[secret removed]")
    written = "".join(sink.writes)
    assert "MIIEow" not in written and "PRIVATE KEY" not in written


class PausingSource:
    """Sends `before` back to back, then waits for `go` (a provider that pauses), then `after`."""

    def __init__(self, before: list[str], after: list[str]) -> None:
        self.before, self.after = before, after
        self.go = asyncio.Event()
        self.closed = asyncio.Event()

    async def stream(self, request: ChatRequest, *, pace=None) -> AsyncGenerator[Delta, None]:
        try:
            index = 0
            for piece in self.before:
                yield Delta(text=piece, index=index)
                index += 1
            await self.go.wait()
            for piece in self.after:
                yield Delta(text=piece, index=index)
                index += 1
            yield Delta(text="", index=index, finish_reason="stop")
        finally:
            self.closed.set()


def batching_guard(**env: str):
    checked = guard(**env)
    checked.check_every_s = 0.01  # a batch waits this long for more text
    return checked


async def test_a_batch_waiting_when_the_provider_pauses_is_checked_and_shown_without_more_text():
    source = PausingSource(
        ["Hello there, ", "how are you today? ", "this part is safe to show. "], ["Done."]
    )
    sink = MemorySink()
    run = asyncio.create_task(StreamRun(source, sink, guard=batching_guard()).run(REQUEST))
    # The second piece came right after the first, so the guard batched it; the provider now
    # says nothing until `go`, yet the safe text reaches the screen.
    await eventually(lambda: "this part" in sink.text, within=10, what="the batch shown")
    assert not run.done()
    source.go.set()
    result = await run
    assert result.reason is EndReason.COMPLETE
    assert sink.text == "Hello there, how are you today? this part is safe to show. Done."


async def test_a_violation_in_a_batch_checked_during_a_pause_is_never_shown_and_stops_the_answer():
    source = PausingSource(
        ["Hello there, ", "how are you today? ", f"mail {EMAIL} now. "], ["More."]
    )
    sink = MemorySink()
    relay = StreamRun(source, sink, guard=batching_guard())
    run = asyncio.create_task(relay.run(REQUEST))
    # Found while the provider is quiet, not when its next piece comes.
    await eventually(lambda: relay.guard.stopped, within=10, what="the batch checked")
    assert "@" not in sink.text
    source.go.set()
    result = await run
    assert result.reason is EndReason.GUARDRAIL
    assert result.violation is not None and result.violation.kind == "email"
    assert "@" not in sink.text and "More" not in sink.text
    assert source.closed.is_set()


async def test_stop_while_a_batch_waits_cancels_its_check():
    source = PausingSource(["Hello there, ", "how are you today? ", "this waits. "], [])
    sink = MemorySink()
    checked = batching_guard()
    checked.check_every_s = 60.0  # the batch is still waiting when Stop comes
    task = asyncio.create_task(StreamRun(source, sink, guard=checked).run(REQUEST))
    await eventually(lambda: checked.unchecked, within=10, what="a batch waiting")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sink.result is not None and sink.result.reason is EndReason.STOPPED_BY_USER
    assert source.closed.is_set()
    assert [t for t in asyncio.all_tasks() if "_check_unchecked" in repr(t)] == []
