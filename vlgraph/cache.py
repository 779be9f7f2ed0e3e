"""The result cache: model answers that are pure functions of their inputs, kept by key.

Two backends behind :class:`CacheBackend`: :class:`MemoryCache` (in-process, bounded LRU with
TTL; the default, needs nothing) and :class:`RedisCache` (redis-py asyncio, shared by every
ingress replica). A Redis failure never fails a request: the call gives up after a short
timeout, counts the error and behaves as a miss; redis-py reconnects on a later call, so the
cache comes back with Redis.

Keys are namespaced and versioned as the original multi-model captioning service wrote them,
and carry the model and a digest of every parameter that changes the answer, so one model's
answer is never served for another's request:
``{namespace}:v1:img:{sha256(image)}:{model}:{params}`` and
``{namespace}:v1:collection:{sha256(image hashes)}:{model}:{params}``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

logger = logging.getLogger("ray.serve")

KEY_VERSION = "v1"


class CacheBackend(Protocol):
    """Where cached values live."""

    async def get(self, key: str) -> bytes | None:
        """The value, or None when absent or expired."""

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        """Store ``value`` for ``ttl_s`` seconds."""

    async def delete_prefix(self, prefix: str) -> int:
        """Remove every key starting with ``prefix``; how many were removed."""

    async def ping(self) -> bool:
        """Whether the backend answers right now."""


class MemoryCache:
    """In-process LRU cache with a per-entry TTL; ``max_entries`` bounds it."""

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic):
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._max_entries = max_entries
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        """The value, or None when absent or expired (an expired entry is dropped)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        """Store ``value``, evicting the least recently used entry past the bound."""
        self._entries[key] = (self._clock() + ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def ping(self) -> bool:
        """Always reachable: it lives in this process."""
        return True

    async def delete_prefix(self, prefix: str) -> int:
        """Remove every key starting with ``prefix``."""
        doomed = [key for key in self._entries if key.startswith(prefix)]
        for key in doomed:
            del self._entries[key]
        return len(doomed)


class RedisCache:
    """Redis through redis-py asyncio, with short timeouts; errors propagate to
    :class:`ResultCache`, which counts them and carries on without the cache."""

    def __init__(self, host: str, port: int, db: int, timeout_s: float):
        import redis.asyncio as redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._client = redis.Redis(
            host=host,
            port=port,
            db=db,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # redis-py retries a failed command three times with backoff by default (seconds
            # per request while Redis is down); one try, then carry on without the cache.
            retry=Retry(NoBackoff(), 0),
        )

    async def get(self, key: str) -> bytes | None:
        """The value, or None when absent (Redis expires keys itself)."""
        return await self._client.get(key)

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        """Store ``value`` with a TTL."""
        await self._client.set(key, value, ex=ttl_s)

    async def ping(self) -> bool:
        """Whether Redis answers PING within the timeout."""
        try:
            return bool(await self._client.ping())
        except Exception:
            return False

    async def delete_prefix(self, prefix: str) -> int:
        """Remove this prefix's keys with SCAN + UNLINK (never FLUSHDB: other data stays)."""
        removed = 0
        batch: list[bytes] = []
        async for key in self._client.scan_iter(match=_glob_escape(prefix) + "*", count=500):
            batch.append(key)
            if len(batch) == 500:
                removed += await self._client.unlink(*batch)
                batch = []
        if batch:
            removed += await self._client.unlink(*batch)
        return removed


def _glob_escape(text: str) -> str:
    return "".join(f"\\{char}" if char in "*?[]\\" else char for char in text)


@dataclass
class CacheStats:
    """Counters since the replica started."""

    hits: int = 0
    misses: int = 0
    errors: int = 0


@dataclass
class ResultCache:
    """Keys, TTL and failure tolerance over a backend; JSON values."""

    backend: CacheBackend
    ttl_s: int
    namespace: str = "vlgraph"
    stats: CacheStats = field(default_factory=CacheStats)
    on_event: Callable[[str], None] | None = None
    """Called with ``hit``, ``miss`` or ``error`` (the ingress exports them as metrics)."""

    def image_key(self, image: bytes, model: str, params: dict[str, Any]) -> str:
        """Key of one image's answer by ``model`` under ``params``."""
        return self._key("img", _sha256(image), model, params)

    def text_key(self, text: str, model: str, params: dict[str, Any]) -> str:
        """Key of one text's answer (an embedding) by ``model`` under ``params``."""
        return self._key("text", _sha256(text.encode()), model, params)

    def collection_key(self, images: Sequence[bytes], model: str, params: dict[str, Any]) -> str:
        """Key of one answer about a set of images, in their order."""
        hashes = "".join(_sha256(image) for image in images)
        return self._key("collection", _sha256(hashes.encode()), model, params)

    def _key(self, kind: str, digest: str, model: str, params: dict[str, Any]) -> str:
        canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
        params_digest = _sha256(canonical.encode())[:16]
        return f"{self.namespace}:{KEY_VERSION}:{kind}:{digest}:{model}:{params_digest}"

    async def get(self, key: str) -> dict[str, Any] | None:
        """The cached answer, or None on a miss or a backend failure (counted)."""
        try:
            raw = await self.backend.get(key)
        except Exception as error:  # any backend failure degrades to a miss
            self._failed("get", error)
            return None
        if raw is None:
            self.stats.misses += 1
            self._report("miss")
            return None
        self.stats.hits += 1
        self._report("hit")
        return json.loads(raw)

    async def put(self, key: str, value: dict[str, Any]) -> None:
        """Store an answer; a backend failure is counted and ignored."""
        try:
            await self.backend.set(key, json.dumps(value).encode(), self.ttl_s)
        except Exception as error:
            self._failed("set", error)

    async def clear(self) -> int:
        """Remove this service's keys only; how many were removed."""
        return await self.backend.delete_prefix(f"{self.namespace}:")

    def _report(self, event: str) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def _failed(self, operation: str, error: Exception) -> None:
        self.stats.errors += 1
        self._report("error")
        logger.warning("cache %s failed, continuing without the cache: %r", operation, error)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_result_cache(
    config: Any, on_event: Callable[[str], None] | None = None
) -> ResultCache | None:
    """The cache a :class:`~vlgraph.config.CacheConfig` describes; None when it is off."""
    if config.backend == "none":
        return None
    backend: CacheBackend
    if config.backend == "redis":
        backend = RedisCache(
            config.redis_host, config.redis_port, config.redis_db, config.timeout_s
        )
    else:
        backend = MemoryCache(config.max_entries)
    return ResultCache(
        backend=backend, ttl_s=config.ttl_s, namespace=config.namespace, on_event=on_event
    )
