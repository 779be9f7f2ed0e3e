"""Image generation, similar image generation and the caption -> diffusion pipeline through a
real serve.run on tiny pipelines: shapes, seeds, served equals in-process, the pipeline's
caption, the streams, cancellation, and every bound refused with 422."""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from diffusers import StableDiffusionPipeline
from PIL import Image

from deployments.blip_caption import BlipCaptioner
from tests.support.common import (
    TEST_MAX_IMAGE_SIDE,
    TEST_MAX_PROMPT_CHARS,
    TEST_MAX_STEPS,
    RunningApp,
    jpeg_bytes,
    noise_image,
)
from tests.support.metrics import series_value
from vlgraph.config import BlipCaptionConfig
from vlgraph.messages import CaptionRequest
from vlgraph.tiny import ensure_checkpoint

pytestmark = pytest.mark.integration


def pixels(encoded: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB"))


def generate(app: RunningApp, **fields) -> httpx.Response:
    with app.client() as client:
        return client.post("/generate", json={"description": "a red square", **fields})


def events_of(response: httpx.Response) -> list[tuple[str, dict]]:
    """The (event, data) pairs of a server-sent event stream."""
    events = []
    for block in response.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_generate_answers_the_original_fields_and_stores_the_image(app: RunningApp) -> None:
    response = generate(app, height=64, width=96, num_inference_steps=2, seed=11)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"], body["num_inference_steps"]) == (96, 64, 2)
    assert body["seed"] == 11 and body["model"] == "sd" and body["prompt"] == "a red square"
    assert pixels(body["image"]).shape == (64, 96, 3)
    assert body["image_path"] == f"/images/{body['image_id']}"
    with app.client() as client:
        stored = client.get(body["image_path"])
        history = client.get("/history").json()
    assert stored.status_code == 200 and stored.headers["content-type"] == "image/png"
    assert stored.content == base64.b64decode(body["image"])
    item = next(entry for entry in history["items"] if entry["image_id"] == body["image_id"])
    assert item["kind"] == "generated" and item["prompt"] == "a red square"
    with app.client() as client:
        form = client.post("/generate", data={"description": "a blue circle", "seed": "3"})
    assert form.status_code == 200 and form.json()["seed"] == 3


def test_same_seed_same_pixels_and_served_equals_in_process(
    app: RunningApp, checkpoint_cache: Path
) -> None:
    first = generate(app, seed=5, num_inference_steps=3).json()
    again = generate(app, seed=5, num_inference_steps=3).json()
    other = generate(app, seed=6, num_inference_steps=3).json()
    assert np.array_equal(pixels(first["image"]), pixels(again["image"]))
    assert not np.array_equal(pixels(first["image"]), pixels(other["image"]))
    unseeded = generate(app).json()
    assert isinstance(unseeded["seed"], int), "a random seed is reported back"

    import torch

    pipeline = StableDiffusionPipeline.from_pretrained(ensure_checkpoint("sd", checkpoint_cache))
    pipeline.set_progress_bar_config(disable=True)
    expected = pipeline(
        "a red square",
        height=64,
        width=64,
        num_inference_steps=3,
        guidance_scale=first["guidance_scale"],
        generator=torch.Generator().manual_seed(5),
    ).images[0]
    difference = np.abs(pixels(first["image"]).astype(int) - np.asarray(expected).astype(int))
    assert difference.max() <= 1


def test_generate_image_of_similar_image_generation(app: RunningApp) -> None:
    with app.client() as client:
        response = client.get(
            "/generate-image", params={"prompt": "A beautiful sunset over the ocean", "seed": 1}
        )
        concurrent_singles = [
            client.get("/generate-image", params={"prompt": f"sunset {n}", "seed": n}).json()
            for n in range(3)
        ]
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "sdxl" and "image_id" not in body
    assert pixels(body["image"]).shape == (64, 64, 3)

    from concurrent.futures import ThreadPoolExecutor

    def one(n: int) -> dict:
        with app.client() as client:
            return client.get("/generate-image", params={"prompt": f"sunset {n}", "seed": n}).json()

    with ThreadPoolExecutor(3) as pool:
        batched = list(pool.map(one, range(3)))
    for together, alone in zip(batched, concurrent_singles, strict=True):
        assert np.abs(pixels(together["image"]).astype(int) - pixels(alone["image"])).max() <= 1


def test_similar_image_chains_the_caption_into_the_generator(
    app: RunningApp, checkpoint_cache: Path
) -> None:
    data = jpeg_bytes(noise_image(90))
    with app.client() as client:
        response = client.post(
            "/api/similar-image",
            files={"image": ("photo.jpg", data, "image/jpeg")},
            data={"seed": "4", "num_inference_steps": "2"},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    captioner = BlipCaptioner(
        BlipCaptionConfig.model_validate(
            app.config.models.blip.model_dump(exclude={"deployment", "batching"})
        ),
        str(checkpoint_cache),
    )
    (expected,) = captioner.caption_now([CaptionRequest(image=data)])
    assert body["caption"] == expected.caption
    generated = body["generated"]
    assert generated["prompt"] == expected.caption and generated["model"] == "sdxl"
    assert generated["seed"] == 4 and pixels(generated["image"]).shape == (64, 64, 3)
    with app.client() as client:
        direct = client.get(
            "/generate-image",
            params={"prompt": expected.caption, "seed": 4, "num_inference_steps": 2},
        ).json()
    assert np.abs(pixels(direct["image"]).astype(int) - pixels(generated["image"])).max() <= 1


def test_streams_report_every_step_in_order_then_the_image(app: RunningApp) -> None:
    with app.client() as client:
        response = client.post(
            "/generate/stream", json={"description": "a cat", "num_inference_steps": 5, "seed": 2}
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = events_of(response)
    assert [data["step"] for kind, data in events if kind == "step"] == [1, 2, 3, 4, 5]
    assert all(data["total_steps"] == 5 for kind, data in events if kind == "step")
    assert [kind for kind, _ in events][-1] == "image"
    streamed = events[-1][1]
    plain = generate(app, description="a cat", num_inference_steps=5, seed=2).json()
    assert np.array_equal(pixels(streamed["image"]), pixels(plain["image"]))

    with app.client() as client:
        pipeline = client.post(
            "/api/similar-image/stream",
            files={"image": ("p.jpg", jpeg_bytes(noise_image(91)), "image/jpeg")},
            data={"num_inference_steps": "3"},
        )
    kinds = [kind for kind, _ in events_of(pipeline)]
    assert kinds == ["caption", "step", "step", "step", "image"]
    last = events_of(pipeline)[-1][1]
    assert last["caption"] == events_of(pipeline)[0][1]["caption"]
    with app.client() as client:
        get_stream = client.get(
            "/generate-image/stream", params={"prompt": "x", "num_inference_steps": 2}
        )
    assert [kind for kind, _ in events_of(get_stream)] == ["step", "step", "image"]


def test_a_client_that_disconnects_cancels_the_generation(app: RunningApp) -> None:
    def steps_done() -> float:
        text = httpx.get(f"{app.url}/metrics", timeout=30).text
        return series_value(text, "ray_vlgraph_generation_steps_total", model="sd")

    before = steps_done()
    with httpx.Client(base_url=app.url, timeout=60) as client:
        body = {"description": "a long one", "num_inference_steps": TEST_MAX_STEPS, "seed": 1}
        with client.stream("POST", "/generate/stream", json=body) as response:
            seen = 0
            for line in response.iter_lines():
                if line.startswith("event: step"):
                    seen += 1
                if seen == 3:
                    break  # leaving the block closes the connection
    time.sleep(3)  # the generator stops between two steps; let metrics export
    deadline = time.monotonic() + 20
    while (done := steps_done() - before) < 3 and time.monotonic() < deadline:
        time.sleep(1)
    assert 3 <= done < TEST_MAX_STEPS / 2, f"{done} steps ran after the client left"
    # The replica is free again: a new request is answered at once.
    started = time.monotonic()
    assert generate(app, num_inference_steps=2).status_code == 200
    assert time.monotonic() - started < 20


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"height": 65}, "multiple of 8"),
        ({"width": TEST_MAX_IMAGE_SIDE + 8}, str(TEST_MAX_IMAGE_SIDE)),
        ({"height": 32}, "between 64"),
        ({"num_inference_steps": TEST_MAX_STEPS + 1}, str(TEST_MAX_STEPS)),
        ({"num_inference_steps": 0}, "between 1"),
        ({"guidance_scale": 99}, "guidance_scale"),
        ({"description": "x" * (TEST_MAX_PROMPT_CHARS + 1)}, str(TEST_MAX_PROMPT_CHARS)),
        ({"description": "   "}, "empty"),
        ({"negative_prompt": "y" * (TEST_MAX_PROMPT_CHARS + 1)}, "negative_prompt"),
        ({"seed": -1}, "seed"),
    ],
)
def test_every_bound_is_a_422_that_names_it(app: RunningApp, fields: dict, fragment: str) -> None:
    response = generate(app, **fields)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "generation_limit"
    assert fragment in response.json()["error"]["message"]


def test_request_errors(app: RunningApp) -> None:
    with app.client() as client:
        assert client.post("/generate", json={}).status_code == 422
        assert (
            client.post("/generate", json={"description": "a", "model": "dalle"}).status_code == 422
        )
        assert client.get("/generate-image").status_code == 422
        no_image = client.post("/api/similar-image", data={"seed": "1"}, files={"x": ("a", b"")})
        assert no_image.status_code == 422 and "image" in no_image.text
        text = client.post("/api/similar-image", files={"image": ("a.jpg", b"hello", "image/jpeg")})
        assert text.status_code == 415
        assert client.get("/images/" + "0" * 32).status_code == 404


def test_the_pipeline_runs_as_its_own_application(
    ray_instance: int, checkpoint_cache: Path
) -> None:
    from ray import serve

    from graphs.similar_image import build_similar_image_app
    from tests.support.common import similar_image_app_args

    args = similar_image_app_args(checkpoint_cache, "sdxl")
    serve.run(build_similar_image_app(args), name="similar", route_prefix="/similar")
    try:
        # The standalone application serves the full app's similar-image routes.
        url = f"http://127.0.0.1:{ray_instance}/similar/api/similar-image"
        data = jpeg_bytes(noise_image(92))
        response = httpx.post(
            url, files={"image": ("a.jpg", data, "image/jpeg")}, data={"seed": "9"}, timeout=60
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["caption"] and body["generated"]["seed"] == 9
        assert body["generated"]["prompt"] == body["caption"]
        assert pixels(body["generated"]["image"]).shape == (64, 64, 3)
        refused = httpx.post(
            url, files={"image": ("a.jpg", data, "image/jpeg")}, data={"height": "65"}, timeout=60
        )
        assert refused.status_code == 422 and "multiple of 8" in refused.text
        not_image = httpx.post(url, files={"image": ("a.jpg", b"text", "image/jpeg")}, timeout=60)
        assert not_image.status_code == 415
    finally:
        serve.delete("similar")


def test_similar_images_take_the_pipelines_generator_alone(app: RunningApp) -> None:
    """The pipeline draws with one generator (SDXL here): GET /api/models names it, and the
    route refuses another served generator instead of drawing with SDXL under its name."""
    with app.client() as client:
        assert client.get("/api/models").json()["similar_image_generator"] == "sdxl"
        refused = client.post(
            "/api/similar-image",
            files={"image": ("p.jpg", jpeg_bytes(noise_image(92)), "image/jpeg")},
            data={"model": "sd", "num_inference_steps": "2"},
        )
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert "model" in error["message"] and "'sdxl'" in error["message"], error
