"""Per-caller budgets: requests per minute (the ``limits`` library's moving window) and
requests in flight, kept in this process or, when the profile has Redis, in Redis so that
every ingress replica shares them.

Redis never fails a request: an error (or a Redis that does not answer within its timeout)
admits the request, is counted through ``on_fail_open``, and Redis is left alone for
:data:`REDIS_RETRY_S` so that a Redis that is down costs one timeout, not one per request.

In Redis a request in flight is a member of a sorted set scored by its lease's end: a replica
that dies holding slots frees them when their lease (the longest a request may run) ends.
``limits`` has no concurrency limit, hence the small script below.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from vlgraph.access_config import RateLimit

logger = logging.getLogger("ray.serve")

#: After a Redis failure, seconds during which requests are admitted without asking Redis.
REDIS_RETRY_S = 1.0
#: Seconds between two warnings about Redis being unreachable.
WARNING_INTERVAL_S = 10.0

# KEYS[1]: the caller's set; ARGV: limit, member, lease seconds. Redis's own clock, so that
# replicas on different machines agree on when a lease ends.
_ACQUIRE_SCRIPT = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], t + tonumber(ARGV[3]), ARGV[2])
  redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3])) + 1)
  return 1
end
return 0
"""


async def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Admission:
    """Whether a request may run, the ``RateLimit-*`` headers to send, and how to give its
    slot back (await :attr:`release` once, when the request is over)."""

    allowed: bool
    reason: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    retry_after_s: int = 1
    release: Callable[[], Awaitable[None]] = _nothing


@dataclass(frozen=True)
class RedisTarget:
    """Where the shared budgets live."""

    host: str
    port: int
    db: int
    timeout_s: float
    namespace: str = "vlgraph-access"


class CallerBudgets:
    """Admits or refuses one caller's request against its :class:`RateLimit`."""

    def __init__(
        self,
        redis: RedisTarget | None,
        lease_s: float,
        on_fail_open: Callable[[], None] = lambda: None,
    ):
        self._lease_s = lease_s
        self._on_fail_open = on_fail_open
        self._redis_target = redis
        self._redis: Any = None
        self._acquire: Any = None
        storage: Storage
        if redis is None:
            storage = MemoryStorage()
        else:
            import redis.asyncio as redis_asyncio
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            self._redis = redis_asyncio.Redis(
                host=redis.host,
                port=redis.port,
                db=redis.db,
                socket_timeout=redis.timeout_s,
                socket_connect_timeout=redis.timeout_s,
                retry=Retry(NoBackoff(), 0),
            )
            self._acquire = self._redis.register_script(_ACQUIRE_SCRIPT)
            storage = RedisStorage(
                f"async+redis://{redis.host}:{redis.port}/{redis.db}",
                implementation="redispy",
                key_prefix=f"{redis.namespace}:rate",
                connection_pool=self._redis.connection_pool,
            )
        self._limiter = MovingWindowRateLimiter(storage)
        self._in_flight: dict[str, int] = defaultdict(int)
        self._redis_down_until = 0.0
        self._last_warning = -math.inf
        self._members = (f"{os.getpid()}-{uuid.uuid4().hex[:8]}-{n}" for n in itertools.count())

    @property
    def shared(self) -> bool:
        """Whether the budgets live in Redis (shared by every ingress replica)."""
        return self._redis is not None

    async def admit(self, caller: str, limit: RateLimit) -> Admission:
        """Take one request of ``caller``'s budget, or say why not."""
        headers: dict[str, str] = {}
        if limit.requests_per_minute is not None:
            item = RateLimitItemPerMinute(limit.requests_per_minute)
            window = await self._guarded(self._take_rate, item, caller)
            if window is not None:
                allowed, remaining, reset_s = window
                headers = {
                    "RateLimit-Limit": str(limit.requests_per_minute),
                    "RateLimit-Remaining": str(max(0, remaining)),
                    "RateLimit-Reset": str(reset_s),
                }
                if not allowed:
                    return Admission(False, "rate_limited", headers, retry_after_s=reset_s)
        if limit.max_in_flight is None:
            return Admission(True, headers=headers)
        release = await self._guarded(self._take_slot, caller, limit.max_in_flight)
        if release is False:
            return Admission(False, "too_many_in_flight", headers, retry_after_s=1)
        return Admission(True, headers=headers, release=release or _nothing)

    async def _take_rate(self, item: RateLimitItemPerMinute, caller: str) -> tuple[bool, int, int]:
        allowed = await self._limiter.hit(item, caller)
        stats = await self._limiter.get_window_stats(item, caller)
        reset_s = max(1, math.ceil(stats.reset_time - time.time()))
        return allowed, stats.remaining, reset_s

    async def _take_slot(self, caller: str, limit: int) -> Callable[[], Awaitable[None]] | bool:
        if self._redis is None:
            if self._in_flight[caller] >= limit:
                return False
            self._in_flight[caller] += 1
            return self._local_release(caller)
        key = f"{self._redis_target.namespace}:inflight:{caller}"
        member = next(self._members)
        if not await self._acquire(keys=[key], args=[limit, member, self._lease_s]):
            return False
        return self._redis_release(key, member)

    def _local_release(self, caller: str) -> Callable[[], Awaitable[None]]:
        async def release() -> None:
            self._in_flight[caller] -= 1
            if self._in_flight[caller] <= 0:
                del self._in_flight[caller]

        return release

    def _redis_release(self, key: str, member: str) -> Callable[[], Awaitable[None]]:
        async def release() -> None:
            # A lost release frees itself when the lease ends.
            await self._guarded(self._redis.zrem, key, member)

        return release

    async def _guarded(self, operation: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """``operation``'s result; None (admit) when Redis fails or was just found down."""
        if self._redis is not None and time.monotonic() < self._redis_down_until:
            self._on_fail_open()
            return None
        try:
            return await operation(*args)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if self._redis is None:
                raise
            self._redis_down_until = time.monotonic() + REDIS_RETRY_S
            self._on_fail_open()
            if time.monotonic() - self._last_warning > WARNING_INTERVAL_S:
                self._last_warning = time.monotonic()
                logger.warning(
                    "rate limits: Redis failed (%s); admitting requests without limits until "
                    "it answers again",
                    type(error).__name__,
                )
            return None
