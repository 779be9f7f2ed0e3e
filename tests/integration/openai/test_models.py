"""GET /v1/models and /v1/models/{id} through the official ``openai`` client: every served
model with what it can do and how it chats."""

from __future__ import annotations

import openai
import pytest

from tests.support.common import RunningApp
from tests.support.openai_api import check_openai_error, sync_client

pytestmark = pytest.mark.integration


def test_every_served_model_is_listed_with_its_capabilities(app: RunningApp) -> None:
    client = sync_client(app)
    listed = {model.id: model for model in client.models.list()}
    with app.client() as http:
        served = [model["name"] for model in http.get("/api/models").json()["models"]]
    assert list(listed) == served
    gemma = listed["gemma"].model_dump()
    assert gemma["object"] == "model" and gemma["owned_by"] == "vlgraph"
    assert {"chat", "caption", "collective", "flag"} <= set(gemma["capabilities"])
    assert gemma["chat"] == {
        "mode": "conversation",
        "max_images": 4,
        "multi_turn": True,
        "sampling": True,
        "usage": True,
    }
    assert listed["blip2"].model_dump()["chat"]["mode"] == "one_image"
    vqa = listed["vqa"].model_dump()
    assert vqa["chat"]["mode"] == "question" and vqa["chat"]["max_images"] == 1
    assert listed["blip"].model_dump()["chat"]["mode"] == "caption"
    assert listed["clip_image"].model_dump()["capabilities"] == ["embed_image"]
    assert "chat" not in listed["clip_text"].model_dump() or not listed["clip_text"].chat
    assert listed["sd"].model_dump()["capabilities"] == ["generate"]
    # Variations are drawn by the similar-image pipeline's generator.
    assert listed["sdxl"].model_dump()["capabilities"] == ["generate", "image_variation"]


def test_one_model_and_a_missing_one(app: RunningApp) -> None:
    client = sync_client(app)
    assert client.models.retrieve("intern_vlm").id == "intern_vlm"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    with app.client() as http:
        response = http.get("/v1/models/gpt-4o")
    check_openai_error(response, 404, "model_not_found", "model", "gemma")


def test_unknown_v1_routes_answer_in_openai_shape(app: RunningApp) -> None:
    with app.client() as http:
        response = http.post("/v1/completions", json={"model": "gemma", "prompt": "hi"})
    check_openai_error(response, 404, "route_not_found")
