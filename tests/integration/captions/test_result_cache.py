"""The cache through a real serve.run on Redis: "cache": true on a repeat, never across models
or prompts, requests still answered while Redis is down, and the cache back with Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from graphs.app import build_app
from tests.support.common import (
    RedisServer,
    jpeg_bytes,
    make_test_config,
    noise_image,
    wait_until_healthy,
)
from tests.support.metrics import series_value
from vlgraph.config import AppConfig

pytestmark = pytest.mark.integration

APP_NAME = "vlgraph-cached"


@pytest.fixture(scope="module")
def serve_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the cached app's replicas write their logs, as JSON (serve_config.yaml's encoding)."""
    return tmp_path_factory.mktemp("serve-logs")


@pytest.fixture(scope="module")
def cached_url(
    ray_instance: int,
    checkpoint_cache: Path,
    image_root: Path,
    redis_server: RedisServer,
    serve_logs: Path,
) -> Iterator[str]:
    """BLIP and Gemma behind an ingress that caches in the test's redis-server."""
    from ray import serve

    data_dir = serve_logs.parent / "cached-data"
    args = make_test_config(checkpoint_cache, image_root, data_dir).model_dump(mode="json")
    args["models"].update(blip2=None, intern_vlm=None)
    args.update(clip_image=None, clip_text=None, sdxl=None)
    args["cache"] = {"backend": "redis", "redis_host": "127.0.0.1", "redis_port": redis_server.port}
    args["admin"] = {"api_key": None, "debug": True}
    serve.run(
        build_app(AppConfig.model_validate(args)),
        name=APP_NAME,
        route_prefix="/cached",
        logging_config={"encoding": "JSON", "logs_dir": str(serve_logs)},
    )
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


def test_caption_by_path_routes_share_the_cache_with_uploads(
    cached_url: str, image_root: Path
) -> None:
    by_path = httpx.post(f"{cached_url}/caption", json={"image_path": "noise3.jpg"}, timeout=60)
    assert by_path.status_code == 200, by_path.text
    assert set(by_path.json()) == {"image_path", "caption", "processing_time"}
    data = (image_root / "noise3.jpg").read_bytes()
    upload = httpx.post(
        f"{cached_url}/api/caption-images",
        files=[("images", ("n.jpg", data, "image/jpeg"))],
        timeout=60,
    ).json()["results"][0]
    assert upload["cache"] is True and upload["caption"] == by_path.json()["caption"]
    batch = httpx.post(
        f"{cached_url}/batch-caption", json={"image_paths": ["noise3.jpg"]}, timeout=60
    )
    assert batch.json()["results"][0]["caption"] == by_path.json()["caption"]


def test_vqa_answers_are_cached_per_question(cached_url: str, redis_server: RedisServer) -> None:
    files = {"image": ("q.jpg", jpeg_bytes(noise_image(160)), "image/jpeg")}
    image_id = httpx.post(f"{cached_url}/upload", files=files, timeout=60).json()["image_id"]

    def ask(question: str) -> dict:
        body = {"image_id": image_id, "question": question}
        response = httpx.post(f"{cached_url}/question", json=body, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()

    first, again, other = ask("is it red"), ask("is it red"), ask("what is this")
    assert (first["cache"], again["cache"], other["cache"]) == (False, True, False)
    assert again["answer"] == first["answer"]
    assert len(again["history"]) == 2, "a cached answer is still recorded in the history"
    assert redis.Redis(port=redis_server.port).keys("vlgraph:v1:img:*:vqa:*")


def test_log_lines_are_json_and_carry_the_request_id(
    cached_url: str, redis_server: RedisServer, serve_logs: Path
) -> None:
    request_id = f"log-check-{time.time_ns()}"
    files = [("images", ("a.jpg", jpeg_bytes(noise_image(150)), "image/jpeg"))]
    redis_server.stop()
    try:
        response = httpx.post(
            f"{cached_url}/api/caption-images",
            files=files,
            headers={"X-Request-ID": request_id},
            timeout=60,
        )
    finally:
        redis_server.start()
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == request_id

    def records() -> list[dict]:
        found = []
        for log_file in serve_logs.glob("replica_*ingress*.log"):
            for line in log_file.read_text().splitlines():
                record = json.loads(line)  # every line is one JSON object
                if record.get("request_id") == request_id:
                    found.append(record)
        return found

    deadline = time.monotonic() + 20
    while not (found := records()) and time.monotonic() < deadline:
        time.sleep(0.5)
    warnings = [record for record in found if record["levelname"] == "WARNING"]
    assert warnings, f"no warning logged for {request_id}: {found}"
    assert "continuing without the cache" in warnings[0]["message"]
    assert warnings[0]["application"] == APP_NAME and warnings[0]["replica"]
    assert warnings[0]["deployment"].endswith("ingress")
    assert any(record.get("route") == "/cached/api/caption-images" for record in found)


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
    assert response.json() == {"removed": ours, "backend": "redis", "scope": "service"}
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


def test_seeded_generations_are_cached_and_unseeded_ones_are_not(cached_url: str) -> None:
    def generate(**fields) -> dict:
        body = {"prompt": "a red square", "model": "sd", **fields}
        response = httpx.get(f"{cached_url}/generate-image", params=body, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()

    first, again = generate(seed=7), generate(seed=7)
    assert (first["cache"], again["cache"]) == (False, True)
    assert again["image"] == first["image"] and again["seed"] == 7
    assert generate(seed=8)["cache"] is False
    unseeded = [generate(), generate()]
    assert [item["cache"] for item in unseeded] == [False, False]
    assert unseeded[0]["seed"] != unseeded[1]["seed"]
