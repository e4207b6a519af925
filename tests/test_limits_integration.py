"""Rate limits in the running app over Socket.IO: a clear message with the wait time and nothing
sent upstream; concurrent answers per user; tokens per day; and two app processes sharing their
limits through Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from streamchat.offline import OfflineServer
from tests.databases import redis_server
from tests.harness import AppProcess, ChainlitClient, upstream_requests

pytestmark = pytest.mark.integration

QUESTION = "What is a token?"


@pytest.fixture(scope="module")
def upstream() -> Iterator[OfflineServer]:
    with OfflineServer(tokens_per_second=300, first_token_delay_ms=5) as server:
        yield server


async def test_requests_per_minute_refuses_with_the_wait_and_sends_nothing(upstream):
    env = {"OPENAI_BASE_URL": upstream.base_url, "RATE_LIMIT_RPM": "2"}
    with AppProcess(env) as app:
        chat = await ChainlitClient(app.url).connect()
        try:
            upstream.records.clear()
            await chat.ask(QUESTION)
            await chat.ask(QUESTION)
            refused = await chat.ask(QUESTION)
            (error,) = refused.errors()
            assert error.startswith("You have sent 2 messages in the last minute. Try again in")
            assert len(await upstream_requests(upstream, 2)) == 2
            assert len(upstream.records.all()) == 2, "the refused message was not sent"
        finally:
            await chat.close()


async def test_one_answer_at_a_time_per_address_and_a_daily_token_budget(upstream):
    env = {
        "OPENAI_BASE_URL": upstream.base_url,
        "RATE_LIMIT_CONCURRENT": "1",
        "RATE_LIMIT_TOKENS_PER_DAY": "500",
        "OFFLINE_TPS": "300",
    }
    slow = OfflineServer(tokens_per_second=80, first_token_delay_ms=5)
    with slow, AppProcess({**env, "OPENAI_BASE_URL": slow.base_url}) as app:
        first = await ChainlitClient(app.url).connect()
        second = await ChainlitClient(app.url).connect()  # same address: same limits
        try:
            mark = await first.send(QUESTION)
            await first.wait_for(lambda e: e.name == "stream_token", start=mark)
            refused = await second.ask(QUESTION)
            assert refused.errors() == [
                "You already have an answer streaming. Wait for one to finish, or stop it, "
                "then send your message again."
            ]
            await first.stop()
            await first.finished(mark)
            # The stopped answer's slot is free again; answers are charged until the budget
            # is spent, then the next message is refused until midnight UTC.
            answer = await second.ask("hello")
            assert answer.final_assistant_text() and not answer.errors()
            errors: list[str] = []
            for _ in range(3):
                errors = (await second.ask(QUESTION, within=90)).errors()
                if errors:
                    break
            assert errors and errors[0].startswith(
                "You have used today's 500 tokens. The limit resets in"
            )
        finally:
            await first.close()
            await second.close()


async def test_two_app_processes_share_their_limits_through_redis(upstream):
    with redis_server() as url:
        env = {"OPENAI_BASE_URL": upstream.base_url, "RATE_LIMIT_RPM": "2", "REDIS_URL": url}
        with AppProcess(env) as one, AppProcess(env) as two:
            a = await ChainlitClient(one.url).connect()
            b = await ChainlitClient(two.url).connect()
            try:
                assert not (await a.ask(QUESTION)).errors()
                assert not (await b.ask(QUESTION)).errors()
                refused = await a.ask(QUESTION)
                assert refused.errors()[0].startswith("You have sent 2 messages")
            finally:
                await a.close()
                await b.close()
