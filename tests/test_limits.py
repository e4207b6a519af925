"""Rate limits on both backends: requests per minute, concurrent answers, tokens per day, with
clear messages; two limiters (and two processes) sharing Redis; Redis down fails open."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import pytest

from streamchat.core.errors import ConfigError
from streamchat.core.metrics import USAGE_METER, StreamStats
from streamchat.hosting.limits import (
    DAY,
    LEASE_S,
    LimitExceeded,
    MemoryBackend,
    RateLimiter,
    RateLimits,
    RedisBackend,
    limit_key,
    wait_text,
)
from streamchat.settings import Settings
from tests.databases import redis_server
from tests.harness import free_port

NOON = 20_000 * DAY + 12 * 3600  # a day's noon, UTC


class Clock:
    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture(params=["memory", "redis"])
async def make(request, redis_url) -> AsyncIterator:
    made: list[RateLimiter] = []
    prefix = f"t{id(request)}"

    def build(clock: Clock, **limits: int) -> RateLimiter:
        if request.param == "redis":
            settings = RateLimits(**limits, redis_url=redis_url)
            limiter = RateLimiter(settings, RedisBackend(redis_url), clock=clock)
        else:
            limiter = RateLimiter(RateLimits(**limits), MemoryBackend(), clock=clock)
        made.append(limiter)
        return limiter

    build.prefix = prefix  # type: ignore[attr-defined]
    yield build
    for limiter in made:
        await limiter.aclose()


def key(make, name: str = "alice") -> str:
    return limit_key(f"{make.prefix}-{name}", None)


async def test_requests_per_minute_slide_and_say_how_long_to_wait(make):
    clock = Clock()
    limiter = make(clock, requests_per_minute=3)
    for second in (0, 10, 20):
        clock.now = NOON + second
        await (await limiter.admit(key(make))).release()
    clock.now = NOON + 30
    with pytest.raises(LimitExceeded) as info:
        await limiter.admit(key(make))
    assert info.value.kind == "requests"
    assert info.value.retry_after_s == pytest.approx(30, abs=0.01)
    assert info.value.user_message == (
        "You have sent 3 messages in the last minute. Try again in 30 s."
    )
    await limiter.admit(key(make, "bob"))  # others are not affected
    clock.now = NOON + 60.5  # the first request has left the window
    await limiter.admit(key(make))


async def test_concurrent_answers_are_capped_and_slots_come_back(make):
    clock = Clock()
    limiter = make(clock, concurrent_streams=2)
    first = await limiter.admit(key(make))
    async with await limiter.admit(key(make)):
        with pytest.raises(LimitExceeded, match="You already have 2 answers streaming"):
            await limiter.admit(key(make))
    third = await limiter.admit(key(make))  # the context manager released its slot
    await first.release()
    await first.release()  # idempotent
    await third.release()
    with pytest.raises(RuntimeError):
        async with await limiter.admit(key(make)):
            raise RuntimeError("the answer failed")
    async with await limiter.admit(key(make)), await limiter.admit(key(make)):
        pass  # both slots were free again


async def test_a_slot_held_by_a_dead_process_expires(make):
    clock = Clock()
    limiter = make(clock, concurrent_streams=1)
    await limiter.admit(key(make))  # never released: its holder died
    with pytest.raises(LimitExceeded):
        await limiter.admit(key(make))
    clock.now += LEASE_S + 1
    await limiter.admit(key(make))


async def test_tokens_per_day_reset_at_midnight_utc(make):
    clock = Clock()
    limiter = make(clock, tokens_per_day=1000)
    lease = await limiter.admit(key(make))
    await lease.charge(600)
    lease = await limiter.admit(key(make))
    await lease.charge(500)  # an answer may go over; the next one is refused
    with pytest.raises(LimitExceeded) as info:
        await limiter.admit(key(make))
    assert info.value.kind == "tokens"
    assert info.value.user_message == (
        "You have used today's 1,000 tokens. The limit resets in 12 h (midnight UTC)."
    )
    clock.now = NOON + 12 * 3600 + 1  # just after midnight
    await limiter.admit(key(make))


async def test_a_metered_block_charges_its_answers_tokens_and_frees_the_slot(make):
    clock = Clock()
    limiter = make(clock, concurrent_streams=1, tokens_per_day=1000)
    lease = await limiter.admit(key(make))
    with pytest.raises(RuntimeError):
        async with lease.metered() as meter:
            assert USAGE_METER.get() is meter
            # Two answers finish inside the block (a side-by-side compare, say), then it fails.
            meter.add(StreamStats(None, 1.0, 300, 200, True, 1))
            meter.add(StreamStats(None, 1.0, 100, 450, True, 1))
            raise RuntimeError("the answer failed")
    assert USAGE_METER.get() is None
    with pytest.raises(LimitExceeded) as info:  # 1050 tokens charged: over the day's 1000
        await limiter.admit(key(make))
    assert info.value.kind == "tokens", "the streaming slot itself was freed"


async def test_two_limiters_on_one_redis_share_the_counts(redis_url):
    clock = Clock()
    limits = RateLimits(requests_per_minute=2, concurrent_streams=1, redis_url=redis_url)
    one = RateLimiter(limits, clock=clock)
    two = RateLimiter(limits, clock=clock)
    try:
        assert isinstance(one.backend, RedisBackend)
        lease = await one.admit("user:shared")
        with pytest.raises(LimitExceeded, match="streaming"):
            await two.admit("user:shared")
        await lease.release()
        await (await two.admit("user:shared")).release()
        with pytest.raises(LimitExceeded, match="2 messages in the last minute"):
            await one.admit("user:shared")
    finally:
        await one.aclose()
        await two.aclose()


def test_another_process_sees_the_same_limits(redis_url):
    script = f"""
import asyncio
from streamchat.hosting.limits import LimitExceeded, RateLimiter, RateLimits

async def main():
    limiter = RateLimiter(RateLimits(requests_per_minute=2, redis_url={redis_url!r}))
    outcomes = []
    for _ in range(2):
        try:
            await limiter.admit("user:procs")
            outcomes.append("ok")
        except LimitExceeded:
            outcomes.append("limited")
    await limiter.aclose()
    print(",".join(outcomes))

asyncio.run(main())
"""
    first = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    second = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert first.stdout.strip() == "ok,ok", first.stderr
    assert second.stdout.strip() == "limited,limited", second.stderr


async def test_redis_down_fails_open_with_one_warning(caplog):
    url = f"redis://:secret-pw@127.0.0.1:{free_port()}/0"
    limiter = RateLimiter(RateLimits(requests_per_minute=1, concurrent_streams=1, redis_url=url))
    caplog.set_level(logging.WARNING, logger="streamchat.hosting.limits")
    try:
        for _ in range(3):
            lease = await limiter.admit("user:x")
            await lease.charge(10)
            await lease.release()
    finally:
        await limiter.aclose()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "rate limits not enforced" in warnings[0]
    assert "secret-pw" not in warnings[0]


def rate_limits(env: dict[str, str]) -> RateLimits:
    return Settings.from_env(env).rate_limits


def test_settings_are_read_and_checked():
    limits = rate_limits(
        {"RATE_LIMIT_RPM": "20", "RATE_LIMIT_CONCURRENT": "0", "REDIS_URL": "redis://r:6379/0"}
    )
    assert limits.requests_per_minute == 20 and limits.concurrent_streams is None
    assert limits.redis_url == "redis://r:6379/0"
    assert limits.enabled and not rate_limits({}).enabled
    for name, bad in (("RATE_LIMIT_RPM", "many"), ("RATE_LIMIT_TOKENS_PER_DAY", "-5")):
        with pytest.raises(ConfigError, match=f"{name} must be a whole number.*0 means no limit"):
            rate_limits({name: bad})
    with pytest.raises(ConfigError, match="REDIS_URL"):
        rate_limits({"REDIS_URL": "localhost:6379"})
    assert "pw" not in repr(rate_limits({"REDIS_URL": "redis://:pw@h/0"}))


def test_keys_and_waits_read_well():
    assert limit_key("alice", "1.2.3.4") == "user:alice"
    assert limit_key(None, "1.2.3.4") == "ip:1.2.3.4"
    assert [wait_text(s) for s in (0.2, 59, 61, 3600, 11_520)] == [
        "1 s",
        "59 s",
        "2 min",
        "1 h",
        "3 h 12 min",
    ]
