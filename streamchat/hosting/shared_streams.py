"""Live answers shared by every replica (`SHARED_ANSWERS` with `REDIS_URL`).

Identical requests that reach different replicas while the first still streams make one
upstream request. The replica that asks first takes a lease and leads; it mirrors every piece
into a Redis Stream, and the others follow that stream instead of asking upstream (from the
first piece, then live), each feeding its own viewers as core/sharing.py does in a process.
Keys, with `fp` a request's fingerprint and `run` one leader's id:

- `streamchat:shared:{fp}:lead`: the leading run's id; `SET NX PX`, renewed by the leader
  every third of the lease while it streams, released when it ends.
- `streamchat:shared:{fp}:{run}`: the Redis Stream of pieces (each entry the pieces written
  together, in the encoding of answer_cache.py), then one end entry: `complete`, `error`
  (the provider's error, as the user is told it) or `closed` (every viewer left). It expires
  `END_KEEP_S` after the end, or `LIVE_KEEP_S` after the leader's last sign of life.
- `streamchat:shared:{fp}:{run}:viewers`: the followers (a set), each alive while its key
  `...:viewers:{id}` is (refreshed by the follower as it reads). A leader with no viewer of
  its own left goes on while any follower is alive, then closes upstream.

A leader that goes away (its lease ends without an end entry) or closes breaks its followers'
streams (LeaderGone, a StreamBroken "dropped"): before their first piece they join again (one
of them leads and asks upstream), after it their viewers resume the answer as after any
dropped connection (`STREAM_RESUMES`; the resumed requests, identical, are shared again).
Redis failing never fails an answer: a join that fails shares within the process only, a
mirror that fails stops mirroring, a follower whose reads fail is a leader gone.
Warnings name the failure, never a key or text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from streamchat.core import errors
from streamchat.core.errors import ProviderError, StreamBroken
from streamchat.core.sharing import LeaderGone, RemoteJoin
from streamchat.core.types import Delta
from streamchat.hosting.answer_cache import decode, encode

log = logging.getLogger("streamchat.hosting.shared_streams")

PREFIX = "streamchat:shared:"
LEASE_S = 6.0  # a leader that shows no sign of life this long is gone
END_KEEP_S = 30.0  # an ended stream is kept this long for followers still reading it
LIVE_KEEP_S = 120.0  # a stream whose leader went away is deleted this long after
JOIN_TIMEOUT_S = 2.0  # a Redis that does not answer this fast is down, for a join

# Take the lead, or say who has it: {1, run} or {0, the leader's run}.
CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1, ARGV[1]} end
return {0, redis.call('GET', KEYS[1])}
"""
# The leader's heartbeat: 1 while the lease is still its own.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  return 1
end
return 0
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Followers alive now; the ones gone are forgotten.
WATCHED = """
local alive = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', KEYS[1] .. ':' .. id) == 1 then alive = alive + 1
  else redis.call('SREM', KEYS[1], id) end
end
return alive
"""

CLOSED = "The shared answer was closed before it ended."
GONE = "The shared answer stopped before it ended."
# The errors a leader passes on, by kind (what the user is told, never a detail).
_ERRORS: dict[str, type[ProviderError]] = {
    cls.kind: cls
    for cls in (
        errors.ProviderError,
        errors.AuthenticationFailed,
        errors.ModelNotFound,
        errors.BadRequest,
        errors.RateLimited,
        errors.ProviderUnavailable,
        errors.ProviderUnreachable,
        errors.StreamBroken,
        errors.InputRejected,
    )
}


def lead_key(key: str) -> str:
    return f"{PREFIX}{key}:lead"


def stream_key(key: str, run: str) -> str:
    return f"{PREFIX}{key}:{run}"


def encode_end(error: BaseException | None) -> dict[str, str]:
    """The end entry's fields for an answer that ended with `error` (None: complete)."""
    if error is None:
        return {"end": "complete"}
    if isinstance(error, asyncio.CancelledError):
        return {"end": "closed"}
    if isinstance(error, ProviderError):
        fields: dict[str, Any] = {
            "kind": error.kind,
            "message": error.user_message,
            "status": error.status,
        }
        if isinstance(error, StreamBroken):
            fields["cause"] = error.cause
        if isinstance(error, errors.RateLimited):
            fields["retry_after"] = error.retry_after
    else:
        fields = {"kind": "provider_error", "message": "The answer failed.", "status": None}
    return {"end": "error", "error": json.dumps(fields, ensure_ascii=False)}


def decode_end(fields: dict[str, str]) -> ProviderError | None:
    """The error to raise for an end entry; None for a complete answer."""
    end = fields.get("end")
    if end == "complete":
        return None
    if end != "error":
        return LeaderGone(CLOSED, cause="dropped")
    data = json.loads(fields.get("error") or "{}")
    cls = _ERRORS.get(str(data.get("kind")), ProviderError)
    message = str(data.get("message") or "The answer failed.")
    status = data.get("status")
    if cls is StreamBroken:
        return StreamBroken(message, cause=str(data.get("cause") or "dropped"), status=status)
    if cls is errors.RateLimited:
        return errors.RateLimited(message, status=status, retry_after=data.get("retry_after"))
    return cls(message, status=status)


@dataclass(frozen=True, slots=True)
class _End:
    error: BaseException | None


class RedisSharedStreams:
    """The LiveRemote of core/sharing.py in Redis."""

    def __init__(
        self,
        url: str,
        *,
        lease_s: float = LEASE_S,
        end_keep_s: float = END_KEEP_S,
        live_keep_s: float = LIVE_KEEP_S,
        join_timeout_s: float = JOIN_TIMEOUT_S,
        client: Any = None,
    ) -> None:
        import redis.asyncio as redis  # only deployments with REDIS_URL need it

        self.lease_ms = max(30, math.ceil(lease_s * 1000))
        self.check_s = lease_s / 3  # heartbeats, viewer refreshes, checks on the leader
        self.end_keep_ms = max(1, math.ceil(end_keep_s * 1000))
        self.live_keep_ms = max(self.lease_ms, math.ceil(live_keep_s * 1000))
        # Every answer waits for its join: a hung Redis must not hold it for a socket timeout.
        self.join_timeout_s = join_timeout_s
        # Reads block up to check_s, so the socket may wait longer than that.
        self._redis: Any = client or redis.from_url(
            url,
            socket_connect_timeout=2,
            socket_timeout=self.check_s + 5,
            health_check_interval=30,
        )
        self._claim = self._redis.register_script(CLAIM)
        self._renew = self._redis.register_script(RENEW)
        self._release = self._redis.register_script(RELEASE)
        self._watched = self._redis.register_script(WATCHED)
        self._writers: set[asyncio.Task[None]] = set()
        self.failures = 0  # Redis failures seen (for tests)
        self.watch_checks = 0  # leaders' questions for remote viewers answered (for tests)

    def warn(self, what: str, exc: BaseException) -> None:
        self.failures += 1
        log.warning("shared answers: %s: Redis failed (%s)", what, type(exc).__name__)

    # --- any replica ----------------------------------------------------------------------

    async def join(self, key: str) -> RemoteJoin | None:
        run = uuid.uuid4().hex
        claim = asyncio.ensure_future(self._claim(keys=[lead_key(key)], args=[run, self.lease_ms]))
        try:
            won, holder = await asyncio.wait_for(asyncio.shield(claim), self.join_timeout_s)
        except asyncio.CancelledError:
            # Nobody wants the answer any more: a lease taken meanwhile is let go.
            claim.add_done_callback(lambda done: self._let_go(done, key, run))
            raise
        except Exception as exc:
            # Down or too slow: a lease the claim takes after all is let go (not led).
            claim.add_done_callback(lambda done: self._let_go(done, key, run))
            self.warn("a live answer is shared within this replica only", exc)
            return None
        if int(won):
            return RemoteJoin(mirror=_Mirror(self, key, run))
        leader = _text(holder)
        return RemoteJoin(feed=lambda: self._follow(key, leader))

    def _let_go(self, claim: asyncio.Future[Any], key: str, run: str) -> None:
        if claim.cancelled() or claim.exception() is not None or not int(claim.result()[0]):
            return
        task = asyncio.ensure_future(self._release(keys=[lead_key(key)], args=[run]))
        task.add_done_callback(lambda done: done.cancelled() or done.exception())

    # --- a follower -----------------------------------------------------------------------

    async def _follow(self, key: str, run: str) -> AsyncGenerator[tuple[float, Delta], None]:
        """The leader's pieces from the first, until its end entry."""
        stream, lead = stream_key(key, run), lead_key(key)
        viewers = f"{stream}:viewers"
        me = uuid.uuid4().hex[:12]
        last = "0-0"
        refreshed: float | None = None
        try:
            while True:
                now = time.monotonic()
                if refreshed is None or now - refreshed >= self.check_s:
                    # Alive as a viewer while reading: the leader keeps its upstream for us.
                    async with self._redis.pipeline(transaction=False) as pipe:
                        pipe.sadd(viewers, me)
                        pipe.pexpire(viewers, self.live_keep_ms)
                        pipe.set(f"{viewers}:{me}", 1, px=self.lease_ms)
                        await pipe.execute()
                    refreshed = now
                found = await self._redis.xread(
                    {stream: last}, count=200, block=max(1, int(self.check_s * 1000))
                )
                entries = found[0][1] if found else []
                gone = False
                if not entries and _text(await self._redis.get(lead)) != run:
                    # The leader let go: its last entries end the stream, unless it went away.
                    entries = await self._redis.xrange(stream, min=f"({last}")
                    gone = True
                for entry_id, raw in entries:
                    last = _text(entry_id)
                    fields = {_text(name): _text(value) for name, value in raw.items()}
                    if "end" in fields:
                        error = decode_end(fields)
                        if error is not None:
                            raise error
                        return
                    for piece in decode(fields["p"]):
                        yield piece
                if gone:
                    raise LeaderGone(GONE, cause="dropped")
        except (ProviderError, GeneratorExit, asyncio.CancelledError):
            raise
        except Exception as exc:
            self.warn("a live answer followed from another replica broke off", exc)
            raise LeaderGone(GONE, cause="dropped") from None
        finally:
            with contextlib.suppress(Exception):
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.srem(viewers, me)
                    pipe.delete(f"{viewers}:{me}")
                    await pipe.execute()

    async def aclose(self) -> None:
        for task in list(self._writers):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 2)
        with contextlib.suppress(Exception):
            await self._redis.aclose()


class _Mirror:
    """The leader's side: pieces and the end into the Redis Stream, in order, and the lease
    renewed meanwhile. Never blocks the answer and never fails it."""

    def __init__(self, store: RedisSharedStreams, key: str, run: str) -> None:
        self.store = store
        self.check_s = store.check_s
        self.lead, self.run = lead_key(key), run
        self.stream = stream_key(key, run)
        self.viewers = f"{self.stream}:viewers"
        self._queue: asyncio.Queue[tuple[float, Delta] | _End] = asyncio.Queue()
        self.failed = False
        task = asyncio.create_task(self._write())
        store._writers.add(task)
        task.add_done_callback(store._writers.discard)

    def put(self, offset: float, delta: Delta) -> None:
        self._queue.put_nowait((offset, delta))

    def end(self, error: BaseException | None) -> None:
        self._queue.put_nowait(_End(error))

    async def watched(self) -> bool:
        if self.failed:
            return False
        try:
            alive = int(await self.store._watched(keys=[self.viewers]))
            self.store.watch_checks += 1
            return alive > 0
        except Exception as exc:
            self.store.warn("viewers on other replicas are unknown", exc)
            return False

    def _fail(self, exc: BaseException) -> None:
        self.failed = True
        self.store.warn("a live answer is no longer mirrored for other replicas", exc)

    async def _write(self) -> None:
        store, redis = self.store, self.store._redis
        renewed = time.monotonic()
        while True:
            try:
                first = await asyncio.wait_for(self._queue.get(), self.check_s)
                batch = [first]
                while not self._queue.empty():
                    batch.append(self._queue.get_nowait())
            except TimeoutError:
                batch = []
            pieces = [item for item in batch if not isinstance(item, _End)]
            end = next((item for item in batch if isinstance(item, _End)), None)
            if not self.failed:
                try:
                    async with redis.pipeline(transaction=False) as pipe:
                        if pieces:
                            pipe.xadd(self.stream, {"p": encode(tuple(pieces))})
                        if end is not None:
                            pipe.xadd(self.stream, encode_end(end.error))
                            pipe.pexpire(self.stream, store.end_keep_ms)
                            pipe.pexpire(self.viewers, store.end_keep_ms)
                        elif pieces:
                            pipe.pexpire(self.stream, store.live_keep_ms)
                        await pipe.execute()
                    if end is not None:
                        await store._release(keys=[self.lead], args=[self.run])
                    elif time.monotonic() - renewed >= self.check_s:
                        renewed = time.monotonic()
                        mine = await store._renew(
                            keys=[self.lead, self.stream],
                            args=[self.run, store.lease_ms, store.live_keep_ms],
                        )
                        if not int(mine):
                            self._fail(LookupError("the lease was lost"))
                except Exception as exc:
                    self._fail(exc)
            if end is not None:
                return


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
