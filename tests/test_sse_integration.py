"""The SSE endpoint on the running app (same port as the UI), over real HTTP.

The app points at a standalone offline server so the tests can see what the upstream saw.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx2
import pytest

from streamchat.offline import OfflineServer
from streamchat.offline.lessons import choose_answer
from tests.harness import AppProcess, upstream_ended, upstream_requests

pytestmark = pytest.mark.integration


@dataclass
class Received:
    id: str
    event: str
    data: dict


async def sse_events(response: httpx2.Response) -> AsyncIterator[Received | str]:
    """Parse an SSE response; yields Received events and ':' comments (as strings)."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "event" in fields:
                yield Received(fields.get("id", ""), fields["event"], json.loads(fields["data"]))
            fields = {}
        elif line.startswith(":"):
            yield line
        else:
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value


async def read_all(client: httpx2.AsyncClient, method: str, url: str, **kwargs) -> list:
    async with client.stream(method, url, **kwargs) as response:
        assert response.status_code == 200, await response.aread()
        return [item async for item in sse_events(response)]


def text_of(events: list) -> str:
    return "".join(e.data["text"] for e in events if isinstance(e, Received) and e.event == "token")


@pytest.fixture(scope="module")
def upstream() -> Iterator[OfflineServer]:
    with OfflineServer(tokens_per_second=100, first_token_delay_ms=10) as server:
        yield server


@pytest.fixture(scope="module")
def app(upstream: OfflineServer) -> Iterator[AppProcess]:
    env = {
        "OPENAI_BASE_URL": upstream.base_url,
        "STREAM_RETRIES": "0",
        "MAX_INPUT_CHARS": "200",
        "SSE_GRACE_S": "0.5",
        "SSE_KEEPALIVE_S": "0.1",
        "STREAM_FLUSH_MS": "0",
    }
    with AppProcess(env) as running:
        yield running


@pytest.fixture
async def client(app: AppProcess) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=app.url, timeout=30) as http:
        yield http


async def test_get_answers_with_an_event_stream_not_the_ui_page(client, upstream):
    upstream.records.clear()
    async with client.stream("GET", "/api/stream", params={"prompt": "What is a token?"}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["cache-control"] == "no-cache"
        assert resp.headers["x-accel-buffering"] == "no"
        raw = [line async for line in resp.aiter_lines()]
    assert raw[0] == "retry: 3000"
    events = [line for line in raw if line.startswith("event: ")]
    assert events[-2:] == ["event: metrics", "event: done"]
    ids = [line[4:] for line in raw if line.startswith("id: ")]
    stream_id = ids[0].split(":")[0]
    assert ids == [f"{stream_id}:{n}" for n in range(1, len(ids) + 1)]


async def test_token_events_reassemble_to_the_upstream_answer(client, upstream):
    upstream.records.clear()
    events = await read_all(client, "GET", "/api/stream", params={"prompt": "What is SSE?"})
    record = (await upstream_requests(upstream, 1, within=5))[0]
    assert text_of(events) == choose_answer(record.messages)
    metrics = next(e for e in events if isinstance(e, Received) and e.event == "metrics").data
    assert metrics["completion_tokens"] > 10 and metrics["ttft_s"] is not None


async def test_post_with_messages_sends_the_conversation(client, upstream):
    upstream.records.clear()
    messages = [
        {"role": "user", "content": "What is a token?"},
        {"role": "assistant", "content": "A piece of text."},
        {"role": "user", "content": "And backpressure?"},
    ]
    events = await read_all(client, "POST", "/api/stream", json={"messages": messages})
    record = (await upstream_requests(upstream, 1, within=5))[0]
    assert [m["content"] for m in record.messages[-3:]] == [m["content"] for m in messages]
    assert text_of(events) == choose_answer(record.messages)


@pytest.mark.parametrize("cut", [1, 5, 20])
async def test_reconnecting_with_last_event_id_gives_exactly_the_remainder(client, cut):
    async with client.stream("GET", "/api/stream", params={"prompt": "Explain backpressure"}) as r:
        first: list[Received] = []
        async for item in sse_events(r):
            if isinstance(item, Received):
                first.append(item)
            if len(first) == cut:
                break
    # The first connection is closed; resume from the last id we saw, with a different query.
    rest = await read_all(
        client,
        "GET",
        "/api/stream",
        params={"prompt": "ignored when resuming"},
        headers={"Last-Event-ID": first[-1].id},
    )
    received = first + [e for e in rest if isinstance(e, Received)]
    sequence = [int(e.id.split(":")[1]) for e in received]
    assert sequence == list(range(1, len(sequence) + 1)), "no duplicates, no gaps"
    assert received[-1].event == "done"
    assert {e.id.split(":")[0] for e in received} == {first[0].id.split(":")[0]}


async def test_abandoned_stream_closes_the_upstream_after_the_grace_period():
    with OfflineServer(tokens_per_second=10, first_token_delay_ms=5) as slow:
        # This test needs its own app pointed at the slow upstream.
        env = {"OPENAI_BASE_URL": slow.base_url, "SSE_GRACE_S": "0.3", "STREAM_FLUSH_MS": "0"}
        with AppProcess(env) as own:
            async with (
                httpx2.AsyncClient(base_url=own.url, timeout=30) as http,
                http.stream("GET", "/api/stream", params={"prompt": "hi"}) as r,
            ):
                async for item in sse_events(r):
                    if isinstance(item, Received) and item.event == "token":
                        break
            record = (await upstream_requests(slow, 1, within=5))[0]
            assert await upstream_ended(record, within=5), (
                "upstream closed once the grace period passed"
            )
            assert record.client_disconnected and not record.completed


async def test_keepalive_comments_flow_while_the_answer_is_slow():
    with OfflineServer(tokens_per_second=50, first_token_delay_ms=800) as slow:
        env = {"OPENAI_BASE_URL": slow.base_url, "SSE_KEEPALIVE_S": "0.1"}
        with AppProcess(env) as own:
            async with httpx2.AsyncClient(base_url=own.url, timeout=30) as http:
                events = await read_all(http, "GET", "/api/stream", params={"prompt": "hi"})
    first_token = next(i for i, e in enumerate(events) if isinstance(e, Received))
    assert events[:first_token].count(": keep-alive") >= 3


async def test_delete_stops_a_running_stream():
    with OfflineServer(tokens_per_second=10, first_token_delay_ms=5) as slow:
        env = {"OPENAI_BASE_URL": slow.base_url}
        with AppProcess(env) as own:
            async with httpx2.AsyncClient(base_url=own.url, timeout=30) as http:
                async with http.stream("GET", "/api/stream", params={"prompt": "hi"}) as r:
                    events = sse_events(r)
                    async for item in events:
                        if isinstance(item, Received):
                            stream_id = item.id.split(":")[0]
                            break
                    stopped = await http.delete(f"/api/stream/{stream_id}")
                    assert stopped.status_code == 200
                    rest = [e async for e in events if isinstance(e, Received)]
                assert rest[-1].event == "done"
                assert rest[-1].data["reason"] == "stopped_by_user"
                record = (await upstream_requests(slow, 1, within=5))[0]
                assert await upstream_ended(record, within=1.0) and record.client_disconnected
                missing = await http.delete("/api/stream/nope")
                assert missing.status_code == 404


@pytest.mark.parametrize(
    ("method", "kwargs", "status", "fragment"),
    [
        ("GET", {"params": {}}, 400, "prompt is missing"),
        ("GET", {"params": {"prompt": "x" * 201}}, 413, "too long"),
        ("GET", {"params": {"prompt": "hi", "model": "nope"}}, 404, "Unknown model 'nope'"),
        ("GET", {"params": {"prompt": "hi", "temperature": "hot"}}, 400, "temperature"),
        ("POST", {"content": b"{not json"}, 400, "not valid JSON"),
        ("POST", {"json": {"messages": []}}, 400, "non-empty list"),
        ("POST", {"json": {"messages": [{"role": "user"}]}}, 400, "messages[0]"),
        (
            "POST",
            {"json": {"messages": [{"role": "assistant", "content": "x"}]}},
            400,
            "last message must be the user's",
        ),
        ("GET", {"headers": {"Last-Event-ID": "gone:3"}}, 404, "no longer available"),
    ],
)
async def test_bad_requests_get_clear_json_errors(client, method, kwargs, status, fragment):
    response = await client.request(method, "/api/stream", **kwargs)
    assert response.status_code == status
    assert fragment in response.json()["error"]["message"]


async def test_metrics_endpoint_counts_the_streams(client):
    await read_all(client, "GET", "/api/stream", params={"prompt": "What is a token?"})
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert 'streamchat_streams_total{reason="complete"}' in metrics.text
    assert "streamchat_first_token_seconds_bucket" in metrics.text


@pytest.mark.parametrize("last_event_id", ["x:\u00b2", "x:" + "9" * 5000, "x:\u0661"])
async def test_crafted_event_ids_are_an_unknown_stream_not_a_server_error(client, last_event_id):
    response = await client.get("/api/stream", params={"last_event_id": last_event_id})
    assert response.status_code == 404
    assert "no longer available" in response.json()["error"]["message"]


async def test_an_empty_last_event_id_starts_a_stream(client):
    events = await read_all(
        client, "GET", "/api/stream", params={"prompt": "What is a token?", "last_event_id": ""}
    )
    assert text_of(events) and events[-1].event == "done"


async def test_a_lone_surrogate_in_a_message_is_replaced_and_answered(client, upstream):
    upstream.records.clear()
    body = '{"messages": [{"role": "user", "content": "What is a token? \\ud800"}]}'
    events = await read_all(
        client, "POST", "/api/stream", content=body, headers={"Content-Type": "application/json"}
    )
    assert events[-1].event == "done" and events[-1].data["reason"] == "complete"
    record = (await upstream_requests(upstream, 1, within=5))[0]
    assert record.messages[-1]["content"] == "What is a token? \ufffd"


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "chunked"])
async def test_a_huge_body_is_refused_before_it_is_read_whole(app, client, declare_length):
    chunk = b"a" * 65_536
    total = 800  # 50 MiB
    start, end = b'{"messages": [{"role": "user", "content": "', b'"}]}'

    async def body() -> AsyncIterator[bytes]:
        yield start
        for _ in range(total):
            yield chunk
        yield end

    headers = {"Content-Type": "application/json"}
    if declare_length:
        headers["Content-Length"] = str(len(start) + total * len(chunk) + len(end))
    peak_before = peak_memory_kib(app.pid)
    response = await client.post("/api/stream", content=body(), headers=headers)
    assert response.status_code == 413, response.text
    assert "too large" in response.json()["error"]["message"]
    grown_mib = (peak_memory_kib(app.pid) - peak_before) / 1024
    assert grown_mib < 20, f"the app's peak memory grew by {grown_mib:.0f} MiB"


def peak_memory_kib(pid: int) -> int:
    """The process's peak resident memory (VmHWM), in KiB."""
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1])


async def first_event(http: httpx2.AsyncClient, prompt: str) -> tuple[Received, httpx2.Headers]:
    async with http.stream("GET", "/api/stream", params={"prompt": prompt}) as response:
        async for item in sse_events(response):
            if isinstance(item, Received):
                return item, response.headers
    raise AssertionError("the stream sent no event")


async def test_a_stream_id_alone_neither_resumes_nor_stops_someone_elses_stream(app):
    async with (
        httpx2.AsyncClient(base_url=app.url, timeout=30) as owner,
        httpx2.AsyncClient(base_url=app.url, timeout=30) as stranger,
    ):
        first, headers = await first_event(owner, "Explain backpressure")
        stream_id = first.id.split(":")[0]
        token = headers["x-stream-token"]
        assert owner.cookies["streamchat_stream"] == token
        assert headers["access-control-expose-headers"] == "X-Stream-Token"
        for attempt in (
            stranger.get("/api/stream", headers={"Last-Event-ID": first.id}),
            stranger.get("/api/stream", params={"last_event_id": first.id}),
            stranger.get(
                "/api/stream",
                headers={"Last-Event-ID": first.id, "X-Stream-Token": "x" * 32},
            ),
            stranger.delete(f"/api/stream/{stream_id}"),
        ):
            assert (await attempt).status_code == 404
        # The owner resumes by its cookie; a client without cookies by the token.
        rest = await read_all(owner, "GET", "/api/stream", headers={"Last-Event-ID": first.id})
        assert rest[-1].event == "done" and rest[-1].data["reason"] == "complete"
        again = await read_all(
            stranger,
            "GET",
            "/api/stream",
            headers={"Last-Event-ID": first.id, "X-Stream-Token": token},
        )
        assert [e.id for e in again if isinstance(e, Received)] == [
            e.id for e in rest if isinstance(e, Received)
        ]
        # Stopped by its owner, a stream is cancelled: the log says so without its id.
        stopped, _ = await first_event(owner, "Explain backpressure")
        stopped_id = stopped.id.split(":")[0]
        assert (await owner.delete(f"/api/stream/{stopped_id}")).status_code == 200
        log = app.log()
        assert "SSE stream was cancelled" in log
        assert stream_id not in log and stopped_id not in log, "a stream id was logged"


SECRET = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcd"


@pytest.mark.parametrize("role", ["user", "assistant", "system"])
async def test_every_message_a_client_sends_is_screened_not_only_the_last(client, upstream, role):
    upstream.records.clear()
    messages = [
        {"role": role, "content": f"Remember this key: {SECRET}"},
        {"role": "user", "content": "What is a token?"},
    ]
    events = await read_all(client, "POST", "/api/stream", json={"messages": messages})
    named = [e for e in events if isinstance(e, Received)]
    assert [e.data["policy"] for e in named if e.event == "guardrail"] == ["secrets"]
    assert SECRET not in json.dumps([e.data for e in named])
    assert upstream.records.all() == [], "a refused conversation is not sent upstream"


async def test_a_clients_system_message_follows_the_servers_system_prompt(client, upstream):
    upstream.records.clear()
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is a token?"},
    ]
    await read_all(client, "POST", "/api/stream", json={"messages": messages})
    record = (await upstream_requests(upstream, 1, within=5))[0]
    roles = [(m["role"], m["content"]) for m in record.messages]
    assert roles[0][0] == "system" and roles[0][1] != "Answer briefly."
    assert roles[1:] == [("system", "Answer briefly."), ("user", "What is a token?")]


async def test_a_resume_after_the_done_event_answers_204_so_eventsource_stops(client):
    events = await read_all(client, "GET", "/api/stream", params={"prompt": "What is a token?"})
    done = events[-1]
    assert done.event == "done"
    again = await client.get("/api/stream", headers={"Last-Event-ID": done.id})
    assert again.status_code == 204 and again.content == b""
    stream_id, seq = done.id.rsplit(":", 1)
    before_done = await read_all(
        client, "GET", "/api/stream", headers={"Last-Event-ID": f"{stream_id}:{int(seq) - 1}"}
    )
    assert [e.event for e in before_done if isinstance(e, Received)] == ["done"]
