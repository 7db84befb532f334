"""Where cached answers live: this process's memory (bounded, least recently used first) or the fleet's Redis.

Both keep an answer for ``ttl_seconds`` and hold the same ``Cached`` record; a store that fails is a miss
(the request goes to the provider), never an error for the client.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("tokenctl.cache")


@dataclass(frozen=True, slots=True)
class Cached:
    body: bytes  # the answer exactly as the client got it: a JSON document, or the SSE events
    content_type: str
    stream: bool
    cost_nanousd: int  # what the answer cost when it was made: what each replay avoids
    model: str  # the model that made it
    stored_at: float

    def dumps(self) -> bytes:
        head = orjson.dumps([self.content_type, self.stream, self.cost_nanousd, self.model, self.stored_at])
        return head + b"\n" + self.body

    @classmethod
    def loads(cls, data: bytes) -> Cached:
        head, _, body = data.partition(b"\n")
        content_type, stream, cost, model, stored_at = orjson.loads(head)
        return cls(body, content_type, bool(stream), int(cost), model, float(stored_at))


class ResponseCache(Protocol):
    async def get(self, key: str) -> Cached | None: ...

    async def put(self, key: str, answer: Cached) -> None: ...

    async def close(self) -> None: ...


class MemoryResponseCache:
    def __init__(self, ttl_seconds: float, max_entries: int, max_bytes: int, clock: Callable[[], float]) -> None:
        self.ttl, self.max_entries, self.max_bytes, self.clock = ttl_seconds, max_entries, max_bytes, clock
        self._entries: OrderedDict[str, Cached] = OrderedDict()
        self.bytes = 0

    async def get(self, key: str) -> Cached | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if self.clock() - found.stored_at >= self.ttl:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return found

    async def put(self, key: str, answer: Cached) -> None:
        if len(answer.body) > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = answer
        self.bytes += len(answer.body)
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        self.bytes -= len(self._entries.pop(key).body)

    def __len__(self) -> int:
        return len(self._entries)

    async def close(self) -> None:
        self._entries.clear()


class RedisResponseCache:
    """Answers under ``<prefix>cache:<key>`` with Redis's own expiry; bound the memory with Redis's maxmemory."""

    def __init__(self, url: str, ttl_seconds: int, prefix: str, timeout: float, clock: Callable[[], float]) -> None:
        self.redis = Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self.ttl, self.prefix, self.clock = ttl_seconds, prefix, clock

    async def get(self, key: str) -> Cached | None:
        try:
            data = await self.redis.get(f"{self.prefix}cache:{key}")
        except RedisError as exc:
            log.warning("response cache: Redis get failed (%s); answering from the provider", exc)
            return None
        if not data:
            return None
        return Cached.loads(data if isinstance(data, bytes) else data.encode())

    async def put(self, key: str, answer: Cached) -> None:
        try:
            await self.redis.set(f"{self.prefix}cache:{key}", answer.dumps(), ex=self.ttl)
        except RedisError as exc:
            log.warning("response cache: Redis set failed (%s); the answer is not cached", exc)

    async def close(self) -> None:
        await self.redis.aclose()
