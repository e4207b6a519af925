"""Anonymous rate limits count per real client address: the connection's peer, or what a proxy
listed in FORWARDED_ALLOW_IPS says in X-Forwarded-For; never a header from anyone else."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import pytest

from streamchat.offline import OfflineServer
from tests.harness import AppProcess, ChainlitClient

pytestmark = pytest.mark.integration

QUESTION = "What is a token?"


@pytest.fixture(scope="module")
def upstream() -> Iterator[OfflineServer]:
    with OfflineServer(tokens_per_second=500, first_token_delay_ms=5) as server:
        yield server


def limited(upstream: OfflineServer, **extra: str) -> dict[str, str]:
    return {"OPENAI_BASE_URL": upstream.base_url, "RATE_LIMIT_RPM": "1", **extra}


async def ask_from(app: AppProcess, address: str) -> list[str]:
    chat = await ChainlitClient(app.url, headers={"X-Forwarded-For": address}).connect()
    try:
        return (await chat.ask(QUESTION)).errors()
    finally:
        await chat.close()


async def stream_status(app: AppProcess, address: str) -> int:
    async with (
        httpx2.AsyncClient(base_url=app.url, timeout=30) as http,
        http.stream(
            "GET",
            "/api/stream",
            params={"prompt": QUESTION},
            headers={"X-Forwarded-For": address},
        ) as response,
    ):
        await response.aread()
        return response.status_code


async def test_chat_visitors_behind_a_trusted_proxy_each_have_their_own_limit(upstream):
    with AppProcess(limited(upstream, FORWARDED_ALLOW_IPS="127.0.0.1")) as app:
        assert await ask_from(app, "203.0.113.1") == []
        refused = await ask_from(app, "203.0.113.1")
        assert refused and refused[0].startswith("You have sent 1 messages in the last minute")
        # Another visitor is not blocked by the first one's limit.
        assert await ask_from(app, "203.0.113.2") == []
        # Over SSE, the same visitor is the same address: faces share the visitor's count.
        assert await stream_status(app, "203.0.113.2") == 429
        assert await stream_status(app, "203.0.113.3") == 200


async def test_forwarded_for_from_loopback_is_not_believed_by_default(upstream):
    with AppProcess(limited(upstream)) as app:
        assert await stream_status(app, "198.51.100.1") == 200
        # A new address claimed in a header is still the same loopback client.
        assert await stream_status(app, "198.51.100.2") == 429
        errors = await ask_from(app, "198.51.100.3")
        assert errors and errors[0].startswith("You have sent 1 messages in the last minute")
