"""Resilience end to end: the real app over Socket.IO against the offline model's faults."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from streamchat.core.relay import CONTINUE_INSTRUCTION
from streamchat.offline import OfflineServer
from streamchat.offline.lessons import choose_answer
from tests.harness import (
    AppProcess,
    ChainlitClient,
    click_action,
    strip_footer,
    upstream_ended,
    upstream_requests,
)

pytestmark = pytest.mark.integration

QUESTION = "What is a token?"


@pytest.fixture(scope="module")
def upstream() -> Iterator[OfflineServer]:
    with OfflineServer(tokens_per_second=150, first_token_delay_ms=10) as server:
        yield server


@pytest.fixture(scope="module")
def app(upstream: OfflineServer) -> Iterator[AppProcess]:
    env = {
        "OPENAI_BASE_URL": upstream.base_url,
        "STREAM_RETRIES": "2",
        "STREAM_RESUMES": "1",
        "STREAM_STALL_S": "0.5",
        "SYSTEM_PROMPT": "",
    }
    with AppProcess(env) as running:
        yield running


@pytest.fixture
async def chat(app: AppProcess) -> AsyncIterator[ChainlitClient]:
    client = await ChainlitClient(app.url).connect()
    yield client
    await client.close()


async def test_rate_limit_then_success_completes_after_waiting_retry_after(chat, upstream):
    upstream.records.clear()
    answer = await chat.ask(f"{QUESTION} [fault: 429 retry_after=1 times=1]")
    records = await upstream_requests(upstream, 2, within=5)
    assert records[1].started_at - records[0].ended_at >= 1.0, "waited at least Retry-After"
    assert answer.errors() == []
    assert strip_footer(answer.final_assistant_text()) == choose_answer(records[1].messages)
    assert "2 attempts" in answer.final_assistant_text()


async def test_server_error_three_times_gives_one_clear_message_and_retry_works(chat, upstream):
    upstream.records.clear()
    answer = await chat.ask(f"{QUESTION} [fault: 500 times=3]")
    assert len(await upstream_requests(upstream, 3, within=10)) == 3
    errors = answer.errors()
    assert len(errors) == 1 and "had an error (500)" in errors[0]
    assert any(e.name == "action" and e.data["name"] == "retry" for e in answer.events)
    mark = len(chat.events)
    await click_action(chat.app_url, chat, "retry")
    retried = await chat.finished(mark)
    assert retried.final_assistant_text(), "the same question, asked again, is answered"
    assert (await chat.ask(QUESTION)).errors() == []


async def test_drop_mid_answer_is_resumed_into_one_answer_without_repeats(chat, upstream):
    upstream.records.clear()
    answer = await chat.ask(f"{QUESTION} [fault: drop after=15 times=1]")
    first, second = await upstream_requests(upstream, 2, within=10)
    intended = choose_answer(first.messages)
    final = answer.final_assistant_text()
    assert strip_footer(final) == intended, "one answer, no duplicated words at the seam"
    assert "Resumed once" in final
    assert second.messages[-1]["content"] == CONTINUE_INSTRUCTION
    assert answer.errors() == []
    assert len(answer.named("stream_start")) == 1, "the resume streams into the same message"


async def test_stall_is_detected_then_resumed(chat, upstream):
    upstream.records.clear()
    answer = await chat.ask(f"{QUESTION} [fault: stall after=10 times=1]")
    first, _ = await upstream_requests(upstream, 2, within=10)
    assert await upstream_ended(first, within=2) and first.client_disconnected, (
        "the stalled response was closed"
    )
    assert strip_footer(answer.final_assistant_text()) == choose_answer(first.messages)
    assert "Resumed once" in answer.final_assistant_text()


async def test_malformed_chunk_is_resumed(chat, upstream):
    upstream.records.clear()
    answer = await chat.ask(f"{QUESTION} [fault: malformed after=12 times=1]")
    first, _ = await upstream_requests(upstream, 2, within=10)
    assert strip_footer(answer.final_assistant_text()) == choose_answer(first.messages)


async def test_drop_twice_marks_the_answer_interrupted_and_continue_finishes_it(chat, upstream):
    upstream.records.clear()
    answer = await chat.ask(f"{QUESTION} [fault: drop after=12 times=2]")
    first, _ = await upstream_requests(upstream, 2, within=10)
    final = answer.final_assistant_text()
    assert "Interrupted: connection lost after" in final
    partial = strip_footer(final)
    intended = choose_answer(first.messages)
    assert intended.startswith(partial) and partial != intended
    assert any("connection to the provider was lost" in e for e in answer.errors())

    mark = len(chat.events)
    await click_action(chat.app_url, chat, "continue")
    continued = await chat.finished(mark)
    rest = strip_footer(continued.final_assistant_text())
    assert partial + rest == intended, "Continue appends exactly the missing part"
