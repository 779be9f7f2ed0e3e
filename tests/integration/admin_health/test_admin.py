"""Operations routes through a real serve.run: /healthz, and multi-model captioning's X-API-Key
rules for POST /api/admin/reset-cache. Debug mode and a service without a key are tested in
test_cache_http.py and test_scale_from_zero.py, whose apps run that way."""

from __future__ import annotations

import pytest

from tests.support.common import TEST_ADMIN_KEY, RunningApp

pytestmark = pytest.mark.integration


def reset(app: RunningApp, headers: dict[str, str]):
    with app.client() as client:
        return client.post("/api/admin/reset-cache", headers=headers)


def test_missing_key_is_401(app: RunningApp) -> None:
    response = reset(app, {})
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "missing_api_key"


@pytest.mark.parametrize(
    "key", ["wrong", TEST_ADMIN_KEY + "x", TEST_ADMIN_KEY[:-1], TEST_ADMIN_KEY.upper()]
)
def test_wrong_key_is_403(app: RunningApp, key: str) -> None:
    response = reset(app, {"X-API-Key": key})
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_right_key_resets(app: RunningApp) -> None:
    response = reset(app, {"X-API-Key": TEST_ADMIN_KEY})
    assert response.status_code == 200, response.text
    assert response.json() == {"removed": 0, "backend": "none", "scope": "service"}  # no cache


def test_the_openapi_description_declares_the_key(app: RunningApp) -> None:
    with app.client() as client:
        spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert any(s.get("in") == "header" and s.get("name") == "X-API-Key" for s in schemes.values())
    operation = spec["paths"]["/api/admin/reset-cache"]["post"]
    assert operation["security"] and {"401", "403"} <= set(operation["responses"])


def test_healthz_reports_every_model_deployment(app: RunningApp) -> None:
    with app.client() as client:
        response = client.get("/healthz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok" and body["profile"] == "test"
    deployments = {
        "blip": "blip_caption",
        "blip2": "blip2_caption",
        "gemma": "gemma_caption",
        "intern_vlm": "intern_vlm_caption",
        "vqa": "blip_vqa",
        "clip_image": "clip_image_encoder",
        "clip_text": "clip_text_encoder",
        "sd": "sd_generator",
        "sdxl": "sdxl_generator",
        "similar_image": "similar_image",
    }
    assert {name: model["deployment"] for name, model in body["models"].items()} == deployments
    for model in body["models"].values():
        assert model["status"] == "HEALTHY" and model["running_replicas"] == 1
        assert model["reachable"] is True and model["message"] is None
    assert body["cache"] == {"backend": "none", "reachable": True}
