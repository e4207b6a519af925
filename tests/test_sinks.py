"""The Chainlit sink: streams with stream_token, retracts with is_sequence, finishes the message
with a marker, and shows errors as a separate short message."""

from __future__ import annotations

import io

from streamchat.core.errors import ProviderUnavailable, StreamBroken
from streamchat.core.relay import StreamResult
from streamchat.core.sinks import ChainlitSink, ConsoleSink
from streamchat.core.types import EndReason
from tests.scripted import STATS


class FakeMessage:
    def __init__(self) -> None:
        self.content = ""
        self.actions: list = []
        self.metadata: dict | None = None
        self.calls: list[tuple] = []

    async def stream_token(self, token: str, is_sequence: bool = False) -> None:
        self.content = token if is_sequence else self.content + token
        self.calls.append(("stream_token", token, is_sequence))

    async def send(self) -> object:
        self.calls.append(("send", self.content))
        return self

    async def update(self) -> object:
        self.calls.append(("update", self.content))
        return True


def sink_and_errors():
    message, errors = FakeMessage(), []

    async def notify(text: str, actions: list) -> None:
        errors.append((text, actions))

    return (
        ChainlitSink(message, notify_error=notify, make_action=lambda n, label: (n, label)),
        message,
        errors,
    )


def result(text, reason, error=None):
    return StreamResult("s1", text, reason, STATS, error)


async def test_tokens_stream_then_message_is_sent_once():
    sink, message, errors = sink_and_errors()
    await sink.start()
    await sink.write("a")
    await sink.write("b")
    await sink.finish(result("ab", EndReason.COMPLETE))
    assert message.calls == [
        ("stream_token", "a", False),
        ("stream_token", "b", False),
        ("send", "ab"),
    ]
    assert errors == []


async def test_retract_uses_is_sequence_and_empty_retract_updates():
    sink, message, _ = sink_and_errors()
    await sink.write("unsafe text")
    await sink.replace("safe")
    assert message.calls[-1] == ("stream_token", "safe", True)
    await sink.replace("")
    assert message.calls[-1] == ("update", "")


async def test_stopped_answer_keeps_text_and_gets_a_marker():
    sink, message, errors = sink_and_errors()
    await sink.write("abc")
    await sink.finish(result("abc", EndReason.STOPPED_BY_USER))
    assert message.calls[-1] == ("send", "abc\n\n*(Stopped by you after 3 tokens.)*")
    assert errors == []


async def test_broken_stream_keeps_text_marks_it_and_explains():
    sink, message, errors = sink_and_errors()
    await sink.write("abc")
    error = StreamBroken("The connection to the provider was lost in the middle of the answer.")
    await sink.finish(result("abc", EndReason.ERROR, error))
    assert message.calls[-1][1].startswith("abc\n\n*(Interrupted: connection lost")
    assert message.actions == [("continue", "Continue")]
    assert errors == [(error.user_message, [])]


async def test_error_before_any_text_sends_no_empty_bubble():
    sink, message, errors = sink_and_errors()
    error = ProviderUnavailable("The model provider had an error (500). Try again in a moment.")
    await sink.finish(result("", EndReason.ERROR, error))
    assert message.calls == []
    assert errors == [(error.user_message, [("retry", "Retry")])]


async def test_stats_line_is_shown_under_the_answer_when_enabled():
    message = FakeMessage()

    async def notify(text: str, actions: list) -> None:
        raise AssertionError(text)

    sink = ChainlitSink(message, notify_error=notify, show_metrics=True)
    await sink.write("abc")
    await sink.finish(result("abc", EndReason.COMPLETE))
    assert message.calls[-1] == ("send", "abc\n\n*TTFT 0.10 s · ~3 tokens · 2.2 tok/s · 1.00 s*")


async def test_left_out_history_is_noted_under_the_answer_and_in_the_console():
    sink, message, _ = sink_and_errors()
    await sink.write("abc")
    done = StreamResult("s1", "abc", EndReason.COMPLETE, STATS, dropped_messages=4)
    await sink.finish(done)
    assert message.calls[-1] == (
        "send",
        "abc\n\n*(4 earlier messages were left out to fit the model's context.)*",
    )
    out, err = io.StringIO(), io.StringIO()
    await ConsoleSink(out, err).finish(done)
    assert "[4 earlier messages were left out to fit the model's context.]" in err.getvalue()


class StreamingFakeMessage(FakeMessage):
    """Starts its stream with the first token, as chainlit.Message does."""

    def __init__(self) -> None:
        super().__init__()
        self.id = "m1"
        self.streaming = False

    async def stream_token(self, token: str, is_sequence: bool = False) -> None:
        await super().stream_token(token, is_sequence)
        self.streaming = True


class RecordingUpdates:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []
        self.full = False

    async def emit(self, event: str, data: dict) -> None:
        self.events.append((event, data))

    def backlogged(self) -> bool:
        return self.full


def sink_with_updates() -> tuple[ChainlitSink, StreamingFakeMessage, RecordingUpdates]:
    message, updates = StreamingFakeMessage(), RecordingUpdates()

    async def notify(text: str, actions: list) -> None:
        raise AssertionError(text)

    return ChainlitSink(message, notify_error=notify, updates=updates), message, updates


async def test_with_an_update_channel_later_tokens_go_straight_to_the_browser():
    sink, message, updates = sink_with_updates()
    await sink.write("a")
    await sink.write("b")
    await sink.write("c")
    assert message.calls == [("stream_token", "a", False)], "the stream starts through Chainlit"
    assert [data["token"] for _, data in updates.events] == ["b", "c"]
    assert message.content == "abc", "the message's content is kept as stream_token keeps it"
    await sink.replace("ab")
    assert message.calls[-1] == ("stream_token", "ab", True), "retractions go through Chainlit"
    await sink.finish(result("ab", EndReason.COMPLETE))
    assert message.calls[-1] == ("send", "ab")


async def test_the_update_sent_is_the_one_chainlits_emitter_sends():
    import types

    from chainlit.emitter import ChainlitEmitter

    chainlit_events: list[tuple[str, dict]] = []

    async def emit(event: str, data: dict) -> None:
        chainlit_events.append((event, data))

    await ChainlitEmitter(types.SimpleNamespace(emit=emit)).send_token(id="m1", token="b")
    sink, _, updates = sink_with_updates()
    await sink.write("a")
    await sink.write("b")
    assert updates.events == chainlit_events


async def test_the_sink_would_wait_exactly_when_its_browser_is_backlogged():
    without_updates, _, _ = sink_and_errors()
    assert not without_updates.would_wait(), "Chainlit's own emit never waits"
    sink, _, updates = sink_with_updates()
    assert not sink.would_wait()
    updates.full = True
    assert sink.would_wait()


async def test_every_stream_token_update_is_counted_for_the_paint_but_not_the_stream_start():
    from streamchat.core.paint import MessagePaint

    async def notify(text: str, actions: list) -> None:
        raise AssertionError(text)

    for updates in (None, RecordingUpdates()):  # Chainlit's own emit, or the update channel
        message, paint = StreamingFakeMessage(), MessagePaint()
        sink = ChainlitSink(message, notify_error=notify, updates=updates, paint=paint)
        assert sink.paint is paint, "what the CoalescingSink in front looks for"
        await sink.write("a")  # stream_start: the page shows it with the message
        assert paint.sent == 0
        await sink.write("b")
        await sink.write("c")
        await sink.replace("ab")  # a retraction is a stream_token update too
        assert paint.sent == 3
        await sink.finish(result("ab", EndReason.COMPLETE))
        assert paint.sent == 3, "the final message is not a stream_token"
