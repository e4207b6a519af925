"""Paint pacing in the real app over Socket.IO: a client that never acknowledges is paced by time
and gets the whole answer; one that stops acknowledging is held, still gets the whole answer at
the end, and can Stop; acknowledgements that make no sense change nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.harness import AppProcess, ChainlitClient, strip_footer

pytestmark = pytest.mark.integration

QUESTION = "Why is model output untrusted input?"  # one of the longer lessons


@pytest.fixture(scope="module")
def app() -> Iterator[AppProcess]:
    env = {
        "OFFLINE_TPS": "200",
        "OFFLINE_TTFT_MS": "20",
        "STREAM_FLUSH_MS": "1",  # by time alone: an update for about every token
        "STREAM_PAINT_HOLD_MS": "60000",  # a held update waits for the client, not a clock
        "SHOW_METRICS": "false",
    }
    with AppProcess(env) as running:
        yield running


@pytest.fixture
async def client(app: AppProcess) -> AsyncIterator[ChainlitClient]:
    chat = await ChainlitClient(app.url).connect()
    yield chat
    await chat.close()


async def first_update(client: ChainlitClient, mark: int) -> str:
    """Wait for the answer's first stream_token; return its message id."""
    event = await client.wait_for(lambda e: e.name == "stream_token", within=30, start=mark)
    return str(event.data["id"])


async def test_a_client_that_never_acknowledges_gets_updates_by_time_and_the_whole_answer(client):
    for nonsense in (None, "x", {"id": 1, "n": 1}, {"id": "unknown", "n": 5}, {"n": -1}):
        await client.sio.emit("stream_painted", nonsense)
    answer = await client.ask(QUESTION)
    final = strip_footer(answer.final_assistant_text())
    assert "untrusted" in final.lower()
    assert answer.streamed_text == final, "nothing lost, duplicated or reordered"
    assert len(answer.named("stream_token")) >= 20, "paced by time, as without the page script"


async def test_a_client_that_stops_acknowledging_is_held_and_gets_the_whole_answer(app, client):
    free = await client.ask(QUESTION)
    free_updates = len(free.named("stream_token"))

    mark = await client.send(QUESTION)
    message_id = await first_update(client, mark)
    await client.sio.emit("stream_painted", {"id": message_id, "n": 1})
    held = await client.finished(mark)
    final = strip_footer(held.final_assistant_text())
    # The same lesson (the first answer of a chat also says it comes from the demo model).
    assert "untrusted" in final.lower() and strip_footer(free.final_assistant_text()).endswith(
        final
    )
    assert final.startswith(held.streamed_text), "what was streamed is the answer's beginning"
    held_updates = len(held.named("stream_token"))
    # After the word that update 1 is painted, the server sends at most one more update, plus
    # those already on their way when the word arrived; the rest comes with the end.
    assert held_updates * 4 < free_updates, (held_updates, free_updates)


async def test_stop_while_an_update_is_held_ends_the_answer_marked_stopped(client):
    mark = await client.send(QUESTION)
    message_id = await first_update(client, mark)
    await client.sio.emit("stream_painted", {"id": message_id, "n": 1})
    await client.stop()
    answer = await client.finished(mark)
    final = answer.final_assistant_text()
    assert "Stopped by you" in final
    assert strip_footer(final).startswith(answer.streamed_text)
