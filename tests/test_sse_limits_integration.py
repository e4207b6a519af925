"""The SSE endpoint under the hosted settings: the same rate limits as the chat (429 with
Retry-After), the same history budget (older messages left out, said in the `done` event) and
the same default answer language."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import pytest

from streamchat.languages import HINGLISH_INSTRUCTION
from streamchat.offline import OfflineServer
from tests.harness import AppProcess, upstream_requests
from tests.test_sse_integration import Received, read_all

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def upstream() -> Iterator[OfflineServer]:
    with OfflineServer(tokens_per_second=400, first_token_delay_ms=5) as server:
        yield server


@pytest.fixture(scope="module")
def app(upstream: OfflineServer) -> Iterator[AppProcess]:
    env = {
        "OPENAI_BASE_URL": upstream.base_url,
        "RATE_LIMIT_RPM": "2",
        "MAX_HISTORY_TOKENS": "300",
        "ANSWER_LANGUAGE": "hinglish",
    }
    with AppProcess(env) as running:
        yield running


async def test_history_budget_language_and_rate_limit(app, upstream):
    old = [
        {"role": "user", "content": "first question " + "x" * 600},
        {"role": "assistant", "content": "first answer " + "y" * 600},
        {"role": "user", "content": "What is a token?"},
    ]
    upstream.records.clear()
    async with httpx2.AsyncClient(base_url=app.url, timeout=60) as http:
        events = await read_all(http, "POST", "/api/stream", json={"messages": old})
        sent = (await upstream_requests(upstream, 1))[0].messages
        assert [m["role"] for m in sent] == ["system", "user"], "the old exchange was left out"
        assert HINGLISH_INSTRUCTION in sent[0]["content"]
        done = next(e for e in events if isinstance(e, Received) and e.event == "done")
        assert done.data["history_note"] == (
            "2 earlier messages were left out to fit the model's context."
        )

        await read_all(http, "GET", "/api/stream", params={"prompt": "hi"})
        refused = await http.get("/api/stream", params={"prompt": "hi again"})
        assert refused.status_code == 429
        assert refused.json()["error"]["message"].startswith(
            "You have sent 2 messages in the last minute. Try again in"
        )
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert len(upstream.records.all()) == 2
