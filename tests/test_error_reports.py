"""What an error offers and logs: no Retry for a rejected key (fixing the variable helps, a
retry cannot), and the numbers under an answer measure what they say."""

from __future__ import annotations

from streamchat.core.errors import AuthenticationFailed, RateLimited
from streamchat.core.metrics import StatsRecorder
from streamchat.core.relay import StreamResult
from streamchat.core.sinks import ChainlitSink
from streamchat.core.types import Delta, EndReason, Usage
from tests.test_sinks import STATS, FakeMessage


def finished_with(error) -> list[tuple[str, list]]:
    errors: list[tuple[str, list]] = []

    async def notify(text: str, actions: list) -> None:
        errors.append((text, actions))

    sink = ChainlitSink(FakeMessage(), notify_error=notify, make_action=lambda n, label: (n, label))
    return sink, errors


async def test_a_rejected_key_offers_no_retry_only_the_variable_to_fix():
    error = AuthenticationFailed(
        "The model provider at x rejected the API key (401). Check OPENAI_API_KEY.", status=401
    )
    sink, errors = finished_with(error)
    await sink.finish(StreamResult("s1", "", EndReason.ERROR, STATS, error))
    assert errors == [(error.user_message, [])]
    assert "OPENAI_API_KEY" in errors[0][0]


async def test_a_rate_limit_still_offers_retry():
    error = RateLimited("The provider is rate limiting this app. Try again in a minute.")
    sink, errors = finished_with(error)
    await sink.finish(StreamResult("s1", "", EndReason.ERROR, STATS, error))
    assert errors == [(error.user_message, [("retry", "Retry")])]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_tokens_per_second_of_an_unstreamed_answer_is_over_the_whole_generation():
    clock = Clock()
    recorder = StatsRecorder(clock)
    clock.now = 4.0  # the whole answer arrives at once, after 4 s of generation
    recorder.observe(Delta(text="word " * 200, index=0, finish_reason="stop"))
    recorder.observe(Delta(text="", index=0, usage=Usage(10, 200)))
    clock.now = 4.0001
    stats = recorder.snapshot()
    assert stats.text_chunks == 1
    assert stats.tokens_per_second is not None and 49 < stats.tokens_per_second < 51
    assert "50.0 tok/s" in stats.summary()


def test_tokens_per_second_of_a_stream_is_after_the_first_token():
    clock = Clock()
    recorder = StatsRecorder(clock)
    for step in range(11):
        clock.now = 1.0 + step * 0.1
        recorder.observe(Delta(text="tok ", index=step))
    stats = recorder.snapshot()
    assert stats.text_chunks == 11
    assert stats.tokens_per_second is not None and 9.9 < stats.tokens_per_second < 10.1
