"""The multi-model captioning API through a real serve.run: every model, prompts, tags, flags,
collective captions, and every error case."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image

from tests.support.common import (
    TEST_MAX_IMAGE_BYTES,
    TEST_MAX_PROMPT_CHARS,
    TEST_MAX_UPLOAD_IMAGES,
    RunningApp,
    jpeg_bytes,
    noise_image,
    world_image,
    world_scene,
)
from vlgraph.tags import caption_tags

pytestmark = pytest.mark.integration

MODELS = ["blip", "blip2", "gemma", "intern_vlm"]


def upload(name: str, data: bytes, content_type: str = "image/jpeg") -> tuple:
    return ("images", (name, data, content_type))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def post(app: RunningApp, route: str, files: list, **params: str):
    with app.client(timeout=120) as client:
        return client.post(route, files=files, params=params)


def test_default_model_is_blip_and_the_response_has_the_original_shape(app: RunningApp) -> None:
    response = post(app, "/api/caption-images", [upload("img.jpg", jpeg_bytes(noise_image(1)))])
    assert response.status_code == 200, response.text
    (item,) = response.json()["results"]
    assert item["filename"] == "img.jpg"
    assert isinstance(item["caption"], str) and item["caption"]
    assert item["tags"] == caption_tags(item["caption"], app.config.ingress.max_tags)
    assert item["flagged"] is False and item["cache"] is False and item["error"] is None
    single = post(
        app, "/api/caption-images", [upload("img.jpg", jpeg_bytes(noise_image(1)))], model="blip"
    )
    assert single.json() == response.json()


@pytest.mark.parametrize("model", MODELS)
def test_every_model_captions_flags_and_batches_exactly(app: RunningApp, model: str) -> None:
    images = [jpeg_bytes(world_image(index)) for index in (0, 1, 2)]
    params = {"model": model, "flag_caption_prompt": "Is there a dog in this picture?"}
    together = post(
        app,
        "/api/caption-images",
        [upload(f"n{i}.jpg", data) for i, data in enumerate(images)],
        **params,
    )
    assert together.status_code == 200, together.text
    results = together.json()["results"]
    assert [item["filename"] for item in results] == ["n0.jpg", "n1.jpg", "n2.jpg"]
    for item in results:
        assert isinstance(item["caption"], str)
        assert isinstance(item["flagged"], bool)
        assert item["error"] is None
    singles = [
        post(app, "/api/caption-images", [upload(f"n{i}.jpg", data)], **params).json()["results"][0]
        for i, data in enumerate(images)
    ]
    assert singles == results
    assert len({item["caption"] for item in results}) > 1, "images must change the caption"


def test_blip_caption_prompt_is_the_caption_prefix(app: RunningApp) -> None:
    response = post(
        app,
        "/api/caption-images",
        [upload("img.jpg", jpeg_bytes(noise_image(2)))],
        model="blip",
        caption_prompt="a photo of",
    )
    assert response.status_code == 200, response.text
    item = response.json()["results"][0]
    assert item["caption"].startswith("a photo of")
    assert not {"photo"} & set(item["tags"]), "prompt words are not tags"


@pytest.mark.parametrize("model", ["blip2", "gemma", "intern_vlm"])
def test_vlm_caption_prompt_changes_the_instruction(app: RunningApp, model: str) -> None:
    """The caption prompt is the model's instruction: asked the world's yes/no question, the
    offline model answers it instead of captioning."""
    scene = world_scene(3)
    files = [upload("img.jpg", jpeg_bytes(world_image(3)))]
    plain = post(app, "/api/caption-images", files, model=model).json()["results"][0]
    assert plain["caption"] == scene.caption
    prompted = post(
        app,
        "/api/caption-images",
        files,
        model=model,
        caption_prompt=f"Is there a {scene.shape}? Answer yes or no.",
    )
    assert prompted.status_code == 200, prompted.text
    assert prompted.json()["results"][0]["caption"] == "yes"


@pytest.mark.parametrize("model", ["gemma", "intern_vlm"])
def test_collective_caption_for_multi_image_models(app: RunningApp, model: str) -> None:
    files = [upload(f"c{i}.jpg", jpeg_bytes(noise_image(30 + i))) for i in range(3)]
    response = post(
        app,
        "/api/caption-collective-images",
        files,
        model=model,
        flag_caption_prompt="Are these photos of food?",
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"collective_caption", "count", "tags", "flagged"}
    assert body["count"] == 3 and isinstance(body["collective_caption"], str)
    assert isinstance(body["flagged"], bool)
    assert body["tags"] == caption_tags(body["collective_caption"], app.config.ingress.max_tags)
    two = post(app, "/api/caption-collective-images", files[:2], model=model).json()
    assert two["count"] == 2


def test_collective_caption_without_a_model_uses_the_first_multi_image_model(
    app: RunningApp,
) -> None:
    """Multi-model captioning's default model (blip) cannot caption a set: without ``model``
    the set goes to the first multi-image model the profile serves (gemma), not to an error."""
    files = [upload(f"d{i}.jpg", jpeg_bytes(noise_image(45 + i))) for i in range(2)]
    default = post(app, "/api/caption-collective-images", files)
    assert default.status_code == 200, default.text
    gemma = post(app, "/api/caption-collective-images", files, model="gemma")
    assert default.json() == gemma.json()


@pytest.mark.parametrize("model", ["blip", "blip2"])
def test_collective_caption_is_refused_for_single_image_models(app: RunningApp, model: str) -> None:
    files = [upload(f"c{i}.jpg", jpeg_bytes(noise_image(40 + i))) for i in range(2)]
    response = post(app, "/api/caption-collective-images", files, model=model)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "collective_not_supported"
    assert "gemma" in error["message"] and "intern_vlm" in error["message"]


def test_unknown_model_lists_the_known_ones(app: RunningApp) -> None:
    response = post(
        app, "/api/caption-images", [upload("a.jpg", jpeg_bytes(noise_image(1)))], model="gpt"
    )
    assert response.status_code == 422, response.text
    message = response.json()["error"]["message"]
    assert "model" in message
    for name in MODELS:
        assert name in message


def test_type_is_judged_by_the_bytes_not_the_name_or_header(app: RunningApp) -> None:
    text = post(app, "/api/caption-images", [upload("a.jpg", b"just some text", "image/jpeg")])
    assert text.status_code == 415, text.text
    assert text.json()["error"]["code"] == "unsupported_media_type"
    gif = io.BytesIO()
    noise_image(4).save(gif, format="GIF")
    assert post(app, "/api/caption-images", [upload("a.png", gif.getvalue())]).status_code == 415
    png_named_jpeg = post(
        app, "/api/caption-images", [upload("x.jpg", png_bytes(noise_image(5)), "text/plain")]
    )
    assert png_named_jpeg.status_code == 200, png_named_jpeg.text
    webp = io.BytesIO()
    noise_image(6).save(webp, format="WEBP")
    assert post(app, "/api/caption-images", [upload("w.webp", webp.getvalue())]).status_code == 200


def test_limits_on_images_per_request_bytes_and_prompts(app: RunningApp) -> None:
    one = jpeg_bytes(noise_image(1))
    too_many = [upload(f"{i}.jpg", one) for i in range(TEST_MAX_UPLOAD_IMAGES + 1)]
    response = post(app, "/api/caption-images", too_many)
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_many_images"
    big = png_bytes(noise_image(7, (400, 400)))
    assert len(big) > TEST_MAX_IMAGE_BYTES
    response = post(app, "/api/caption-images", [upload("big.png", big)])
    assert response.status_code == 413 and response.json()["error"]["code"] == "image_too_large"
    response = post(
        app,
        "/api/caption-images",
        [upload("a.jpg", one)],
        caption_prompt="x" * (TEST_MAX_PROMPT_CHARS + 1),
    )
    assert response.status_code == 422 and response.json()["error"]["code"] == "prompt_too_long"


def test_no_images_is_a_validation_error(app: RunningApp) -> None:
    with app.client() as client:
        response = client.post("/api/caption-images", data={"model": "blip"})
    assert response.status_code == 422, response.text
    assert "images" in response.json()["error"]["message"]


def test_one_bad_image_among_good_ones_fails_alone(app: RunningApp) -> None:
    good = jpeg_bytes(noise_image(8))
    whole = jpeg_bytes(noise_image(9, (320, 240)))
    truncated = whole[: len(whole) // 2]  # a valid header: only decoding on the model fails
    files = [
        upload("good1.jpg", good),
        upload("text.jpg", b"not an image"),
        upload("cut.jpg", truncated),
        upload("good2.jpg", good),
    ]
    response = post(app, "/api/caption-images", files, model="gemma")
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results[0]["caption"] and results[0] == {**results[3], "filename": "good1.jpg"}
    assert results[1]["error"]["status"] == 415 and results[1]["caption"] is None
    assert results[2]["error"]["status"] == 422 and results[2]["caption"] is None


def test_collective_caption_refuses_the_set_when_one_image_is_bad(app: RunningApp) -> None:
    files = [upload("good.jpg", jpeg_bytes(noise_image(8))), upload("bad.jpg", b"text")]
    response = post(app, "/api/caption-collective-images", files, model="intern_vlm")
    assert response.status_code == 415, response.text
    assert "bad.jpg" in response.json()["error"]["message"]


def test_a_prompt_past_the_models_context_is_a_422_with_both_numbers(app: RunningApp) -> None:
    """Within the ingress's character limit but past the model's own positions (the tiny
    BLIP reads 64): refused before the model runs, never a 500, and only where it applies."""
    image = jpeg_bytes(noise_image(71))
    long_prompt = "a " * 70
    single = post(app, "/api/caption-images", [upload("a.jpg", image)], caption_prompt=long_prompt)
    assert single.status_code == 422, single.text
    error = single.json()["error"]
    assert error["code"] == "prompt_too_long_for_model"
    assert re.search(r"takes \d+ tokens; blip reads at most 64", error["message"]), error
    flag = post(
        app, "/api/caption-images", [upload("a.jpg", image)], flag_caption_prompt=long_prompt
    )
    assert flag.status_code == 422 and "at most 64" in flag.json()["error"]["message"]
    several = post(
        app,
        "/api/caption-images",
        [upload("a.jpg", image), upload("b.jpg", jpeg_bytes(noise_image(72)))],
        caption_prompt=long_prompt,
    )
    assert several.status_code == 200, several.text
    codes = [item["error"]["code"] for item in several.json()["results"]]
    assert codes == ["prompt_too_long_for_model"] * 2
    fits = post(
        app, "/api/caption-images", [upload("a.jpg", image)], caption_prompt="a photo " * 10
    )
    assert fits.status_code == 200, fits.text
    assert fits.json()["results"][0]["caption"].startswith("a photo a photo")
