"""Complete answers kept in Redis for every replica (`ANSWER_CACHE_TTL_S` with `REDIS_URL`).

Each answer is one key, `streamchat:answer:{fingerprint}`, holding its recorded pieces as JSON
with Redis's own expiry, so an identical question on any replica is replayed from it with no
upstream request. Redis failing never fails an answer: a read that fails is a miss, a write
that fails is dropped, and a warning is logged (without the key or the text).
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from streamchat.core.sharing import Recorded
from streamchat.core.types import Delta, Usage

log = logging.getLogger("streamchat.hosting.answer_cache")

PREFIX = "streamchat:answer:"


def encode(recorded: Recorded) -> str:
    pieces = []
    for offset, delta in recorded:
        usage = delta.usage
        pieces.append(
            {
                "at": round(offset, 4),
                "text": delta.text,
                "index": delta.index,
                "finish": delta.finish_reason,
                "usage": None
                if usage is None
                else [usage.prompt_tokens, usage.completion_tokens, usage.reasoning_tokens],
                "raw": delta.raw,
                "more": delta.more,
                "reasoning": delta.reasoning,
            }
        )
    return json.dumps(pieces, ensure_ascii=False)


def decode(text: str) -> Recorded:
    recorded = []
    for piece in json.loads(text):
        usage = piece["usage"]
        delta = Delta(
            text=piece["text"],
            index=piece["index"],
            finish_reason=piece["finish"],
            usage=None if usage is None else Usage(*usage),
            raw=piece["raw"],
            more=piece["more"],
            reasoning=piece["reasoning"],
        )
        recorded.append((float(piece["at"]), delta))
    return tuple(recorded)


class RedisAnswerCache:
    """The RemoteCache of core/sharing.py in Redis."""

    def __init__(self, url: str, ttl_s: float, *, client: Any = None) -> None:
        import redis.asyncio as redis  # only deployments with REDIS_URL need it

        self.ttl_ms = max(1, math.ceil(ttl_s * 1000))
        self._redis: Any = client or redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=2, health_check_interval=30
        )

    async def get(self, key: str) -> Recorded | None:
        try:
            text = await self._redis.get(PREFIX + key)
            return None if text is None else decode(text)
        except Exception as exc:  # Redis down or a value that is not ours: a miss
            log.warning("answer cache: could not read from Redis (%s)", type(exc).__name__)
            return None

    async def put(self, key: str, recorded: Recorded) -> None:
        try:
            await self._redis.set(PREFIX + key, encode(recorded), px=self.ttl_ms)
        except Exception as exc:
            log.warning("answer cache: could not write to Redis (%s)", type(exc).__name__)

    async def aclose(self) -> None:
        await self._redis.aclose()
