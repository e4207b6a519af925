"""Shared answers end to end: the real app on loopback, chats over Socket.IO and the SSE
endpoint, against the offline model, which records every upstream request."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx2
import pytest

from streamchat.offline import OfflineServer
from streamchat.offline.lessons import choose_answer
from tests.databases import redis_server
from tests.harness import AppProcess, ChainlitClient, strip_footer
from tests.test_cli import cli_env, run_cli
from tests.test_sse_integration import Received, read_all, text_of

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def upstream() -> Iterator[OfflineServer]:
    # Slow enough that thirty questions sent together all arrive while the first streams.
    with OfflineServer(tokens_per_second=40, first_token_delay_ms=500) as server:
        yield server


@pytest.fixture(scope="module")
def app(upstream: OfflineServer) -> Iterator[AppProcess]:
    env = {
        "OPENAI_BASE_URL": upstream.base_url,
        "SHARED_ANSWERS": "on",
        "ANSWER_CACHE_TTL_S": "600",
        "SYSTEM_PROMPT": "",
        "STREAM_RETRIES": "0",
    }
    with AppProcess(env) as running:
        yield running


def answers_upstream(upstream: OfflineServer, question: str) -> list:
    return [r for r in upstream.records.all() if r.stream and question in str(r.messages[-1])]


async def test_thirty_identical_questions_make_one_upstream_request_and_thirty_exact_answers(
    app, upstream
):
    question = "What is a token? (thirty at once)"
    clients = await asyncio.gather(*(ChainlitClient(app.url).connect() for _ in range(30)))
    try:
        marks = await asyncio.gather(*(client.send(question) for client in clients))
        answers = await asyncio.gather(
            *(client.finished(mark) for client, mark in zip(clients, marks, strict=True))
        )
    finally:
        await asyncio.gather(*(client.close() for client in clients))
    (record,) = answers_upstream(upstream, question)
    intended = choose_answer(record.messages)
    finals = [answer.final_assistant_text() for answer in answers]
    assert [strip_footer(final) for final in finals] == [intended] * 30
    marked = [final for final in finals if "· shared" in final or "· from cache" in final]
    assert len(marked) == 29, "every answer but the first says it was shared"

    # Asked again once it is complete: from the cache, with no upstream request.
    client = await ChainlitClient(app.url).connect()
    try:
        again = await client.ask(question)
    finally:
        await client.close()
    assert strip_footer(again.final_assistant_text()) == intended
    assert "· from cache" in again.final_assistant_text()
    assert len(answers_upstream(upstream, question)) == 1
    metrics = httpx2.get(f"{app.url}/metrics", timeout=10).text
    assert "streamchat_cache_hits_total" in metrics
    assert "streamchat_shared_answers_total" in metrics


async def test_one_viewers_stop_leaves_the_others_answer_whole(app, upstream):
    question = "What is streaming? (one stops)"
    stays, stops = await asyncio.gather(*(ChainlitClient(app.url).connect() for _ in range(2)))
    try:
        mark_stays = await stays.send(question)
        mark_stops = await stops.send(question)
        await stops.wait_for(lambda e: e.name == "stream_start", start=mark_stops)
        await stops.stop()
        stopped = await stops.finished(mark_stops)
        kept = await stays.finished(mark_stays)
    finally:
        await asyncio.gather(stays.close(), stops.close())
    (record,) = answers_upstream(upstream, question)
    intended = choose_answer(record.messages)
    assert strip_footer(kept.final_assistant_text()) == intended
    assert strip_footer(stopped.final_assistant_text()) != intended
    assert not record.client_disconnected, "the upstream went on for the other viewer"


async def test_sse_requests_share_and_differ_by_temperature(app, upstream):
    question = "What is a chunk? (over SSE)"
    same = {"messages": [{"role": "user", "content": question}], "temperature": 0.5}
    other = {**same, "temperature": 0.9}
    async with httpx2.AsyncClient(base_url=app.url, timeout=60) as http:
        results = await asyncio.gather(
            *(read_all(http, "POST", "/api/stream", json=body) for body in (same, same, other))
        )
    texts = [text_of(events) for events in results]
    assert texts[0] == texts[1] and texts[0]
    for events in results:
        assert [e for e in events if isinstance(e, Received)][-1].event == "done"
    assert len(answers_upstream(upstream, question)) == 2, "one for 0.5 (shared), one for 0.9"


async def test_an_answer_complete_on_one_replica_is_replayed_by_another_through_redis(upstream):
    question = "What is a token? (two replicas)"
    with redis_server() as redis_url:
        env = {
            "OPENAI_BASE_URL": upstream.base_url,
            "REDIS_URL": redis_url,
            "SHARED_ANSWERS": "on",
            "ANSWER_CACHE_TTL_S": "600",
            "SYSTEM_PROMPT": "",
        }
        with AppProcess(env) as one, AppProcess(env) as two:
            answers = []
            for replica in (one, two):
                client = await ChainlitClient(replica.url).connect()
                try:
                    answers.append((await client.ask(question)).final_assistant_text())
                finally:
                    await client.close()
    (record,) = answers_upstream(upstream, question)
    assert [strip_footer(text) for text in answers] == [choose_answer(record.messages)] * 2
    assert "from cache" not in answers[0] and "· from cache" in answers[1]


def test_the_console_replays_an_answer_another_console_kept_in_redis(upstream):
    question = "What is a token? (console)"
    with redis_server() as redis_url:
        env = cli_env(
            OPENAI_BASE_URL=upstream.base_url,
            REDIS_URL=redis_url,
            ANSWER_CACHE_TTL_S="600",
            SYSTEM_PROMPT="",
        )
        first_done = run_cli(question, env=env)
        second_done = run_cli(question, env=env)
    assert first_done.returncode == second_done.returncode == 0, second_done.stderr
    (record,) = answers_upstream(upstream, question)
    assert first_done.stdout == second_done.stdout == choose_answer(record.messages) + "\n"
    assert "from cache" not in first_done.stderr and "from cache" in second_done.stderr


async def test_identical_questions_on_two_replicas_while_one_streams_make_one_upstream_request(
    upstream,
):
    question = "What is a token? (two replicas, live)"
    over_sse = "What is a chunk? (two replicas, live)"
    with redis_server() as redis_url:
        env = {
            "OPENAI_BASE_URL": upstream.base_url,
            "REDIS_URL": redis_url,
            "SHARED_ANSWERS": "on",
            "ANSWER_CACHE_TTL_S": "0",  # no cache: only a live answer can be shared
            "SYSTEM_PROMPT": "",
            "STREAM_RETRIES": "0",
        }
        with AppProcess(env) as one, AppProcess(env) as two:
            replicas = [one, two, one, two, one, two, one, two]
            clients = await asyncio.gather(*(ChainlitClient(r.url).connect() for r in replicas))
            try:
                # The first asks on replica one; once its answer streams, the rest ask on both.
                first = await clients[0].send(question)
                await clients[0].wait_for(lambda e: e.name == "stream_token", start=first)
                marks = [first, *await asyncio.gather(*(c.send(question) for c in clients[1:]))]
                answers = await asyncio.gather(
                    *(c.finished(mark) for c, mark in zip(clients, marks, strict=True))
                )
            finally:
                await asyncio.gather(*(client.close() for client in clients))

            # Over SSE, the same body on each replica at once shares; another temperature not.
            same = {"messages": [{"role": "user", "content": over_sse}], "temperature": 0.5}
            warmer = {**same, "temperature": 0.9}
            sent = [(one, same), (two, same), (two, warmer)]
            async with httpx2.AsyncClient(timeout=60) as http:
                results = await asyncio.gather(
                    *(read_all(http, "POST", f"{r.url}/api/stream", json=b) for r, b in sent)
                )

    (record,) = answers_upstream(upstream, question)
    intended = choose_answer(record.messages)
    finals = [answer.final_assistant_text() for answer in answers]
    assert [strip_footer(final) for final in finals] == [intended] * len(replicas)
    assert "· shared" not in finals[0]
    assert all("· shared" in final for final in finals[1:]), "on either replica, shared"

    by_temperature = sorted(r.body["temperature"] for r in answers_upstream(upstream, over_sse))
    assert by_temperature == [0.5, 0.9], "one request for 0.5 (shared by two replicas), one for 0.9"
    texts = [text_of(events) for events in results]
    assert texts[0] == texts[1] and texts[0]
    for events in results:
        assert [e for e in events if isinstance(e, Received)][-1].event == "done"
