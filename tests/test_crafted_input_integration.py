"""Crafted input in the chat: a lone surrogate (JSON can carry one, UTF-8 cannot) is answered
like any other character, and the chat goes on answering afterwards."""

from __future__ import annotations

import pytest

from streamchat.offline import OfflineServer
from tests.harness import AppProcess, ChainlitClient, upstream_requests

pytestmark = pytest.mark.integration


async def test_a_lone_surrogate_does_not_break_the_chat_for_later_messages():
    with (
        OfflineServer(tokens_per_second=500, first_token_delay_ms=5) as upstream,
        AppProcess({"OPENAI_BASE_URL": upstream.base_url, "STREAM_RETRIES": "0"}) as app,
    ):
        chat = await ChainlitClient(app.url).connect()
        try:
            first = await chat.ask("What is a token? \ud800")
            assert first.errors() == [] and first.final_assistant_text()
            later = await chat.ask("And what is backpressure?")
            assert later.errors() == [] and later.final_assistant_text()
            records = await upstream_requests(upstream, 2)
            sent = [m["content"] for m in records[-1].messages if m["role"] == "user"]
            assert sent[-2:] == ["What is a token? \ufffd", "And what is backpressure?"]
        finally:
            await chat.close()
