"""POST /v1/images/generations and /v1/images/variations through the official ``openai``
client: sizes, seeds, several images, stored URLs, streams with real partial images (the same
final image as without the stream, a disconnect stops the generation), variations drawn from
the pipeline's caption, OpenAI-shaped refusals, and the OpenAPI description."""

from __future__ import annotations

import asyncio
import base64
import io
import time

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from tests.support.common import TEST_MAX_IMAGE_SIDE, TEST_MAX_STEPS, RunningApp, world_image
from tests.support.metrics import series_value
from tests.support.openai_api import async_client, check_openai_error, sync_client
from tests.support.world_checks import read_generated

pytestmark = pytest.mark.integration

PROMPT = "a red circle on a white background"
#: Fast settings for everything but meaning (the tiny generators make 64 px in 2 to 4 steps).
FAST = {"num_inference_steps": 3}


def pixels(encoded: str | bytes) -> np.ndarray:
    data = base64.b64decode(encoded) if isinstance(encoded, str) else encoded
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB")).astype(int)


def png_upload(index: int) -> tuple[str, bytes, str]:
    buffer = io.BytesIO()
    world_image(index).save(buffer, format="PNG")
    return (f"world{index}.png", buffer.getvalue(), "image/png")


def test_generations_draw_n_images_of_the_size_asked_from_seed_on(app: RunningApp) -> None:
    client = sync_client(app)
    seeded = {**FAST, "seed": 7}
    two = client.images.generate(prompt=PROMPT, model="sd", n=2, size="96x64", extra_body=seeded)
    assert two.size == "96x64" and two.output_format == "png" and two.created > 0
    first, second = (pixels(image.b64_json) for image in two.data)
    assert first.shape == second.shape == (64, 96, 3)
    assert not np.array_equal(first, second)
    assert all(image.url is None and image.revised_prompt is None for image in two.data)

    alone = client.images.generate(prompt=PROMPT, model="sd", size="96x64", extra_body=seeded)
    again = client.images.generate(prompt=PROMPT, model="sd", size="96x64", extra_body=seeded)
    assert alone.data[0].b64_json == again.data[0].b64_json  # same seed, same bytes
    eighth = client.images.generate(
        prompt=PROMPT, model="sd", size="96x64", extra_body={**FAST, "seed": 8}
    )
    # Image i of n is drawn with seed + i (rows of a batch may differ by one level).
    assert np.abs(pixels(alone.data[0].b64_json) - first).max() <= 1
    assert np.abs(pixels(eighth.data[0].b64_json) - second).max() <= 1

    default = client.images.generate(prompt=PROMPT, size="auto", extra_body=FAST)
    assert default.size == "64x64" and pixels(default.data[0].b64_json).shape == (64, 64, 3)


def test_url_answers_serve_the_stored_png(app: RunningApp) -> None:
    client = sync_client(app)
    settings = {**FAST, "seed": 21, "negative_prompt": "blue", "guidance_scale": 3.0}
    stored = client.images.generate(
        prompt=PROMPT, model="sdxl", response_format="url", size="64x80", extra_body=settings
    )
    inline = client.images.generate(prompt=PROMPT, model="sdxl", size="64x80", extra_body=settings)
    [image] = stored.data
    assert image.b64_json is None and image.url.startswith(f"{app.url}/images/")
    served = httpx.get(image.url, timeout=30)
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    assert pixels(served.content).shape == (80, 64, 3)
    assert served.content == base64.b64decode(inline.data[0].b64_json)


def test_a_stream_sends_partial_images_then_the_image_the_plain_request_draws(
    app: RunningApp,
) -> None:
    client = sync_client(app)
    settings = {"num_inference_steps": 4, "seed": 5}
    events = list(
        client.images.generate(
            prompt=PROMPT,
            model="sd",
            size="80x64",
            stream=True,
            partial_images=2,
            background="opaque",
            extra_body=settings,
        )
    )
    assert [event.type for event in events] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    partials, completed = events[:-1], events[-1]
    assert [event.partial_image_index for event in partials] == [0, 1]
    for event in events:
        assert (event.size, event.output_format, event.background) == ("80x64", "png", "opaque")
        assert pixels(event.b64_json).shape == (64, 80, 3)
    assert completed.usage.total_tokens == 0
    assert len({event.b64_json for event in events}) == 3  # intermediate images, all different
    plain = client.images.generate(prompt=PROMPT, model="sd", size="80x64", extra_body=settings)
    assert completed.b64_json == plain.data[0].b64_json

    async def async_stream() -> list:
        stream = await async_client(app).images.generate(
            prompt=PROMPT, model="sd", size="80x64", stream=True, extra_body=settings
        )
        return [event async for event in stream]

    [only] = asyncio.run(async_stream())  # partial_images unset: the image alone
    assert only.type == "image_generation.completed" and only.b64_json == completed.b64_json


def test_partial_images_show_the_denoising_toward_the_prompt(app: RunningApp) -> None:
    """At the tiny model's trained settings (20 steps, guidance 2) the final image shows the
    prompt's colours, and each partial image is closer to it than the one before."""
    stream = sync_client(app).images.generate(
        prompt=PROMPT,
        model="sd",
        stream=True,
        partial_images=3,
        extra_body={"num_inference_steps": 20, "guidance_scale": 2.0, "seed": 1},
    )
    *partials, completed = list(stream)
    final = pixels(completed.b64_json)
    image = Image.fromarray(final.astype(np.uint8))
    assert read_generated(image) == ("white", "red")
    distances = [np.abs(pixels(event.b64_json) - final).mean() for event in partials]
    assert len(distances) == 3 and distances[0] > distances[1] > distances[2] > 0, distances


def test_a_client_that_leaves_a_stream_stops_the_generation(app: RunningApp) -> None:
    def steps_done() -> float:
        text = httpx.get(f"{app.url}/metrics", timeout=30).text
        return series_value(text, "ray_vlgraph_generation_steps_total", model="sd")

    before = steps_done()
    # Partial images after steps 50, 100 and 150 of 200: leave at the first.
    with sync_client(app).images.generate(
        prompt=PROMPT,
        model="sd",
        stream=True,
        partial_images=3,
        extra_body={"num_inference_steps": TEST_MAX_STEPS, "seed": 2},
    ) as stream:
        first = next(iter(stream))
    assert first.type == "image_generation.partial_image"
    time.sleep(3)  # the generator stops between two steps; let metrics export
    deadline = time.monotonic() + 20
    while (done := steps_done() - before) < 50 and time.monotonic() < deadline:
        time.sleep(1)
    # Run to its end, it would make all 200 steps; it stops soon after the client leaves (how
    # soon depends on the shared machine: the cancellation crosses the proxy and the ingress).
    assert 50 <= done < TEST_MAX_STEPS, f"{done} steps ran after the client left"
    started = time.monotonic()  # the replica is free again: a new image comes at once
    sync_client(app).images.generate(prompt=PROMPT, model="sd", extra_body=FAST)
    assert time.monotonic() - started < 20


def test_variations_draw_the_uploads_caption_again(app: RunningApp) -> None:
    client = sync_client(app)
    upload = png_upload(3)
    settings = {"seed": 4, "num_inference_steps": 2}
    answer = client.images.create_variation(image=upload, n=2, size="64x64", extra_body=settings)
    with app.client() as http:
        similar = http.post(
            "/api/similar-image",
            files={"image": upload},
            data={key: str(value) for key, value in settings.items()},
        ).json()
    captions = {image.revised_prompt for image in answer.data}
    assert captions == {similar["caption"]} and similar["caption"]
    first, second = (pixels(image.b64_json) for image in answer.data)
    assert first.shape == (64, 64, 3) and not np.array_equal(first, second)
    assert np.abs(first - pixels(similar["generated"]["image"])).max() <= 1
    assert answer.size == "64x64" and answer.output_format == "png"

    async def stored() -> openai.types.ImagesResponse:
        return await async_client(app).images.create_variation(
            image=upload, response_format="url", model="sdxl", extra_body=settings
        )

    [image] = asyncio.run(stored()).data
    assert image.revised_prompt == similar["caption"]
    served = httpx.get(image.url, timeout=30)
    assert served.headers["content-type"] == "image/png"
    assert np.abs(pixels(served.content) - first).max() <= 1


BAD, UNPROCESSABLE = openai.BadRequestError, openai.UnprocessableEntityError


@pytest.mark.parametrize(
    ("fields", "error", "code", "param", "fragment"),
    [
        ({"size": "65x64"}, UNPROCESSABLE, "generation_limit", "size", "64 to"),
        ({"size": "64x136"}, UNPROCESSABLE, "generation_limit", "size", str(TEST_MAX_IMAGE_SIDE)),
        ({"size": "big"}, UNPROCESSABLE, "generation_limit", "size", "WIDTH"),
        ({"n": 5}, UNPROCESSABLE, "invalid_request", "n", "4"),
        ({"model": "dall-e-3"}, UNPROCESSABLE, "unknown_model", "model", "sd"),
        ({"model": "gemma"}, BAD, "generate_not_supported", "model", "sd"),
        ({"quality": "hd"}, BAD, "unsupported_field", "quality", "quality"),
        ({"style": "vivid"}, BAD, "unsupported_field", "style", "prompt"),
        ({"background": "transparent"}, BAD, "unsupported_field", "background", "opaque"),
        ({"output_format": "jpeg"}, BAD, "unsupported_field", "output_format", "PNG"),
        ({"stream": True, "n": 2}, BAD, "unsupported_field", "n", "one image"),
        ({"num_inference_steps": 0}, UNPROCESSABLE, "generation_limit", "num_inference_steps", "1"),
        ({"prompt": "  "}, UNPROCESSABLE, "generation_limit", "prompt", "empty"),
    ],
)
def test_generation_refusals_name_the_field(
    app: RunningApp, fields: dict, error: type, code: str, param: str, fragment: str
) -> None:
    body = {"prompt": PROMPT, **FAST, **fields}
    with pytest.raises(error) as raised:
        sync_client(app).images.generate(**{"prompt": PROMPT, "extra_body": body})
    assert (raised.value.body["code"], raised.value.body["param"]) == (code, param)
    assert fragment in raised.value.body["message"]
    with app.client() as http:
        response = http.post("/v1/images/generations", json=body)
    check_openai_error(response, raised.value.status_code, code, param)


def test_unknown_fields_and_harmless_ones(app: RunningApp) -> None:
    client = sync_client(app)
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.generate(prompt=PROMPT, extra_body={"height": 64})
    assert raised.value.body["param"] == "height"
    assert raised.value.body["code"] == "unsupported_field"
    accepted = client.images.generate(
        prompt=PROMPT,
        user="someone",
        quality="auto",
        moderation="auto",
        output_format="png",
        extra_body={**FAST, "safety_identifier": "hash"},
    )
    assert len(accepted.data) == 1


def test_variation_refusals(app: RunningApp) -> None:
    client = sync_client(app)
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.create_variation(image=png_upload(5), model="sd")
    assert raised.value.body["code"] == "image_variation_not_supported"
    assert raised.value.body["param"] == "model" and "sdxl" in raised.value.body["message"]
    with app.client() as http:
        unknown = http.post(
            "/v1/images/variations", files={"image": png_upload(5)}, data={"style": "vivid"}
        )
        too_many = http.post(
            "/v1/images/variations", files={"image": png_upload(5)}, data={"n": "5"}
        )
        bad_size = http.post(
            "/v1/images/variations", files={"image": png_upload(5)}, data={"size": "1024x1024"}
        )
        not_image = http.post(
            "/v1/images/variations", files={"image": ("a.png", b"text", "image/png")}
        )
        no_image = http.post("/v1/images/variations", files={"other": ("a", b"")})
    check_openai_error(unknown, 400, "unsupported_field", "style")
    check_openai_error(too_many, 422, "invalid_request", "n")
    check_openai_error(bad_size, 422, "generation_limit", "size", str(TEST_MAX_IMAGE_SIDE))
    check_openai_error(not_image, 415, "unsupported_media_type")
    check_openai_error(no_image, 422, "invalid_request", "image")


def test_the_description_states_both_operations(app: RunningApp) -> None:
    with app.client() as http:
        document = http.get("/openapi.json").json()
    generations = document["paths"]["/v1/images/generations"]["post"]
    assert {"application/json", "text/event-stream"} <= set(
        generations["responses"]["200"]["content"]
    )
    assert {"400", "413", "415", "422", "503"} <= set(generations["responses"])
    reference = generations["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = document["components"]["schemas"][reference.rpartition("/")[2]]
    assert body["required"] == ["prompt"] and body["additionalProperties"] is False
    fields = body["properties"]
    assert fields["model"]["anyOf"][0]["enum"] == ["sd", "sdxl"]
    assert fields["partial_images"]["anyOf"][0]["maximum"] == 3
    assert fields["num_inference_steps"]["anyOf"][0]["maximum"] == TEST_MAX_STEPS
    assert fields["quality"]["anyOf"][0]["enum"] == ["auto", "standard"]
    size = fields["size"]["anyOf"][0]["pattern"]
    assert f"|{TEST_MAX_IMAGE_SIDE})x(" in size and "|65|" not in size
    assert body["then"] == {"properties": {"n": {"maximum": 1}}}

    variations = document["paths"]["/v1/images/variations"]["post"]
    form = variations["requestBody"]["content"]["multipart/form-data"]
    assert form["schema"]["properties"]["image"]["format"] == "binary"
    assert form["schema"]["properties"]["model"]["enum"] == ["sdxl"]
    assert "image/png" in form["encoding"]["image"]["contentType"]
    assert {"400", "413", "415", "422", "503"} <= set(variations["responses"])
