"""Reasoning models through the running app, over real HTTP and Socket.IO: the offline model's
three wire forms, and a scripted upstream for the edges (a tag split at every character, an
unclosed tag, a think-only reply, a guardrail match inside the thinking)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import httpx2
import pytest

from streamchat.offline import OfflineServer
from streamchat.offline.lessons import choose_answer, choose_thinking
from tests.agent_upstream import LoopbackServer, asks_for_models, read_request
from tests.harness import AppProcess, ChainlitClient, upstream_ended, upstream_requests
from tests.test_sse_integration import Received, read_all, sse_events

pytestmark = pytest.mark.integration

QUESTION = "How do reasoning models think?"
EMAIL = "jane.doe@example.com"


def of(events: list, name: str) -> str:
    return "".join(e.data["text"] for e in events if isinstance(e, Received) and e.event == name)


# --- a scripted upstream ------------------------------------------------------------------


def chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
    body = {"id": "s", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class ScriptedUpstream(LoopbackServer):
    """An OpenAI-compatible chat endpoint on loopback that answers every request with the
    next scripted list of deltas, written a few bytes at a time (so reads split anywhere)."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[list[dict[str, object]]] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head, _ = await read_request(reader)
            if asks_for_models(head):
                body = b'{"object":"list","data":[{"id":"scripted","object":"model"}]}'
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
                return
            unscripted: list[dict[str, object]] = [{"content": "nothing scripted"}]
            script = self.scripts.pop(0) if self.scripts else unscripted
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
            )
            stream = b"".join(chunk(d) for d in script) + chunk({}, "stop") + b"data: [DONE]\n\n"
            for at in range(0, len(stream), 7):
                writer.write(stream[at : at + 7])
                await writer.drain()
        finally:
            writer.close()


def deltas(field: str, text: str, size: int = 1) -> list[dict[str, object]]:
    return [{field: text[i : i + size]} for i in range(0, len(text), size)]


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def scripted_app(scripted: ScriptedUpstream) -> Iterator[AppProcess]:
    env = {
        "OPENAI_BASE_URL": scripted.base_url,
        "OPENAI_API_KEY": "sk-scripted",
        "OPENAI_MODEL": "scripted",
        "STREAM_RETRIES": "0",
        "STREAM_FLUSH_MS": "0",
        "GUARDRAILS": "pii",
    }
    with AppProcess(env) as running:
        yield running


@pytest.fixture
async def scripted_client(scripted_app: AppProcess) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=scripted_app.url, timeout=30) as http:
        yield http


TAGGED = "<think>Two and two: four.</think>\n\nIt is 4."


async def test_a_think_tag_split_at_every_character_never_reaches_the_answer(
    scripted, scripted_client
):
    scripted.scripts.append(deltas("content", TAGGED, 1))
    events = await read_all(scripted_client, "GET", "/api/stream", params={"prompt": "2+2?"})
    assert of(events, "token") == "It is 4."
    assert of(events, "reasoning") == "Two and two: four."


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_thinking_fields_stream_as_reasoning_events(scripted, scripted_client, field):
    scripted.scripts.append(deltas(field, "Hmm, four.", 3) + deltas("content", "It is 4.", 2))
    events = await read_all(scripted_client, "GET", "/api/stream", params={"prompt": "2+2?"})
    assert (of(events, "reasoning"), of(events, "token")) == ("Hmm, four.", "It is 4.")
    names = [e.event for e in events if isinstance(e, Received)]
    assert names.index("token") > max(i for i, n in enumerate(names) if n == "reasoning")


async def test_an_unclosed_tag_and_a_think_only_reply_say_no_answer_came(scripted, scripted_client):
    scripted.scripts.append(deltas("content", "<think>Still thinking when it ends", 4))
    scripted.scripts.append(deltas("reasoning_content", "Only thinking here", 4))
    unclosed = await read_all(scripted_client, "GET", "/api/stream", params={"prompt": "a"})
    only = await read_all(scripted_client, "GET", "/api/stream", params={"prompt": "b"})
    assert of(unclosed, "token") == "" and of(unclosed, "reasoning").startswith("Still")
    assert "still thinking" in unclosed[-1].data["note"]
    assert of(only, "token") == "" and of(only, "reasoning") == "Only thinking here"
    assert only[-1].data["note"] == "The model only thought: no answer came."


async def test_a_guardrail_match_inside_thinking_never_reaches_the_client(
    scripted, scripted_client
):
    thinking = f"I could mail {EMAIL} and then answer with a long explanation of it all."
    scripted.scripts.append(deltas("reasoning_content", thinking, 2) + deltas("content", "No."))
    events = await read_all(scripted_client, "GET", "/api/stream", params={"prompt": "mail?"})
    raw = json.dumps([e.data for e in events if isinstance(e, Received)])
    assert "jane" not in raw and "@example" not in raw
    assert [e.data["policy"] for e in events if getattr(e, "event", "") == "guardrail"] == ["pii"]
    assert of(events, "token") == ""


# --- the offline model, in each wire form ---------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[OfflineServer]:
    with OfflineServer(tokens_per_second=400, first_token_delay_ms=5) as server:
        yield server


@pytest.fixture(scope="module")
def app(upstream: OfflineServer) -> Iterator[AppProcess]:
    env = {"OPENAI_BASE_URL": upstream.base_url, "STREAM_RETRIES": "2", "STREAM_FLUSH_MS": "0"}
    with AppProcess(env) as running:
        yield running


@pytest.fixture
async def client(app: AppProcess) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=app.url, timeout=30) as http:
        yield http


@pytest.mark.parametrize("wire", ["", "[reasoning: reasoning] ", "[reasoning: think] "])
async def test_the_offline_models_thinking_streams_apart_in_every_wire_form(client, upstream, wire):
    upstream.records.clear()
    events = await read_all(client, "GET", "/api/stream", params={"prompt": wire + QUESTION})
    (record,) = await upstream_requests(upstream, 1)
    assert of(events, "reasoning") == choose_thinking(record.messages, asked=bool(wire))
    assert of(events, "token") == choose_answer(record.messages)
    metrics = next(e.data for e in events if getattr(e, "event", "") == "metrics")
    assert metrics["reasoning_tokens"] > 0
    assert metrics["first_reasoning_s"] < metrics["ttft_s"]


async def test_a_stream_resumed_while_thinking_misses_nothing_and_repeats_nothing(client):
    async with client.stream("GET", "/api/stream", params={"prompt": QUESTION}) as response:
        first: list[Received] = []
        async for item in sse_events(response):
            if isinstance(item, Received):
                first.append(item)
            if len(first) == 3:
                break
    assert first[-1].event == "reasoning"
    rest = await read_all(client, "GET", "/api/stream", headers={"Last-Event-ID": first[-1].id})
    received = first + [e for e in rest if isinstance(e, Received)]
    assert [int(e.id.split(":")[1]) for e in received] == list(range(1, len(received) + 1))
    assert of(received, "reasoning").startswith("The question is about reasoning models.")
    assert received[-1].event == "done"


async def test_a_stream_that_drops_while_thinking_is_retried(client, upstream):
    upstream.records.clear()
    prompt = f"[fault: drop after=5 times=1] {QUESTION}"
    events = await read_all(client, "GET", "/api/stream", params={"prompt": prompt})
    records = await upstream_requests(upstream, 2)
    assert records[0].tokens_sent == 5
    assert events[-1].data["reason"] == "complete"
    assert of(events, "token") == choose_answer(records[1].messages)


async def _answer_ids(chat: ChainlitClient, start: int) -> tuple[dict, dict]:
    """The thinking step's stream_start and the answer's."""
    step = await chat.wait_for(
        lambda e: e.name == "stream_start" and e.data.get("type") == "llm", start=start
    )
    answer = await chat.wait_for(
        lambda e: e.name == "stream_start" and e.data.get("type") == "assistant_message",
        start=start,
    )
    return step.data, answer.data


async def test_chat_shows_thinking_in_a_step_that_ends_before_the_answer_starts(app):
    chat = await ChainlitClient(app.url).connect()
    try:
        mark = await chat.send(QUESTION)
        step, answer = await _answer_ids(chat, mark)
        done = await chat.finished(mark)
        events = chat.events[mark:]
        ended = next(
            i
            for i, e in enumerate(events)
            if e.name == "update_message" and e.data["id"] == step["id"] and e.data.get("end")
        )
        started = next(i for i, e in enumerate(events) if e.data is answer)
        assert ended < started, "the step ends (collapses) before the answer starts"
        assert events[ended].data["name"].startswith("reasoning")
        assert step["defaultOpen"] and step["autoCollapse"]
        thinking = step["output"] + "".join(
            e.data["token"]
            for e in events
            if e.name == "stream_token" and e.data["id"] == step["id"]
        )
        assert thinking.startswith("The question is about reasoning models.")
        final = done.final_assistant_text()
        assert "The question is about" not in final and "<think>" not in final.split("\n")[0]
    finally:
        await chat.close()


async def test_stop_while_thinking_closes_the_upstream_at_once(upstream):
    with OfflineServer(tokens_per_second=5, first_token_delay_ms=5) as slow:
        env = {"OPENAI_BASE_URL": slow.base_url, "STREAM_FLUSH_MS": "0"}
        with AppProcess(env) as running:
            chat = await ChainlitClient(running.url).connect()
            try:
                mark = await chat.send(QUESTION)
                await chat.wait_for(
                    lambda e: e.name == "stream_start" and e.data.get("type") == "llm",
                    start=mark,
                )
                (record,) = await upstream_requests(slow, 1)
                await chat.stop()
                assert await upstream_ended(record, within=5)
                assert record.tokens_sent < 40, "stopped while thinking"
            finally:
                await chat.close()


async def test_the_next_turn_sends_the_answer_upstream_without_its_thinking(app, upstream):
    chat = await ChainlitClient(app.url).connect()
    try:
        upstream.records.clear()
        await chat.ask(f"[reasoning: think] {QUESTION}")
        await chat.ask("What is a token?")
        first, second = await upstream_requests(upstream, 2)
        thinking = choose_thinking(first.messages, asked=True)
        (answer,) = [m["content"] for m in second.messages if m["role"] == "assistant"]
        assert answer.startswith(choose_answer(first.messages)[:80])
        assert "<think>" not in answer[:20] and thinking not in answer
    finally:
        await chat.close()


async def test_a_resumed_thread_shows_the_thinking_and_sends_only_the_answer(tmp_path):
    from streamchat.hosting.users import UsersFile
    from tests.harness import login
    from tests.test_history_integration import SECRET

    users = UsersFile(tmp_path / "users.txt")
    users.add("alice", "alice's long password")
    with OfflineServer(tokens_per_second=400, first_token_delay_ms=5) as offline:
        env = {
            "CHAINLIT_AUTH_SECRET": SECRET,
            "AUTH_USERS_FILE": str(tmp_path / "users.txt"),
            "DATABASE_URL": f"sqlite:///{tmp_path / 'history.db'}",
            "OPENAI_BASE_URL": offline.base_url,
        }
        with AppProcess(env) as running:
            token = login(running.url, "alice", "alice's long password")
            chat = await ChainlitClient(running.url, access_token=token).connect()
            try:
                await chat.ask(QUESTION)
                thread_id = await chat.started_thread()
                (record,) = await upstream_requests(offline, 1)
            finally:
                await chat.close()
        thinking = choose_thinking(record.messages)
        answer = choose_answer(record.messages)

        with AppProcess(env) as running:
            token = login(running.url, "alice", "alice's long password")
            resumed = await ChainlitClient(
                running.url, access_token=token, thread_id=thread_id
            ).connect()
            try:
                steps = resumed.events[-1].data["steps"]
                (step,) = [s for s in steps if s["type"] == "llm"]
                assert step["output"] == thinking
                assert step["name"].startswith("reasoning")
                offline.records.clear()
                await resumed.ask("What is a token?")
                (sent,) = await upstream_requests(offline, 1)
                assistant = [m["content"] for m in sent.messages if m["role"] == "assistant"]
                assert assistant == [answer]
            finally:
                await resumed.close()


@pytest.mark.parametrize(
    ("args", "extra_env", "shown"),
    [
        ((), {}, True),
        (("--no-stream",), {}, True),
        (("--no-reasoning",), {}, False),
        ((), {"SHOW_REASONING": "false"}, False),
    ],
)
def test_the_console_prints_thinking_to_stderr_and_only_the_answer_to_stdout(
    upstream, args, extra_env, shown
):
    from tests.test_cli import cli_env, run_cli

    upstream.records.clear()
    env = cli_env(OPENAI_BASE_URL=upstream.base_url, **extra_env)
    done = run_cli(*args, QUESTION, env=env)
    assert done.returncode == 0, done.stderr
    record = upstream.records.last()
    assert done.stdout == choose_answer(record.messages) + "\n"
    assert (choose_thinking(record.messages) in done.stderr) is shown
    assert "thinking" in done.stderr  # the stats line counts thinking tokens either way
