"""The pieces that keep an answer when its replica goes, without a server: the Chainlit sink's
saves while it streams, its end when a shutdown cuts it off, the SIGTERM drain, and how a
reopened thread settles an answer whose writer stopped saving."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

from chainlit.user import User

from streamchat.core.relay import StreamResult
from streamchat.core.sinks import ChainlitSink, partial_answer_metadata
from streamchat.core.types import EndReason
from streamchat.hosting.persistence import (
    LOST_WRITER_NOTE,
    Database,
    StreamchatDataLayer,
    conversation_from_steps,
)
from streamchat.hosting.setup import Drain
from tests.scripted import STATS
from tests.waiting import eventually


class Message:
    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.id = "m1"
        self.content = ""
        self.streaming = False
        self.actions: list[Any] = []
        self.metadata: dict[str, Any] | None = None
        self.log = log

    async def stream_token(self, token: str, is_sequence: bool = False) -> None:
        self.content = token if is_sequence else self.content + token

    async def send(self) -> object:
        self.log.append(("send", self.content))
        return self

    async def update(self) -> object:
        return True


class Saves:
    """A checkpoint that records each save when it lands; `gate` cleared holds saves back."""

    def __init__(self, log: list[tuple[str, Any]], message: Message) -> None:
        self.log, self.message = log, message
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = 0

    async def __call__(self, metadata: dict[str, Any]) -> None:
        self.entered += 1
        await self.gate.wait()
        self.log.append(("save", (self.message.content, metadata["streamchat"])))


def sink_with_saves(every_s: float = 0.01) -> tuple[ChainlitSink, Message, Saves, list]:
    log: list[tuple[str, Any]] = []
    message = Message(log)
    saves = Saves(log, message)

    async def notify(_text: str, _actions: list[Any]) -> None:
        return None

    sink = ChainlitSink(
        message,
        notify_error=notify,
        make_action=lambda name, label: (name, label),
        checkpoint=saves,
        checkpoint_every_s=every_s,
    )
    return sink, message, saves, log


async def test_an_answer_is_saved_in_progress_at_its_first_text_and_while_the_model_pauses():
    sink, _, _, log = sink_with_saves()
    await sink.write("ab")
    await eventually(lambda: len(log) >= 3, within=5, what="saves while nothing new comes")
    for kind, (content, stored) in log:
        assert kind == "save" and content == "ab"
        assert stored["text"] == "ab" and stored["reason"] == "error" and stored["in_progress"]
    await sink.finish(StreamResult("s1", "ab", EndReason.COMPLETE, STATS))


async def test_no_save_of_the_answer_being_written_lands_after_the_final_one():
    sink, _, saves, log = sink_with_saves()
    await sink.write("ab")
    await eventually(lambda: saves.entered >= 1 and log, within=5, what="the first save")
    saves.gate.clear()  # the next save is in flight when the answer ends
    await eventually(lambda: saves.entered >= 2, within=5, what="a save in flight")
    finishing = asyncio.create_task(
        sink.finish(StreamResult("s1", "abc", EndReason.COMPLETE, STATS))
    )
    for _ in range(20):  # turns of the loop, not time: finish waits for the save in flight
        await asyncio.sleep(0)
    assert not finishing.done() and ("send", "abc") not in log
    saves.gate.set()
    await finishing
    assert [kind for kind, _ in log][-2:] == ["save", "send"], "the final message last"


async def test_an_answer_cut_off_by_a_shutdown_ends_interrupted_with_continue_and_is_saved():
    sink, message, _, log = sink_with_saves(every_s=60)
    await sink.write("abc")
    sink.interrupt("this server restarted")
    await sink.finish(StreamResult("s1", "abc", EndReason.STOPPED_BY_USER, STATS))
    assert message.content == "abc\n\n*(Interrupted: this server restarted after 3 tokens.)*"
    assert message.actions == [("continue", "Continue")]
    kind, (_, stored) = log[-1]
    assert kind == "save", "saved before finish returned, after the message was sent"
    assert stored["reason"] == "error" and "in_progress" not in stored


async def test_a_drain_lets_answers_end_within_its_timeout_and_cuts_off_the_rest():
    drain = Drain(timeout_s=0.1)
    ends_soon, never_ends = asyncio.Event(), asyncio.Event()
    sinks: dict[str, ChainlitSink] = {}

    async def answer(name: str, until: asyncio.Event) -> None:
        sinks[name] = sink_with_saves(every_s=60)[0]
        drain.track(sinks[name])
        await until.wait()

    quick = asyncio.create_task(answer("quick", ends_soon))
    slow = asyncio.create_task(answer("slow", never_ends))
    await eventually(lambda: drain.answers == 2, within=5, what="two answers tracked")
    draining = asyncio.create_task(drain.drain())
    await eventually(lambda: drain.draining, within=1, what="the drain started")
    ends_soon.set()
    await draining
    assert quick.done() and not quick.cancelled()
    assert sinks["quick"].interrupted_by is None
    assert slow.cancelled(), "cut off after the timeout"
    assert sinks["slow"].interrupted_by == "this server restarted"


async def test_a_reopened_thread_shows_an_answer_whose_writer_stopped_as_interrupted(
    tmp_path: Path,
):
    layer = StreamchatDataLayer(
        Database.parse(f"sqlite:///{tmp_path / 'history.db'}"), partial_save_s=0.2
    )
    await layer.create_schema()
    user = await layer.create_user(User(identifier="alice", metadata={}))
    assert user is not None
    thread_id = str(uuid.uuid4())
    await layer.update_thread(thread_id, name="t", user_id=user.id)
    upsert = StreamchatDataLayer.create_step.__wrapped__
    question: dict[str, Any] = {"type": "user_message", "output": "What is a token?"}
    lost: dict[str, Any] = {
        "type": "assistant_message",
        "output": "A token is",
        "streaming": True,
        "metadata": partial_answer_metadata("A token is", time.time() - 60),
    }
    for n, step in enumerate((question, lost)):
        at = f"2026-12-04T10:00:0{n}Z"
        step.update(id=str(uuid.uuid4()), threadId=thread_id, name="x", createdAt=at)
        step.setdefault("streaming", False)
        await upsert(layer, dict(step))
    try:
        thread = await layer.get_thread(thread_id)
        assert thread is not None
        await layer.settle_unfinished_answers(thread)
        answer = thread["steps"][-1]
        assert answer["output"] == f"A token is\n\n*({LOST_WRITER_NOTE})*"
        assert conversation_from_steps(thread["steps"]).interrupted_answer() is not None
        stored = await layer.get_thread(thread_id)
        assert stored is not None
        saved = stored["steps"][-1]
        metadata = saved["metadata"]
        metadata = json.loads(metadata) if isinstance(metadata, str) else metadata
        assert saved["output"] == answer["output"]
        assert "in_progress" not in metadata["streamchat"]
    finally:
        await layer.engine.dispose()
