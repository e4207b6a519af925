"""The Chainlit sink: streams with stream_token, retracts with is_sequence, finishes the message
with a marker, and shows errors as a separate short message."""

from __future__ import annotations

import io

from streamchat.errors import ProviderUnavailable, StreamBroken
from streamchat.metrics import StreamStats
from streamchat.relay import StreamResult
from streamchat.sinks import ChainlitSink, ConsoleSink
from streamchat.types import EndReason

STATS = StreamStats(
    first_token_s=0.1,
    duration_s=1.0,
    completion_tokens=3,
    prompt_tokens=0,
    usage_reported=False,
    chunks=3,
)


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
