"""Rate limits per user (or per IP address when nobody is logged in): requests per minute,
answers streaming at once, and tokens per day.

The counts live in this process by default and in Redis when `REDIS_URL` is set, so every
replica enforces the same limits. Redis does the arithmetic atomically (Lua scripts); keys
expire by themselves, and a streaming slot is a lease with an expiry, so a replica that dies
mid-answer frees its slots when the lease runs out instead of holding them for ever.

If Redis cannot be reached, limits are not enforced (fail open) and a warning is logged at
most once a minute: a broken limiter must not take the chat down. Every refusal says what the
limit is and how long to wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from streamchat.core.errors import StreamChatError
from streamchat.core.metrics import USAGE_METER, UsageMeter

log = logging.getLogger("streamchat.hosting.limits")

MINUTE = 60.0
DAY = 86_400.0
LEASE_S = 600.0  # a streaming slot not released within this time is freed (a dead replica)
KEY_PREFIX = "streamchat:rl:"


class LimitExceeded(StreamChatError):
    """A request over a limit. `user_message` says which and how long to wait."""

    def __init__(self, user_message: str, *, kind: str, retry_after_s: float | None) -> None:
        super().__init__(user_message)
        self.user_message = user_message
        self.kind = kind  # "requests", "concurrent" or "tokens"
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class RateLimits:
    """The limits; None means no limit of that kind."""

    requests_per_minute: int | None = None
    concurrent_streams: int | None = None
    tokens_per_day: int | None = None
    redis_url: str | None = field(default=None, repr=False)

    @property
    def enabled(self) -> bool:
        return any((self.requests_per_minute, self.concurrent_streams, self.tokens_per_day))


def client_address(scope: Mapping[str, Any] | None) -> str | None:
    """The client's address from an ASGI scope: the connection's peer, or what a trusted proxy
    said (uvicorn has put it there). Not engine.io's REMOTE_ADDR: that is 127.0.0.1 for every
    Socket.IO client."""
    client = (scope or {}).get("client")
    return str(client[0]) if client else None


def limit_key(user: str | None, client_ip: str | None) -> str:
    """Whose limits apply: the logged-in user, else the client's address."""
    if user:
        return f"user:{user}"
    return f"ip:{client_ip or 'unknown'}"


def wait_text(seconds: float) -> str:
    """`12 s`, `4 min`, `3 h 12 min`: how long to wait, for people."""
    seconds = max(1, math.ceil(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = math.ceil(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, rest = divmod(minutes, 60)
    return f"{hours} h {rest} min" if rest else f"{hours} h"


# --- backends ---------------------------------------------------------------------------------


class Backend(Protocol):
    async def count_request(self, key: str, now: float, limit: int) -> float | None:
        """Count a request in the last minute; None if allowed, else seconds to wait."""
        ...

    async def take_slot(self, key: str, lease: str, now: float, limit: int) -> bool: ...

    async def free_slot(self, key: str, lease: str) -> None: ...

    async def tokens_used(self, key: str, day: int) -> int: ...

    async def add_tokens(self, key: str, day: int, tokens: int) -> None: ...

    async def aclose(self) -> None: ...


class MemoryBackend:
    """Counts in this process. Keys not touched for a day are dropped."""

    def __init__(self) -> None:
        self._requests: dict[str, deque[float]] = {}
        self._slots: dict[str, dict[str, float]] = {}
        self._tokens: dict[tuple[str, int], int] = {}
        self._lock = asyncio.Lock()
        self._last_sweep = 0.0

    async def count_request(self, key: str, now: float, limit: int) -> float | None:
        async with self._lock:
            self._sweep(now)
            times = self._requests.setdefault(key, deque())
            while times and times[0] <= now - MINUTE:
                times.popleft()
            if len(times) >= limit:
                return times[0] + MINUTE - now
            times.append(now)
            return None

    async def take_slot(self, key: str, lease: str, now: float, limit: int) -> bool:
        async with self._lock:
            slots = self._slots.setdefault(key, {})
            for held, expires in list(slots.items()):
                if expires <= now:
                    del slots[held]
            if len(slots) >= limit:
                return False
            slots[lease] = now + LEASE_S
            return True

    async def free_slot(self, key: str, lease: str) -> None:
        async with self._lock:
            slots = self._slots.get(key)
            if slots is not None:
                slots.pop(lease, None)
                if not slots:
                    del self._slots[key]

    async def tokens_used(self, key: str, day: int) -> int:
        return self._tokens.get((key, day), 0)

    async def add_tokens(self, key: str, day: int, tokens: int) -> None:
        async with self._lock:
            self._tokens[(key, day)] = self._tokens.get((key, day), 0) + tokens

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < MINUTE:
            return
        self._last_sweep = now
        for key in [
            k for k, times in self._requests.items() if not times or times[-1] <= now - MINUTE
        ]:
            del self._requests[key]
        today = int(now // DAY)
        for old in [k for k in self._tokens if k[1] < today]:
            del self._tokens[old]

    async def aclose(self) -> None:
        return None


# KEYS[1] the request log; ARGV now, window, limit, member. Returns 0 or ms to wait.
_COUNT_REQUEST = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1] - ARGV[2])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, math.ceil((oldest[2] + ARGV[2] - ARGV[1]) * 1000))
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('EXPIRE', KEYS[1], math.ceil(ARGV[2]) + 1)
return 0
"""

# KEYS[1] the leases (member: lease id, score: expiry); ARGV now, lease, limit, lease_s.
_TAKE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[1] + ARGV[4], ARGV[2])
redis.call('EXPIRE', KEYS[1], math.ceil(ARGV[4]) + 1)
return 1
"""


class RedisBackend:
    """Counts in Redis, shared by every replica. Times come from the callers' clocks (the
    replicas' clocks must roughly agree, as NTP keeps them)."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as redis  # imported here: only deployments with REDIS_URL need it

        self.url = url
        self._redis: Any = redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._count = self._redis.register_script(_COUNT_REQUEST)
        self._take = self._redis.register_script(_TAKE_SLOT)

    async def count_request(self, key: str, now: float, limit: int) -> float | None:
        wait_ms = await self._count(
            keys=[f"{KEY_PREFIX}req:{key}"], args=[now, MINUTE, limit, uuid.uuid4().hex]
        )
        return int(wait_ms) / 1000 if int(wait_ms) else None

    async def take_slot(self, key: str, lease: str, now: float, limit: int) -> bool:
        taken = await self._take(
            keys=[f"{KEY_PREFIX}slots:{key}"], args=[now, lease, limit, LEASE_S]
        )
        return bool(int(taken))

    async def free_slot(self, key: str, lease: str) -> None:
        await self._redis.zrem(f"{KEY_PREFIX}slots:{key}", lease)

    async def tokens_used(self, key: str, day: int) -> int:
        value = await self._redis.get(f"{KEY_PREFIX}tokens:{key}:{day}")
        return int(value or 0)

    async def add_tokens(self, key: str, day: int, tokens: int) -> None:
        name = f"{KEY_PREFIX}tokens:{key}:{day}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incrby(name, tokens)
            pipe.expire(name, int(DAY) * 2)
            await pipe.execute()

    async def aclose(self) -> None:
        await self._redis.aclose()


# --- the limiter ------------------------------------------------------------------------------


class Lease:
    """One admitted answer: holds a streaming slot until released; charges its tokens."""

    def __init__(self, limiter: RateLimiter, key: str, slot: str | None) -> None:
        self._limiter = limiter
        self.key = key
        self._slot = slot

    async def charge(self, tokens: int) -> None:
        if tokens > 0 and self._limiter.limits.tokens_per_day:
            await self._limiter._guarded(
                self._limiter.backend.add_tokens(self.key, self._limiter._day(), tokens), None
            )

    async def release(self) -> None:
        slot, self._slot = self._slot, None
        if slot is not None:
            await self._limiter._guarded(self._limiter.backend.free_slot(self.key, slot), None)

    @contextlib.asynccontextmanager
    async def metered(self) -> AsyncIterator[UsageMeter]:
        """Run a block as this admitted answer: the tokens of every answer that finishes in it
        are counted (a UsageMeter is the current one meanwhile), then charged, and the slot
        released, however the block ends."""
        meter = UsageMeter()
        token = USAGE_METER.set(meter)
        try:
            yield meter
        finally:
            USAGE_METER.reset(token)
            try:
                await self.charge(meter.tokens)
            finally:
                await self.release()

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


class RateLimiter:
    """`await limiter.admit(key)` before an answer: returns a Lease (release it when the
    answer ends, charge it the tokens used) or raises LimitExceeded."""

    def __init__(
        self,
        limits: RateLimits,
        backend: Backend | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limits = limits
        self.backend: Backend = backend or (
            RedisBackend(limits.redis_url) if limits.redis_url else MemoryBackend()
        )
        self._clock = clock
        self._last_warning = -math.inf

    @property
    def where(self) -> str:
        from streamchat.settings import public_url  # settings imports this module

        return public_url(self.limits.redis_url) if self.limits.redis_url else "this process"

    def _day(self) -> int:
        return int(self._clock() // DAY)

    async def admit(self, key: str) -> Lease:
        try:
            return await self._admit(key)
        except LimitExceeded as exc:
            from streamchat.core.metrics import PROCESS_METRICS

            PROCESS_METRICS.rate_limited.labels(kind=exc.kind).inc()
            log.info("rate limited key=%s kind=%s", key.split(":", 1)[0], exc.kind)
            raise

    async def _admit(self, key: str) -> Lease:
        limits = self.limits
        now = self._clock()
        if limits.tokens_per_day:
            used = await self._guarded(self.backend.tokens_used(key, self._day()), 0)
            if used >= limits.tokens_per_day:
                reset = (self._day() + 1) * DAY - now
                raise LimitExceeded(
                    f"You have used today's {limits.tokens_per_day:,} tokens. The limit resets "
                    f"in {wait_text(reset)} (midnight UTC).",
                    kind="tokens",
                    retry_after_s=reset,
                )
        # A free slot first, so a message refused for that does not count as a request.
        slot = None
        if limits.concurrent_streams:
            lease_id = uuid.uuid4().hex
            taken = await self._guarded(
                self.backend.take_slot(key, lease_id, now, limits.concurrent_streams), True
            )
            if not taken:
                many = limits.concurrent_streams
                answers = "an answer" if many == 1 else f"{many} answers"
                raise LimitExceeded(
                    f"You already have {answers} streaming. Wait for one to finish, or stop it, "
                    "then send your message again.",
                    kind="concurrent",
                    retry_after_s=None,
                )
            slot = lease_id
        lease = Lease(self, key, slot)
        if limits.requests_per_minute:
            wait = await self._guarded(
                self.backend.count_request(key, now, limits.requests_per_minute), None
            )
            if wait is not None:
                await lease.release()
                raise LimitExceeded(
                    f"You have sent {limits.requests_per_minute} messages in the last minute. "
                    f"Try again in {wait_text(wait)}.",
                    kind="requests",
                    retry_after_s=wait,
                )
        return lease

    async def _guarded(self, operation: Any, fallback: Any) -> Any:
        """Run a backend operation; if the store is unreachable, log (at most once a minute)
        and go on with `fallback`: limits are not enforced while it is down."""
        try:
            return await operation
        except Exception as exc:  # redis.ConnectionError, TimeoutError, ...
            now = time.monotonic()
            if now - self._last_warning > MINUTE:
                self._last_warning = now
                log.warning(
                    "rate limits not enforced: the store at %s failed (%s)",
                    self.where,
                    type(exc).__name__,
                )
            return fallback

    async def aclose(self) -> None:
        await self.backend.aclose()
