"""Guardrails end to end: the real app over Socket.IO, the offline model's guardrail demos."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx2
import pytest

from streamchat.offline import OfflineServer
from streamchat.offline.lessons import choose_answer
from streamchat.offline.moderation import DEMO_PHRASE
from tests.harness import (
    AppProcess,
    ChainlitClient,
    strip_footer,
    upstream_ended,
    upstream_requests,
)
from tests.test_sse_integration import Received, read_all, text_of

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
    ("kind", "label", "fragment"),
    [
        ("card", "[card number removed]", "4111"),
        ("phone", "[phone number removed]", "555 0123"),
        ("secret", "[secret removed]", "Q7xLm"),
    ],
)
async def test_redact_replaces_the_match_and_the_answer_goes_on(
    redact_app, upstream, kind, label, fragment
):
    chat = await ChainlitClient(redact_app.url).connect()
    try:
        upstream.records.clear()
        answer = await chat.ask(f"Show me a guardrail demo with a {kind}")
        record = (await upstream_requests(upstream, 1, within=5))[0]
        final = strip_footer(answer.final_assistant_text())
        assert label in final
        assert final.endswith("easy to tell from a complete one."), "the answer went on"
        assert fragment not in json.dumps([e.data for e in chat.events])
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


# --- the moderation policy ---------------------------------------------------------------------

MODERATION = "pii,secrets,blocklist,moderation"


@pytest.fixture(scope="module")
def moderated_offline_app() -> Iterator[AppProcess]:
    """The offline default: the app's own demo model also judges the answers."""
    with AppProcess({"GUARDRAILS": MODERATION}) as app:
        yield app


async def test_moderation_stops_the_demo_before_the_flagged_sentence(moderated_offline_app):
    chat = await ChainlitClient(moderated_offline_app.url).connect()
    try:
        answer = await chat.ask("Show me a guardrail demo with moderation")
        final = answer.final_assistant_text()
        assert (
            "Stopped: the answer contained content the moderation check flagged (harassment)."
            in final
        )
        shown = strip_footer(final)
        assert shown.rstrip().endswith("arrive token by token.")
        everything = json.dumps([e.data for e in chat.events])
        assert DEMO_PHRASE not in everything and "worthless" not in everything
        # Buffered mode shows the text at once, then cuts it back to before the sentence.
        await chat.change_settings({"guardrail_mode": "buffered"})
        answer = await chat.ask("Show me a guardrail demo with moderation")
        retracted = strip_footer(answer.final_assistant_text())
        assert retracted.rstrip().endswith("arrive token by token.") and "value" not in retracted
        assert any(DEMO_PHRASE in text for _, text in answer.progress()), "shown, then retracted"
        assert "flagged (harassment)" in answer.final_assistant_text()
    finally:
        await chat.close()


async def test_a_failing_moderation_endpoint_blocks_by_default(upstream):
    env = {
        "OPENAI_BASE_URL": upstream.base_url,
        "GUARDRAILS": MODERATION,
        "GUARDRAIL_MODERATION_BASE_URL": upstream.base_url,
    }
    upstream.moderation_fault = "error"
    try:
        with AppProcess(env) as app:
            chat = await ChainlitClient(app.url).connect()
            try:
                upstream.records.clear()
                answer = await chat.ask("What is a token?")
                assert any(
                    "the moderation check could not be completed" in e for e in answer.errors()
                )
                assert upstream.records.all() == [], "nothing unchecked went upstream"
            finally:
                await chat.close()
            assert "moderation check failed" in app.log() and "Traceback" not in app.log()
    finally:
        upstream.moderation_fault = None


async def test_on_error_allow_lets_answers_through_and_counts_the_errors(upstream):
    env = {
        "OPENAI_BASE_URL": upstream.base_url,
        "GUARDRAILS": MODERATION,
        "GUARDRAIL_MODERATION_BASE_URL": upstream.base_url,
        "GUARDRAIL_ON_ERROR": "allow",
    }
    upstream.moderation_fault = "error"
    try:
        with AppProcess(env) as app:
            chat = await ChainlitClient(app.url).connect()
            try:
                answer = await chat.ask("What is a token?")
                assert "token" in strip_footer(answer.final_assistant_text()).lower()
                assert not answer.errors()
            finally:
                await chat.close()
            async with httpx2.AsyncClient(base_url=app.url) as http:
                metrics = (await http.get("/metrics")).text
            counted = [
                line
                for line in metrics.splitlines()
                if line.startswith('streamchat_guardrail_check_errors_total{policy="moderation"}')
            ]
            assert counted and float(counted[0].split()[-1]) >= 2
    finally:
        upstream.moderation_fault = None


async def test_moderation_applies_to_the_sse_endpoint_too(moderated_offline_app):
    async with httpx2.AsyncClient(base_url=moderated_offline_app.url, timeout=30) as http:
        prompt = "Show me a guardrail demo with moderation"
        events = await read_all(http, "GET", "/api/stream", params={"prompt": prompt})
    named = [e for e in events if isinstance(e, Received)]
    guardrail = [e.data for e in named if e.event == "guardrail"]
    assert guardrail and guardrail[0]["policy"] == "moderation"
    assert DEMO_PHRASE not in json.dumps([e.data for e in named])
    assert text_of(events).rstrip().endswith("arrive token by token.")
