"""Guardrails end to end: the real app over Socket.IO, the offline model's guardrail demos."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from streamchat.offline import OfflineServer
from streamchat.offline.lessons import choose_answer
from tests.harness import (
    AppProcess,
    ChainlitClient,
    strip_footer,
    upstream_ended,
    upstream_requests,
)

pytestmark = pytest.mark.integration

EMAIL = "jane.doe@example.com"


@pytest.fixture(scope="module")
def upstream() -> Iterator[OfflineServer]:
    with OfflineServer(tokens_per_second=60, first_token_delay_ms=10) as server:
        yield server


@pytest.fixture(scope="module")
def stop_app(upstream: OfflineServer) -> Iterator[AppProcess]:
    with AppProcess({"OPENAI_BASE_URL": upstream.base_url}) as app:
        yield app


@pytest.fixture(scope="module")
def redact_app(upstream: OfflineServer) -> Iterator[AppProcess]:
    env = {"OPENAI_BASE_URL": upstream.base_url, "GUARDRAIL_ACTION": "redact"}
    with AppProcess(env) as app:
        yield app


async def test_pii_in_the_answer_stops_the_stream_and_never_reaches_the_ui(stop_app, upstream):
    chat = await ChainlitClient(stop_app.url).connect()
    try:
        upstream.records.clear()
        answer = await chat.ask("Show me a guardrail demo with an email")
        record = (await upstream_requests(upstream, 1, within=5))[0]
        assert await upstream_ended(record, within=2) and record.client_disconnected
        assert not record.completed, "the upstream request was closed, not read to the end"
        everything = json.dumps([e.data for e in chat.events])
        assert EMAIL not in everything and "jane" not in everything
        final = answer.final_assistant_text()
        assert "Stopped: the answer contained an email address." in final
        intended = choose_answer(record.messages)
        assert intended.startswith(strip_footer(final))
        # The history holds what was shown: the next request carries the safe prefix only.
        upstream.records.clear()
        await chat.ask("What is a token?")
        nxt = (await upstream_requests(upstream, 1, within=5))[0]
        assert EMAIL not in json.dumps(nxt.messages)
    finally:
        await chat.close()


@pytest.mark.parametrize(
    ("kind", "label"),
    [("card", "[card number removed]"), ("phone", "[phone number removed]")],
)
async def test_redact_replaces_the_match_and_the_answer_goes_on(redact_app, upstream, kind, label):
    chat = await ChainlitClient(redact_app.url).connect()
    try:
        upstream.records.clear()
        answer = await chat.ask(f"Show me a guardrail demo with a {kind}")
        record = (await upstream_requests(upstream, 1, within=5))[0]
        final = strip_footer(answer.final_assistant_text())
        assert label in final
        assert final.endswith("easy to tell from a complete one."), "the answer went on"
        assert "4111" not in json.dumps([e.data for e in chat.events])
        assert record.completed
    finally:
        await chat.close()


async def test_a_message_with_pii_is_not_sent_upstream(stop_app, upstream):
    chat = await ChainlitClient(stop_app.url).connect()
    try:
        upstream.records.clear()
        answer = await chat.ask("my email is bob.smith@example.org, what is a token?")
        assert any(
            "Your message was not sent: it contains an email address." in e for e in answer.errors()
        )
        assert upstream.records.all() == []
    finally:
        await chat.close()


async def test_guardrails_switched_off_in_the_chat_settings_let_the_text_through(
    stop_app, upstream
):
    chat = await ChainlitClient(stop_app.url).connect()
    try:
        await chat.change_settings({"guardrails_on": False})
        answer = await chat.ask("Show me a guardrail demo with an email")
        assert EMAIL in answer.final_assistant_text()
    finally:
        await chat.close()
