"""Generated images show what the prompt says: Stable Diffusion through ``POST /generate``
(one client at a time and four at once), and the caption -> diffusion pipeline end to end."""

from __future__ import annotations

import base64
import io
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.common import RunningApp, similar_image_app_args
from tests.support.world_checks import read_generated, record, share
from vlgraph.tiny.world import Scene, all_scenes

pytestmark = [pytest.mark.integration, pytest.mark.semantic]

PROMPTS = [scene for scene in random.Random(40).sample(all_scenes(), 12)]
#: Background and object colour right for at least this share of the prompts.
BOTH_COLOURS = 0.80
#: The settings the tiny Stable Diffusion was trained for (the offline profile's defaults).
STEPS = 20
GUIDANCE = 2.0


def image_of(answer: dict) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(answer["image"]))).convert("RGB")


def generate(app: RunningApp, scene: Scene, seed: int) -> dict:
    body = {
        "description": scene.caption,
        "model": "sd",
        "seed": seed,
        "num_inference_steps": STEPS,
        "guidance_scale": GUIDANCE,
    }
    with app.client(timeout=120) as client:
        response = client.post("/generate", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_generated_images_show_the_prompt_colours_alone_and_batched(app: RunningApp) -> None:
    alone = [image_of(generate(app, scene, seed)) for seed, scene in enumerate(PROMPTS)]
    with ThreadPoolExecutor(4) as pool:
        batched = list(
            pool.map(lambda pair: image_of(generate(app, pair[1], pair[0])), enumerate(PROMPTS))
        )
    for one, other in zip(alone, batched, strict=True):
        assert np.abs(np.asarray(one, int) - np.asarray(other, int)).max() <= 1
    read = [read_generated(image) for image in alone]
    backgrounds = share(
        [b == scene.background for (b, _), scene in zip(read, PROMPTS, strict=True)]
    )
    both = share(
        [(b, c) == (s.background, s.colour) for (b, c), s in zip(read, PROMPTS, strict=True)]
    )
    record("sd generation: background colour", backgrounds, count=len(PROMPTS))
    record("sd generation: background and object colour", both, BOTH_COLOURS, len(PROMPTS))
    assert both >= BOTH_COLOURS, list(zip(read, [scene.caption for scene in PROMPTS], strict=True))


def test_the_pipeline_turns_a_red_circle_on_white_into_a_white_image_with_red(
    ray_instance: int, checkpoint_cache: Path
) -> None:
    """The caption -> diffusion pipeline as its own application, chaining BLIP into Stable
    Diffusion (SDXL's offline checkpoint stays random: see docs/offline-world.md)."""
    from ray import serve

    from graphs.similar_image import build_similar_image_app
    from tests.support.world_checks import held_out

    args = similar_image_app_args(checkpoint_cache, "sd")
    serve.run(build_similar_image_app(args), name="similar-sd", route_prefix="/similar-sd")
    try:
        url = f"http://127.0.0.1:{ray_instance}/similar-sd/api/similar-image"
        red_circles = [
            image
            for image in held_out(60, offset=50)
            if (image.scene.shape, image.scene.colour, image.scene.background)
            == ("circle", "red", "white")
        ]
        assert red_circles, "the held-out draw holds no red circle on white"
        image = red_circles[0]
        response = httpx.post(
            url,
            files={"image": (image.filename, image.data, image.media_type)},
            data={
                "model": "sd",
                "seed": "3",
                "num_inference_steps": str(STEPS),
                "guidance_scale": str(GUIDANCE),
            },
            timeout=120,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["caption"] == "a red circle on a white background"
        generated = image_of(body["generated"])
        assert read_generated(generated) == ("white", "red")
        white = np.all(np.asarray(generated, int) > 200, axis=-1).mean()
        record("sd pipeline: white share of the red-circle-on-white image", white, 0.5)
        assert white > 0.5, f"only {white:.0%} of the generated image is white"
    finally:
        serve.delete("similar-sd")
