"""Autoscaling: a model deployment with ``min_replicas: 1`` adds replicas under load and goes
back to one when idle, while every request of the load succeeds.

Short delays in the test's ``autoscaling_config``; the load is closed-loop clients on
``POST /encode_text`` (the multilingual CLIP text encoder, tiny), each batch held for a
moment (``batch_wait_timeout_s``) so that requests pile up on the replicas as real model work
would make them.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from graphs.app import build_app
from tests.support.common import make_test_config, wait_until_healthy
from vlgraph.config import AppConfig

pytestmark = pytest.mark.integration

APP_NAME = "vlgraph-autoscale"
DEPLOYMENT = "clip_text_encoder"
MAX_REPLICAS = 3
CLIENTS = 12


def running_replicas() -> int:
    from ray import serve

    status = serve.status().applications[APP_NAME].deployments[DEPLOYMENT]
    return status.replica_states.get("RUNNING", 0)


@pytest.fixture(scope="module")
def autoscaled_url(ray_instance: int, checkpoint_cache: Path, image_root: Path) -> Iterator[str]:
    """The text encoder autoscaled between 1 and 3 replicas; the other models left out."""
    from ray import serve

    args = make_test_config(checkpoint_cache, image_root).model_dump(mode="json")
    args["profile"] = "autoscale"
    args["models"].update(blip2=None, gemma=None, intern_vlm=None)
    args.update(vqa=None, clip_image=None, sd=None, sdxl=None)
    args["clip_text"]["batching"] = {"max_batch_size": 32, "batch_wait_timeout_s": 0.3}
    args["clip_text"]["deployment"] = {
        "autoscaling_config": {
            "min_replicas": 1,
            "max_replicas": MAX_REPLICAS,
            "target_ongoing_requests": 2,
            "upscale_delay_s": 0,
            "downscale_delay_s": 2,
            "look_back_period_s": 11,
        },
        "max_ongoing_requests": 32,
        "ray_actor_options": {"num_cpus": 0.1},
    }
    serve.run(build_app(AppConfig.model_validate(args)), name=APP_NAME, route_prefix="/scaled")
    url = f"http://127.0.0.1:{ray_instance}/scaled"
    wait_until_healthy(url)
    yield url
    serve.delete(APP_NAME)


class Load:
    """Closed-loop clients posting texts until stopped; counts the answers' status codes."""

    def __init__(self, url: str, clients: int) -> None:
        self.statuses: Counter = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._client, args=(url, index), daemon=True)
            for index in range(clients)
        ]

    def _client(self, url: str, index: int) -> None:
        with httpx.Client(timeout=60) as client:
            sent = 0
            while not self._stop.is_set():
                body = {"text": f"client {index} sentence {sent}"}
                status = client.post(f"{url}/encode_text", json=body).status_code
                with self._lock:
                    self.statuses[status] += 1
                sent += 1

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def wait_for(condition, timeout_s: float) -> float:
    """Seconds until ``condition()`` held; fails after ``timeout_s``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"not within {timeout_s} s"
        time.sleep(0.5)
    return time.monotonic() - started


def test_replicas_go_up_under_load_and_back_down_when_idle(autoscaled_url: str) -> None:
    assert running_replicas() == 1
    peak = 1
    with Load(autoscaled_url, CLIENTS) as load:

        def scaled_up() -> bool:
            nonlocal peak
            peak = max(peak, running_replicas())
            return peak >= 2

        wait_for(scaled_up, timeout_s=90)
        # Keep the load on a little longer: replicas may keep coming up to the maximum.
        settle_until = time.monotonic() + 10
        while time.monotonic() < settle_until:
            peak = max(peak, running_replicas())
            time.sleep(0.5)
    assert 2 <= peak <= MAX_REPLICAS
    assert sum(load.statuses.values()) > CLIENTS
    assert set(load.statuses) == {200}, load.statuses

    wait_for(lambda: running_replicas() == 1, timeout_s=120)
    # Still serving with one replica after scaling down.
    response = httpx.post(f"{autoscaled_url}/encode_text", json={"text": "after"}, timeout=60)
    assert response.status_code == 200, response.text
