"""Heavy models can sit at zero replicas and come back on demand (multi-model captioning's
MODEL_CAPACITY, the Ray way); a model a profile leaves out is refused with a clear 400."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from graphs.app import build_app
from tests.support.common import jpeg_bytes, make_test_config, noise_image, wait_until_healthy
from vlgraph.config import AppConfig

pytestmark = pytest.mark.integration

APP_NAME = "vlgraph-zero"


def running_replicas(deployment: str) -> int:
    from ray import serve

    status = serve.status().applications[APP_NAME].deployments[deployment]
    return status.replica_states.get("RUNNING", 0)


@pytest.fixture(scope="module")
def zero_url(ray_instance: int, checkpoint_cache: Path, image_root: Path) -> Iterator[str]:
    """BLIP-2 at zero replicas; Gemma and InternVL not served."""
    from ray import serve

    args = make_test_config(checkpoint_cache, image_root).model_dump(mode="json")
    args["profile"] = "zero"
    args["admin"] = {"api_key": None, "debug": False}
    args["models"].update(gemma=None, intern_vlm=None)
    args["vqa"] = None
    args.update(clip_image=None, clip_text=None, sd=None, sdxl=None)
    args["models"]["blip2"]["deployment"] = {
        "autoscaling_config": {
            "min_replicas": 0,
            "initial_replicas": 0,
            "max_replicas": 1,
            "upscale_delay_s": 0,
            "downscale_delay_s": 600,
        },
        "max_ongoing_requests": 16,
        "ray_actor_options": {"num_cpus": 0.1},
    }
    serve.run(build_app(AppConfig.model_validate(args)), name=APP_NAME, route_prefix="/zero")
    url = f"http://127.0.0.1:{ray_instance}/zero"
    wait_until_healthy(url)
    yield url
    serve.delete(APP_NAME)


def test_a_model_at_zero_replicas_answers_its_first_request(zero_url: str) -> None:
    assert running_replicas("blip2_caption") == 0
    health = httpx.get(f"{zero_url}/healthz", timeout=30)
    assert health.status_code == 200, health.text
    blip2 = health.json()["models"]["blip2"]
    assert blip2["running_replicas"] == 0 and blip2["reachable"] is True
    liveness = httpx.get(f"{zero_url}/", timeout=30).json()
    assert liveness["status"] == "healthy" and liveness["reachable"]["blip2"] is True
    assert running_replicas("blip2_caption") == 0, "a health check must not wake a model"
    files = [("images", ("a.jpg", jpeg_bytes(noise_image(1)), "image/jpeg"))]
    response = httpx.post(
        f"{zero_url}/api/caption-images", params={"model": "blip2"}, files=files, timeout=120
    )
    assert response.status_code == 200, response.text
    assert isinstance(response.json()["results"][0]["caption"], str)
    assert running_replicas("blip2_caption") == 1


def test_a_model_the_profile_leaves_out_is_a_clear_400(zero_url: str) -> None:
    files = [("images", ("a.jpg", jpeg_bytes(noise_image(1)), "image/jpeg"))]
    response = httpx.post(
        f"{zero_url}/api/caption-images", params={"model": "gemma"}, files=files, timeout=60
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "model_not_served"
    assert "blip" in error["message"] and "zero" in error["message"]
    assert httpx.get(f"{zero_url}/", timeout=10).json()["models"] == ["blip", "blip2"]


def test_admin_routes_refuse_when_no_key_is_configured(zero_url: str) -> None:
    response = httpx.post(
        f"{zero_url}/api/admin/reset-cache", headers={"X-API-Key": "anything"}, timeout=30
    )
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "admin_disabled"
    assert "API_KEY" in response.json()["error"]["message"]
