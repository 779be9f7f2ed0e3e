"""Overload through a real serve.run: excess is shed fast with 503 + Retry-After, per item."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from graphs.app import build_app
from tests.conftest import make_test_config, wait_until_healthy
from vlgraph.config import AppConfig

pytestmark = pytest.mark.integration

APP_NAME = "vlgraph-tight"


@pytest.fixture(scope="module")
def tight_url(ray_instance: int, checkpoint_cache: Path, image_root: Path) -> Iterator[str]:
    """The app with a captioner that runs one image at a time and queues one more."""
    from ray import serve

    args = make_test_config(checkpoint_cache, image_root).model_dump(mode="json")
    args["models"].update(blip2=None, gemma=None, intern_vlm=None)
    args["vqa"] = None
    args.update(clip_image=None, clip_text=None, sd=None, sdxl=None)
    blip = args["models"]["blip"]
    blip["generation"].update(max_new_tokens=40, min_new_tokens=40)
    blip["batching"]["max_batch_size"] = 1
    blip["deployment"].update(max_ongoing_requests=1, max_queued_requests=1)
    config = AppConfig.model_validate(args)
    serve.run(build_app(config), name=APP_NAME, route_prefix="/tight")
    url = f"http://127.0.0.1:{ray_instance}/tight"
    wait_until_healthy(url)
    yield url
    serve.delete(APP_NAME)


def test_batch_sheds_excess_items_and_keeps_finished_captions(tight_url: str) -> None:
    paths = [f"noise{index % 6}.jpg" for index in range(8)]
    response = httpx.post(f"{tight_url}/batch-caption", json={"image_paths": paths}, timeout=60)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    shed = [item for item in results if item["error"]]
    captioned = [item for item in results if item["caption"]]
    assert len(shed) + len(captioned) == len(paths)
    assert captioned, "the requests that fit were served"
    assert shed, "the excess was shed"
    assert {(item["error"]["status"], item["error"]["code"]) for item in shed} == {
        (503, "overloaded")
    }


def test_single_requests_past_capacity_get_503_with_retry_after(tight_url: str) -> None:
    def send(index: int) -> httpx.Response:
        return httpx.post(
            f"{tight_url}/caption", json={"image_path": f"noise{index % 6}.jpg"}, timeout=60
        )

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(send, range(16)))
    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {200, 503}, statuses
    assert 200 in statuses and 503 in statuses, statuses
    for response in responses:
        if response.status_code == 503:
            assert response.headers.get("retry-after") == "1", (response.headers, response.text)
            assert response.json()["error"]["code"] == "overloaded"
