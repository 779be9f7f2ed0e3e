"""The result cache: the in-process backend's bounds and TTL, key isolation, and the Redis
backend against a real redis-server (hits, TTL, reset of our keys only, outage, recovery)."""

from __future__ import annotations

import asyncio

import redis

from tests.support.common import RedisServer
from vlgraph.cache import MemoryCache, RedisCache, ResultCache
from vlgraph.config import CacheConfig


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(coroutine):
    return asyncio.run(coroutine)


def test_memory_cache_is_bounded_and_evicts_the_least_recently_used() -> None:
    cache = MemoryCache(max_entries=2)
    run(cache.set("a", b"1", 60))
    run(cache.set("b", b"2", 60))
    assert run(cache.get("a")) == b"1"  # a is now the most recently used
    run(cache.set("c", b"3", 60))
    assert len(cache) == 2
    assert run(cache.get("b")) is None
    assert run(cache.get("a")) == b"1" and run(cache.get("c")) == b"3"


def test_memory_cache_expires_entries_after_their_ttl() -> None:
    clock = FakeClock()
    cache = MemoryCache(max_entries=10, clock=clock)
    run(cache.set("a", b"1", 5))
    clock.now += 4.9
    assert run(cache.get("a")) == b"1"
    clock.now += 0.2
    assert run(cache.get("a")) is None
    assert len(cache) == 0


def test_keys_follow_the_original_and_separate_models_prompts_and_settings() -> None:
    cache = ResultCache(backend=MemoryCache(10), ttl_s=60)
    image = b"image bytes"
    base = {"caption_prompt": None, "flag_prompt": None, "settings": {"source": "x"}}
    key = cache.image_key(image, "blip", base)
    assert key.startswith("vlgraph:v1:img:" + __import__("hashlib").sha256(image).hexdigest())
    others = {
        cache.image_key(image, "gemma", base),
        cache.image_key(image, "blip", {**base, "caption_prompt": "a photo of"}),
        cache.image_key(image, "blip", {**base, "flag_prompt": "a dog?"}),
        cache.image_key(image, "blip", {**base, "settings": {"source": "y"}}),
        cache.image_key(b"other image", "blip", base),
    }
    assert key not in others and len(others) == 5
    assert cache.image_key(image, "blip", dict(reversed(base.items()))) == key
    collection = cache.collection_key([b"a", b"b"], "gemma", base)
    assert collection.startswith("vlgraph:v1:collection:")
    assert collection != cache.collection_key([b"b", b"a"], "gemma", base)


def test_result_cache_counts_hits_and_misses() -> None:
    cache = ResultCache(backend=MemoryCache(10), ttl_s=60)
    assert run(cache.get("k")) is None
    run(cache.put("k", {"caption": "a dog", "flagged": False}))
    assert run(cache.get("k")) == {"caption": "a dog", "flagged": False}
    assert (cache.stats.hits, cache.stats.misses, cache.stats.errors) == (1, 1, 0)


def test_original_environment_variables_configure_the_cache(monkeypatch) -> None:
    monkeypatch.delenv("REDIS_HOST", raising=False)
    assert CacheConfig().backend == "memory"
    monkeypatch.setenv("REDIS_HOST", "cache.internal")
    monkeypatch.setenv("REDIS_PORT", "6380")
    monkeypatch.setenv("REDIS_DB", "3")
    monkeypatch.setenv("CACHE_TTL_SECONDS", "120")
    config = CacheConfig()
    assert (config.backend, config.redis_host, config.redis_port, config.redis_db) == (
        "redis",
        "cache.internal",
        6380,
        3,
    )
    assert config.ttl_s == 120


#: A database of the session's Redis that no application of the test session uses.
CACHE_TEST_DB = 7


def redis_result_cache(server: RedisServer, ttl_s: int = 60) -> ResultCache:
    backend = RedisCache("127.0.0.1", server.port, CACHE_TEST_DB, 0.25)
    return ResultCache(backend=backend, ttl_s=ttl_s)


def test_redis_hits_expire_and_reset_removes_only_our_keys(redis_server: RedisServer) -> None:
    other = redis.Redis(port=redis_server.port, db=CACHE_TEST_DB)
    other.set("someone-else:v1:img:abc", b"keep me")
    other.set("vlgraph-other:key", b"keep me too")

    async def scenario() -> None:
        cache = redis_result_cache(redis_server, ttl_s=1)
        await cache.put("vlgraph:v1:img:1:blip:p", {"caption": "one"})
        await cache.put("vlgraph:v1:img:2:blip:p", {"caption": "two"})
        assert await cache.get("vlgraph:v1:img:1:blip:p") == {"caption": "one"}
        assert 0 < other.ttl("vlgraph:v1:img:1:blip:p") <= 1
        await asyncio.sleep(1.3)
        assert await cache.get("vlgraph:v1:img:1:blip:p") is None
        longer = redis_result_cache(redis_server, ttl_s=60)
        for index in range(3):
            await longer.put(f"vlgraph:v1:img:{index}:blip:p", {"caption": str(index)})
        assert await longer.clear() == 3
        assert cache.stats.errors == 0

    run(scenario())
    assert other.get("someone-else:v1:img:abc") == b"keep me"
    assert other.get("vlgraph-other:key") == b"keep me too"
    assert other.keys("vlgraph:*") == []


def test_redis_outage_is_a_counted_miss_and_the_cache_returns_with_redis(
    redis_server: RedisServer,
) -> None:
    async def scenario() -> None:
        cache = redis_result_cache(redis_server)
        await cache.put("vlgraph:v1:img:x:blip:p", {"caption": "x"})
        redis_server.stop()
        try:
            started = asyncio.get_running_loop().time()
            assert await cache.get("vlgraph:v1:img:x:blip:p") is None
            await cache.put("vlgraph:v1:img:y:blip:p", {"caption": "y"})
            assert asyncio.get_running_loop().time() - started < 2
            assert cache.stats.errors == 2
        finally:
            redis_server.start()
        await cache.put("vlgraph:v1:img:z:blip:p", {"caption": "z"})
        assert await cache.get("vlgraph:v1:img:z:blip:p") == {"caption": "z"}
        assert cache.stats.errors == 2

    run(scenario())
