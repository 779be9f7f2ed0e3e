"""The cache through a real serve.run on Redis: "cache": true on a repeat, never across models
or prompts, requests still answered while Redis is down, and the cache back with Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from graphs.app import build_app
from tests.conftest import (
    RedisServer,
    jpeg_bytes,
    make_test_config,
    noise_image,
    wait_until_healthy,
)
from tests.test_metrics import series_value
from vlgraph.config import AppConfig

pytestmark = pytest.mark.integration

APP_NAME = "vlgraph-cached"


@pytest.fixture(scope="module")
def cached_url(
    ray_instance: int, checkpoint_cache: Path, image_root: Path, redis_server: RedisServer
) -> Iterator[str]:
    """BLIP and Gemma behind an ingress that caches in the test's redis-server."""
    from ray import serve

    args = make_test_config(checkpoint_cache, image_root).model_dump(mode="json")
    args["models"].update(blip2=None, intern_vlm=None)
    args["cache"] = {"backend": "redis", "redis_host": "127.0.0.1", "redis_port": redis_server.port}
    args["admin"] = {"api_key": None, "debug": True}
    serve.run(build_app(AppConfig.model_validate(args)), name=APP_NAME, route_prefix="/cached")
    url = f"http://127.0.0.1:{ray_instance}/cached"
    wait_until_healthy(url)
    yield url
    serve.delete(APP_NAME)


def caption(url: str, seed: int, **params: str) -> dict:
    files = [("images", ("a.jpg", jpeg_bytes(noise_image(seed)), "image/jpeg"))]
    response = httpx.post(f"{url}/api/caption-images", params=params, files=files, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


def test_a_repeat_is_answered_by_the_cache(cached_url: str, redis_server: RedisServer) -> None:
    first = caption(cached_url, 100, model="blip", flag_caption_prompt="Is it a dog?")
    second = caption(cached_url, 100, model="blip", flag_caption_prompt="Is it a dog?")
    assert first["cache"] is False and second["cache"] is True
    assert {**second, "cache": False} == first
    keys = redis.Redis(port=redis_server.port).keys("vlgraph:v1:img:*")
    assert keys and all(b":blip:" in key for key in keys)


def test_models_and_prompts_never_share_answers(cached_url: str) -> None:
    caption(cached_url, 101, model="blip")
    assert caption(cached_url, 101, model="gemma")["cache"] is False
    assert caption(cached_url, 101, model="blip", caption_prompt="a photo of")["cache"] is False
    assert caption(cached_url, 101, model="blip", flag_caption_prompt="Red?")["cache"] is False
    assert caption(cached_url, 101, model="blip")["cache"] is True


def test_redis_down_then_back(cached_url: str, redis_server: RedisServer) -> None:
    caption(cached_url, 102, model="blip")
    redis_server.stop()
    try:
        during = [caption(cached_url, 102 + index, model="blip") for index in range(2)]
        assert all(item["cache"] is False and item["caption"] is not None for item in during)
        health = httpx.get(f"{cached_url}/healthz", timeout=30)
        assert health.status_code == 200, health.text
        assert health.json()["status"] == "degraded"
        assert health.json()["cache"] == {"backend": "redis", "reachable": False}
    finally:
        redis_server.start()
    assert httpx.get(f"{cached_url}/healthz", timeout=30).json()["status"] == "ok"
    caption(cached_url, 110, model="blip")
    assert caption(cached_url, 110, model="blip")["cache"] is True


def test_collective_captions_are_cached_too(cached_url: str, redis_server: RedisServer) -> None:
    files = [
        ("images", (f"c{index}.jpg", jpeg_bytes(noise_image(120 + index)), "image/jpeg"))
        for index in range(2)
    ]
    answers = [
        httpx.post(
            f"{cached_url}/api/caption-collective-images",
            params={"model": "gemma"},
            files=files,
            timeout=60,
        )
        for _ in range(2)
    ]
    assert [answer.status_code for answer in answers] == [200, 200]
    assert answers[0].json() == answers[1].json()
    assert redis.Redis(port=redis_server.port).keys("vlgraph:v1:collection:*:gemma:*")


def test_reset_in_debug_mode_needs_no_key_and_removes_only_our_keys(
    cached_url: str, redis_server: RedisServer
) -> None:
    caption(cached_url, 130, model="blip")
    other = redis.Redis(port=redis_server.port)
    other.set("another-app:v1:img:x", b"keep")
    ours = len(other.keys("vlgraph:*"))
    assert ours >= 1
    response = httpx.post(f"{cached_url}/api/admin/reset-cache", timeout=30)
    assert response.status_code == 200, response.text
    assert response.json() == {"removed": ours, "backend": "redis"}
    assert other.keys("vlgraph:*") == [] and other.get("another-app:v1:img:x") == b"keep"
    assert caption(cached_url, 130, model="blip")["cache"] is False


def test_cache_hits_misses_and_errors_reach_the_metrics(
    cached_url: str, redis_server: RedisServer
) -> None:
    def events() -> dict[str, float]:
        text = httpx.get(f"{cached_url}/metrics", timeout=30).text
        return {
            event: series_value(text, "ray_vlgraph_cache_events_total", event=event)
            for event in ("hit", "miss", "error")
        }

    before = events()
    caption(cached_url, 140, model="blip")  # miss
    caption(cached_url, 140, model="blip")  # hit
    redis_server.stop()
    try:
        caption(cached_url, 141, model="blip")  # error on get and on put
    finally:
        redis_server.start()
    deadline = time.monotonic() + 60
    while True:
        after = events()
        moved = {event: after[event] - before[event] for event in after}
        if moved["hit"] >= 1 and moved["miss"] >= 1 and moved["error"] >= 2:
            break
        assert time.monotonic() < deadline, f"cache metrics did not move: {moved}"
        time.sleep(1)
