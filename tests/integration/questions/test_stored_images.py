"""The store of visual question answering with uploads through serve.run: the history survives
stopping and starting the whole app on the same data folder, and two ingress replicas on the
shared Redis store answer one history."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import httpx
import pytest

from graphs.app import build_app
from tests.support.common import RedisServer, make_test_config, noise_image, wait_until_healthy
from vlgraph.config import AppConfig

pytestmark = pytest.mark.integration


def png_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    noise_image(seed).save(buffer, format="PNG")
    return buffer.getvalue()


def store_app(
    checkpoint_cache: Path, image_root: Path, store: dict, ingress_replicas: int = 1
) -> AppConfig:
    """BLIP and VQA only, no result cache, the given store."""
    args = make_test_config(checkpoint_cache, image_root).model_dump(mode="json")
    args["models"].update(blip2=None, gemma=None, intern_vlm=None)
    args.update(clip_image=None, clip_text=None, sd=None, sdxl=None)
    args["cache"] = {"backend": "none"}
    args["admin"] = {"api_key": None, "debug": False}
    args["store"] = store
    args["ingress"]["deployment"]["num_replicas"] = ingress_replicas
    return AppConfig.model_validate(args)


def upload_and_ask(url: str, seed: int, question: str) -> tuple[dict, dict]:
    files = {"image": (f"{seed}.png", png_bytes(seed), "image/png")}
    stored = httpx.post(f"{url}/upload", files=files, timeout=60)
    assert stored.status_code == 200, stored.text
    image_id = stored.json()["image_id"]
    answered = httpx.post(
        f"{url}/question", json={"image_id": image_id, "question": question}, timeout=60
    )
    assert answered.status_code == 200, answered.text
    return stored.json(), answered.json()


def test_history_survives_a_restart_of_the_app(
    ray_instance: int, checkpoint_cache: Path, image_root: Path, tmp_path: Path
) -> None:
    from ray import serve

    config = store_app(
        checkpoint_cache, image_root, {"backend": "sqlite", "data_dir": str(tmp_path / "data")}
    )
    url = f"http://127.0.0.1:{ray_instance}/restart"
    serve.run(build_app(config), name="restart", route_prefix="/restart")
    wait_until_healthy(url)
    stored, answered = upload_and_ask(url, 70, "what is this")
    serve.delete("restart")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/history", timeout=5).raise_for_status()

    serve.run(build_app(config), name="restart", route_prefix="/restart")
    try:
        wait_until_healthy(url)
        page = httpx.get(f"{url}/history", timeout=30).json()
        assert page["total"] == 1
        (item,) = page["items"]
        assert item["image_id"] == stored["image_id"] and item["caption"] == stored["caption"]
        assert [(q["question"], q["answer"]) for q in item["questions"]] == [
            ("what is this", answered["answer"])
        ]
        again = httpx.post(
            f"{url}/question",
            data={"image_id": stored["image_id"], "question": "what is this"},
            timeout=60,
        )
        assert again.status_code == 200, again.text
        assert again.json()["answer"] == answered["answer"], "the stored bytes were read back"
        assert len(again.json()["history"]) == 2
    finally:
        serve.delete("restart")


def test_two_ingress_replicas_share_one_history_on_redis(
    ray_instance: int, checkpoint_cache: Path, image_root: Path, tmp_path: Path
) -> None:
    from ray import serve

    redis_server = RedisServer(aof_folder=tmp_path / "redis")
    redis_server.start()
    logs = tmp_path / "logs"
    store = {"backend": "redis", "redis_host": "127.0.0.1", "redis_port": redis_server.port}
    config = store_app(checkpoint_cache, image_root, store, ingress_replicas=2)
    url = f"http://127.0.0.1:{ray_instance}/shared"
    serve.run(
        build_app(config),
        name="shared",
        route_prefix="/shared",
        logging_config={"encoding": "JSON", "logs_dir": str(logs)},
    )
    try:
        wait_until_healthy(url)
        ids = {upload_and_ask(url, 80 + index, "is it red")[0]["image_id"] for index in range(3)}
        for _ in range(16):
            page = httpx.get(f"{url}/history", timeout=30).json()
            assert {item["image_id"] for item in page["items"]} == ids
            assert all(len(item["questions"]) == 1 for item in page["items"])
        assert len(replicas_that_answered(logs, "/shared/history")) == 2
    finally:
        serve.delete("shared")
        redis_server.stop()


def replicas_that_answered(logs: Path, route: str) -> set[str]:
    """Ingress replicas whose JSON access log lines show ``route`` (polled: logs flush late)."""
    deadline = time.monotonic() + 20
    while True:
        replicas = set()
        for log_file in logs.glob("replica_*ingress*.log"):
            for line in log_file.read_text().splitlines():
                record = json.loads(line)
                if record.get("route") == route:
                    replicas.add(record["replica"])
        if len(replicas) >= 2 or time.monotonic() > deadline:
            return replicas
        time.sleep(0.5)
