"""Per-stream statistics: time to first token, token counts, tokens per second, duration."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from streamchat.core.types import Delta, Usage


@dataclass(frozen=True, slots=True)
class StreamStats:
    """What one answer cost and how fast it came. Times are seconds from the request."""

    first_token_s: float | None
    duration_s: float
    completion_tokens: int
    prompt_tokens: int
    usage_reported: bool  # token counts came from the provider, not from counting chunks
    chunks: int
    finish_reason: str | None = None
    attempts: int = 1  # requests made for this answer: 1 + retries + resumes
    resumes: int = 0  # of which continued a broken answer
    text_chunks: int | None = None  # chunks that carried text (1: the answer was not streamed)
    # A reasoning model's thinking: when its first piece came (first_token_s is the answer's),
    # and its tokens (of completion_tokens: reported by the provider, or one per chunk).
    first_reasoning_s: float | None = None
    reasoning_tokens: int = 0
    # Where the answer came from: its own upstream request ("live"), another viewer's request
    # for the very same question ("shared"), or the answer cache ("cache"); see sharing.py.
    source: str = "live"

    @property
    def tokens_per_second(self) -> float | None:
        """Generation speed after the first token (TTFT is reported on its own). An answer
        that arrived in one piece (not streamed) was generated before its first token came, so
        its speed is over the whole time instead."""
        if self.first_token_s is None or self.completion_tokens < 2:
            return None
        if self.text_chunks == 1:
            return self.completion_tokens / self.duration_s if self.duration_s > 0 else None
        # A reasoning model generates from its first thinking token on.
        started = min(self.first_token_s, self.first_reasoning_s or self.first_token_s)
        generating = self.duration_s - started
        if generating <= 0:
            return None
        return (self.completion_tokens - 1) / generating

    def summary(self) -> str:
        """A compact line for people: `TTFT 0.31 s · 120 tokens · 29.8 tok/s · 4.30 s`."""
        parts = []
        if self.first_reasoning_s is not None:
            parts.append(f"thinking from {self.first_reasoning_s:.2f} s")
        if self.first_token_s is not None:
            parts.append(f"TTFT {self.first_token_s:.2f} s")
        approx = "" if self.usage_reported else "~"
        parts.append(f"{approx}{self.completion_tokens} tokens")
        if self.reasoning_tokens:
            parts.append(f"{approx}{self.reasoning_tokens} thinking")
        if (speed := self.tokens_per_second) is not None:
            parts.append(f"{speed:.1f} tok/s")
        parts.append(f"{self.duration_s:.2f} s")
        if self.attempts > 1:
            resumed = f", resumed {self.resumes}×" if self.resumes else ""
            parts.append(f"{self.attempts} attempts{resumed}")
        if self.source == "shared":
            parts.append("shared")
        elif self.source == "cache":
            parts.append("from cache")
        return " · ".join(parts)

    def as_log_fields(self) -> dict[str, object]:
        return {
            "ttft_s": None if self.first_token_s is None else round(self.first_token_s, 4),
            "duration_s": round(self.duration_s, 4),
            "completion_tokens": self.completion_tokens,
            "prompt_tokens": self.prompt_tokens,
            "usage_reported": self.usage_reported,
            "chunks": self.chunks,
            "tokens_per_s": None
            if self.tokens_per_second is None
            else round(self.tokens_per_second, 2),
            "finish_reason": self.finish_reason,
            "attempts": self.attempts,
            "resumes": self.resumes,
            "first_reasoning_s": None
            if self.first_reasoning_s is None
            else round(self.first_reasoning_s, 4),
            "reasoning_tokens": self.reasoning_tokens,
            "source": self.source,
        }


class UsageMeter:
    """Adds up the tokens (prompt and completion) of every answer that finishes while it is
    the current meter. A front end sets one per request to charge rate limits."""

    def __init__(self) -> None:
        self.tokens = 0

    def add(self, stats: StreamStats) -> None:
        self.tokens += stats.prompt_tokens + stats.completion_tokens


USAGE_METER: ContextVar[UsageMeter | None] = ContextVar("streamchat_usage_meter", default=None)


class StatsRecorder:
    """Watches the Deltas of one answer (over all its attempts) and produces its StreamStats.

    Tokens are summed over attempts, so retries and resumes are billed honestly: each attempt
    counts what the provider reported for it, or its content chunks when it reported nothing
    (a broken stream never sends its usage chunk).
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._started = clock()
        self._first_token: float | None = None
        self._chunks = 0
        self._finish_reason: str | None = None
        self._attempts = 1
        self._resumes = 0
        self._banked_completion = 0
        self._banked_prompt = 0
        self._all_reported = True
        self._attempt_usage: Usage | None = None
        self._attempt_content_chunks = 0
        self._text_chunks = 0
        self._first_reasoning: float | None = None
        self._banked_reasoning = 0
        self._attempt_reasoning_chunks = 0

    def observe(self, delta: Delta) -> None:
        self._chunks += 1
        if delta.reasoning:
            self._attempt_reasoning_chunks += 1
            if self._first_reasoning is None:
                self._first_reasoning = self._clock()
        if delta.text:
            self._text_chunks += 1
            self._attempt_content_chunks += 1
            if self._first_token is None:
                self._first_token = self._clock()
        if delta.usage is not None:
            self._attempt_usage = delta.usage
        if delta.finish_reason is not None:
            self._finish_reason = delta.finish_reason

    def new_attempt(self, *, resume: bool) -> None:
        """The next request for the same answer starts (a retry, or a resume if `resume`)."""
        completion, prompt, reported = self._attempt_totals()
        self._banked_completion += completion
        self._banked_prompt += prompt
        self._banked_reasoning += self._attempt_reasoning()
        self._attempt_reasoning_chunks = 0
        self._all_reported = self._all_reported and reported
        self._attempt_usage = None
        self._attempt_content_chunks = 0
        self._finish_reason = None
        self._attempts += 1
        if resume:
            self._resumes += 1

    def _attempt_totals(self) -> tuple[int, int, bool]:
        usage = self._attempt_usage
        if usage is not None:
            return usage.completion_tokens, usage.prompt_tokens, True
        # Without reported usage, one content chunk is one token: true for OpenAI, Ollama,
        # vLLM and llama.cpp, which send a chunk per token. An attempt that failed before any
        # text cost nothing we can see.
        chunks = self._attempt_content_chunks + self._attempt_reasoning_chunks
        return chunks, 0, chunks == 0

    def _attempt_reasoning(self) -> int:
        usage = self._attempt_usage
        if usage is not None and usage.reasoning_tokens:
            return usage.reasoning_tokens
        return self._attempt_reasoning_chunks

    @property
    def first_token_seen(self) -> bool:
        return self._first_token is not None

    def snapshot(self) -> StreamStats:
        now = self._clock()
        completion, prompt, reported = self._attempt_totals()
        return StreamStats(
            first_token_s=None if self._first_token is None else self._first_token - self._started,
            duration_s=now - self._started,
            completion_tokens=self._banked_completion + completion,
            prompt_tokens=self._banked_prompt + prompt,
            usage_reported=self._all_reported and reported and self._attempt_usage is not None,
            chunks=self._chunks,
            finish_reason=self._finish_reason,
            attempts=self._attempts,
            resumes=self._resumes,
            text_chunks=self._text_chunks,
            first_reasoning_s=None
            if self._first_reasoning is None
            else self._first_reasoning - self._started,
            reasoning_tokens=self._banked_reasoning + self._attempt_reasoning(),
        )


class ProcessMetrics:
    """Process-wide counters in Prometheus form, served at /metrics.

    Each instance has its own registry, so tests can count without touching the global one.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.streams_active = Gauge(
            "streamchat_streams_active", "Answers streaming right now.", registry=self.registry
        )
        self.streams = Counter(
            "streamchat_streams",
            "Answers finished, by how they ended.",
            ["reason"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "streamchat_tokens", "Completion tokens delivered.", registry=self.registry
        )
        self.first_token_seconds = Histogram(
            "streamchat_first_token_seconds",
            "Time from request to first token.",
            buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30),
            registry=self.registry,
        )
        self.errors = Counter(
            "streamchat_errors", "Provider errors, by kind.", ["kind"], registry=self.registry
        )
        self.rate_limited = Counter(
            "streamchat_rate_limited",
            "Messages refused by a rate limit, by kind (requests, concurrent, tokens).",
            ["kind"],
            registry=self.registry,
        )
        self.guardrail_stops = Counter(
            "streamchat_guardrail_stops",
            "Answers or messages stopped by a guardrail, by policy.",
            ["policy"],
            registry=self.registry,
        )
        self.shared_answers = Counter(
            "streamchat_shared_answers",
            "Answers that joined another viewer's upstream request for the same question.",
            registry=self.registry,
        )
        self.cache_hits = Counter(
            "streamchat_cache_hits",
            "Answers replayed from the answer cache, with no upstream request.",
            registry=self.registry,
        )
        self.guardrail_check_errors = Counter(
            "streamchat_guardrail_check_errors",
            "Guardrail checks that failed or timed out, by policy.",
            ["policy"],
            registry=self.registry,
        )

    def record(self, stats: StreamStats, reason: str, error_kind: str | None) -> None:
        self.streams.labels(reason=reason).inc()
        if stats.source == "shared":
            self.shared_answers.inc()
        elif stats.source == "cache":
            self.cache_hits.inc()
        self.tokens.inc(stats.completion_tokens)
        if stats.first_token_s is not None:
            self.first_token_seconds.observe(stats.first_token_s)
        if error_kind is not None:
            self.errors.labels(kind=error_kind).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


PROCESS_METRICS = ProcessMetrics()
