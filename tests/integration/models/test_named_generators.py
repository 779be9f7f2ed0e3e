"""Generators a profile names itself, of pipelines no code of vlgraph names (tiny SD 3 and
PixArt-Sigma through diffusers' auto pipeline): served side by side with BLIP, listed with the
bounds their pipelines set, and reached through every generation route: the documents'
``POST /generate`` (stored), ``GET /generate-image`` and their step streams, and
``/v1/images/generations`` whole and streamed with partial images through the official client.
A size the pipeline cannot draw is a 422 that names its limit; batches equal single calls."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from tests.integration.generation.test_similar_image import events_of
from tests.support.named_apps import named_model, served_named_models
from tests.support.openai_api import check_openai_error

pytestmark = pytest.mark.integration

#: Named generator -> its tiny checkpoint and the pipeline class it loads as.
NAMED = {"sd3": "tiny:sd3", "pixart": "tiny:pixart"}
FAST = {"num_inference_steps": 3}


@pytest.fixture(scope="module")
def url(ray_instance: int, checkpoint_cache: Path, image_root: Path) -> Iterator[str]:
    """BLIP and the named generators, nothing else; their bounds from the pipelines, but for
    a small default size and few steps."""
    named = {
        name: named_model(
            "generate",
            source,
            default_size=64,
            default_steps=2,
            batching={"max_batch_size": 4, "batch_wait_timeout_s": 0.1},
        )
        for name, source in NAMED.items()
    }
    with served_named_models(
        ray_instance, checkpoint_cache, image_root, "generators", named
    ) as url:
        yield url


def pixels(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB")).astype(int)


def generate(url: str, model: str, **fields: object) -> httpx.Response:
    body = {"description": "a red circle on a white background", "model": model, **fields}
    return httpx.post(f"{url}/generate", json=body, timeout=60)


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_named_generators_are_listed_with_their_pipelines_bounds(url: str) -> None:
    models = {model["name"]: model for model in httpx.get(f"{url}/api/models").json()["models"]}
    assert list(models) == ["blip", *NAMED]
    for name in NAMED:
        model = models[name]
        assert model["capabilities"] == ["generate"] and model["random_weights"] is True
        assert model["deployment"] == f"{name}_generate"
        bounds = model["generation"]
        # 16: 8x VAE latents on 2x2 patches; SD 3's position table holds 512 px (tiny), and
        # PixArt's sizes stop at the 256 px it was built for; defaults from the profile.
        assert bounds["size_multiple"] == 16 and bounds["default_size"] == 64
        assert bounds["max_height"] == bounds["max_width"] == {"sd3": 512, "pixart": 256}[name]
        assert bounds["default_steps"] == 2
        assert bounds["guidance_scale"] == {"sd3": 7.0, "pixart": 4.5}[name]
    assert models["blip"]["generation"] is None
    listed = {model.id for model in client(url).models.list()}
    assert set(NAMED) <= listed


@pytest.mark.parametrize("name", list(NAMED))
def test_the_documents_routes_draw_store_and_stream(url: str, name: str) -> None:
    made = generate(url, name, height=64, width=96, seed=3, **FAST)
    assert made.status_code == 200, made.text
    answer = made.json()
    assert (answer["model"], answer["width"], answer["height"]) == (name, 96, 64)
    assert answer["num_inference_steps"] == 3 and answer["nsfw"] is None
    drawn = base64.b64decode(answer["image"])
    assert pixels(drawn).shape == (64, 96, 3)
    stored = httpx.get(f"{url}{answer['image_path']}", timeout=30)
    assert stored.status_code == 200 and stored.content == drawn
    again = generate(url, name, height=64, width=96, seed=3, **FAST).json()
    assert again["image"] == answer["image"]  # same seed, same bytes

    query = {"prompt": "a blue square", "model": name, "seed": 4, **FAST}
    image = httpx.get(f"{url}/generate-image", params=query, timeout=60)
    assert image.status_code == 200, image.text
    drawn_by_query = base64.b64decode(image.json()["image"])
    assert pixels(drawn_by_query).shape == (64, 64, 3)
    streamed = httpx.get(f"{url}/generate-image/stream", params=query, timeout=60)
    events = events_of(streamed)
    assert [kind for kind, _ in events] == ["step", "step", "step", "image"], events
    assert [data["step"] for _, data in events[:-1]] == [1, 2, 3]
    assert base64.b64decode(events[-1][1]["image"]) == drawn_by_query


@pytest.mark.parametrize("name", list(NAMED))
def test_openai_generations_whole_and_streamed_with_partial_images(url: str, name: str) -> None:
    openai_client = client(url)
    seeded = {"num_inference_steps": 4, "seed": 9}
    whole = openai_client.images.generate(
        prompt="a green star", model=name, size="96x64", extra_body=seeded
    )
    assert whole.size == "96x64"
    assert pixels(base64.b64decode(whole.data[0].b64_json)).shape == (64, 96, 3)
    events = list(
        openai_client.images.generate(
            prompt="a green star",
            model=name,
            size="96x64",
            stream=True,
            partial_images=2,
            extra_body=seeded,
        )
    )
    assert [event.type for event in events] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    assert len({event.b64_json for event in events}) == 3
    assert events[-1].b64_json == whole.data[0].b64_json


@pytest.mark.parametrize("name", list(NAMED))
def test_a_size_the_pipeline_cannot_draw_is_a_422_naming_its_limit(url: str, name: str) -> None:
    largest = {"sd3": 512, "pixart": 256}[name]
    for fields, fragment in (
        ({"height": 72}, "height must be a multiple of 16"),  # a multiple of 8 only
        ({"width": largest + 16}, f"width must be a multiple of 16 between 64 and {largest}"),
    ):
        refused = generate(url, name, **fields)
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert error["code"] == "generation_limit" and fragment in error["message"], error
    response = httpx.post(
        f"{url}/v1/images/generations",
        json={"prompt": "a red circle", "model": name, "size": "72x64"},
        timeout=60,
    )
    error = check_openai_error(response, 422, "generation_limit", "size")
    assert "sides multiples of 16" in error["message"] and name in error["message"]


@pytest.mark.parametrize("name", list(NAMED))
def test_concurrent_requests_batch_as_they_draw_alone(url: str, name: str) -> None:
    seeds = [11, 12, 13, 14]
    alone = [pixels(base64.b64decode(generate(url, name, seed=s).json()["image"])) for s in seeds]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda s: generate(url, name, seed=s), seeds))
    assert all(answer.status_code == 200 for answer in answers)
    together = [pixels(base64.b64decode(answer.json()["image"])) for answer in answers]
    for batched, single in zip(together, alone, strict=True):
        # CPU kernels block by batch size: a few pixels may round to the next 8-bit level.
        assert np.abs(batched - single).max() <= 1
    assert not np.array_equal(together[0], together[1])
