"""A model family added by its four files (docs/adding-a-model.md): GIT, served beside BLIP
by a profile that names it, reached through every captioning route its capabilities allow,
listed with them, and refused clearly where they do not reach."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from graphs.app import build_app
from tests.support.common import jpeg_bytes, make_test_config, noise_image, wait_until_healthy
from vlgraph.config import AppConfig

pytestmark = pytest.mark.integration

APP_NAME = "vlgraph-git"


@pytest.fixture(scope="module")
def git_url(ray_instance: int, checkpoint_cache: Path, image_root: Path) -> Iterator[str]:
    """BLIP and GIT, nothing else."""
    from ray import serve

    args = make_test_config(checkpoint_cache, image_root).model_dump(mode="json")
    args["profile"] = "git"
    blip = args["models"]["blip"]
    args["models"] = {
        "blip": blip,
        "blip2": None,
        "gemma": None,
        "intern_vlm": None,
        "git": {**blip, "source": "tiny:git", "generation": {"max_new_tokens": 10}},
    }
    args.update(vqa=None, clip_image=None, clip_text=None, sd=None, sdxl=None)
    serve.run(build_app(AppConfig.model_validate(args)), name=APP_NAME, route_prefix="/git")
    url = f"http://127.0.0.1:{ray_instance}/git"
    wait_until_healthy(url)
    yield url
    serve.delete(APP_NAME)


def caption(url: str, model: str, count: int = 1, route: str = "caption-images", **params):
    files = [
        ("images", (f"{i}.jpg", jpeg_bytes(noise_image(60 + i)), "image/jpeg"))
        for i in range(count)
    ]
    return httpx.post(
        f"{url}/api/{route}", params={"model": model, **params}, files=files, timeout=60
    )


def test_the_new_family_is_listed_with_its_capabilities(git_url: str) -> None:
    models = httpx.get(f"{git_url}/api/models", timeout=30).json()["models"]
    assert [(m["name"], m["label"], m["capabilities"]) for m in models] == [
        ("blip", "BLIP", ["caption", "flag"]),
        ("git", "GIT", ["caption"]),
    ]
    assert models[1]["deployment"] == "git_caption" and models[1]["random_weights"] is True
    health = httpx.get(f"{git_url}/healthz", timeout=30).json()
    assert health["models"]["git"]["deployment"] == "git_caption"
    assert health["models"]["git"]["reachable"] is True
    spec = httpx.get(f"{git_url}/openapi.json", timeout=30).json()
    (model,) = [
        p
        for p in spec["paths"]["/api/caption-images"]["post"]["parameters"]
        if p["name"] == "model"
    ]
    assert model["schema"]["enum"] == ["blip", "git"]


def test_it_captions_uploads_and_batches_equal_single_calls(git_url: str) -> None:
    batched = caption(git_url, "git", count=3)
    assert batched.status_code == 200, batched.text
    results = batched.json()["results"]
    assert all(item["caption"] and item["error"] is None for item in results)
    singles = []
    for index in range(3):
        files = [("images", (f"{index}.jpg", jpeg_bytes(noise_image(60 + index)), "image/jpeg"))]
        answer = httpx.post(
            f"{git_url}/api/caption-images", params={"model": "git"}, files=files, timeout=60
        )
        singles.append(answer.json()["results"][0]["caption"])
    assert [item["caption"] for item in results] == singles
    prompted = caption(git_url, "git", caption_prompt="a photo of")
    assert prompted.json()["results"][0]["caption"].startswith("a photo of")


def test_what_its_capabilities_do_not_cover_is_a_clear_400(git_url: str) -> None:
    flagged = caption(git_url, "git", flag_caption_prompt="is it red?")
    assert flagged.status_code == 400, flagged.text
    error = flagged.json()["error"]
    assert error["code"] == "flag_not_supported" and "not git" in error["message"]
    collective = caption(git_url, "git", count=2, route="caption-collective-images")
    assert collective.status_code == 400
    assert collective.json()["error"]["code"] == "collective_not_supported"


def test_an_overlong_prompt_is_a_422_with_both_numbers(git_url: str) -> None:
    answer = caption(git_url, "git", caption_prompt="a " * 60)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "prompt_too_long_for_model"
    assert "61 tokens" in error["message"] and "at most 64" in error["message"]
