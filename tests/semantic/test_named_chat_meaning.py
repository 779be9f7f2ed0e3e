"""A chat model that a profile names itself, of an architecture no code of vlgraph names
(SmolVLM, the Idefics3 classes, ``tiny:smolvlm``), trained on the world: its captions, flags,
collective captions and ``/v1/chat/completions`` replies about held-out images mean what the
images show, through the served HTTP path, and batches answer as single calls; channel-swapped
images fail the caption check.

The model is served as the profiles name models (``models: {smol: {task: chat, source:
tiny:smolvlm}}``), in an application of its own beside the session's, with BLIP only: the
session's app and the tests that list its models stay as they are."""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.named_apps import named_model, served_named_models
from tests.support.openai_api import data_uri, image_message
from tests.support.world_checks import (
    held_out,
    names_colour_and_background,
    names_shape,
    record,
    share,
    swap_channels,
)
from vlgraph.tiny.world import SHAPES, collective_caption

pytestmark = [pytest.mark.integration, pytest.mark.semantic]

#: Named model -> its tiny checkpoint, trained on the world.
NAMED = {"smol": "tiny:smolvlm"}
#: The held-out images of the built-in captioners' tests (tests/semantic/test_caption_meaning.py).
IMAGES = held_out(48, offset=10)
#: Colour and background right for at least this share of the captions (SmolVLM: 100% of 48).
COLOUR_AND_BACKGROUND = 0.90
#: Flags that agree with the picture (SmolVLM: 91.7% of 48; chance is 50%).
FLAGS = 0.85
#: Sets of images whose collective caption names every image's colour (SmolVLM: 8 of 8).
COLLECTIVE = 0.75
#: /v1/chat/completions replies that name the colour and the background (SmolVLM: 12 of 12).
CHAT = 0.90


@pytest.fixture(scope="module")
def named_url(ray_instance: int, checkpoint_cache: Path, image_root: Path) -> Iterator[str]:
    """BLIP and the named chat models, as a profile names them."""
    # A collective caption of three images takes 11 tokens.
    named = {
        name: named_model("chat", source, generation={"max_new_tokens": 16})
        for name, source in NAMED.items()
    }
    with served_named_models(
        ray_instance, checkpoint_cache, image_root, "named-world", named
    ) as url:
        yield url


def caption_alone(url: str, model: str, image, **params: str) -> dict:
    """One image in one request."""
    response = httpx.post(
        f"{url}/api/caption-images",
        files=[("images", (image.filename, image.data, image.media_type))],
        params={"model": model, **params},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    (item,) = response.json()["results"]
    assert item["error"] is None, item
    return item


def concurrently(function, items) -> list:
    """``function`` of every item, eight clients at once (the replica batches them)."""
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(function, items))


@pytest.mark.parametrize("model", list(NAMED))
def test_the_named_model_is_listed_as_trained_on_the_world(named_url: str, model: str) -> None:
    listed = {
        m["name"]: m for m in httpx.get(f"{named_url}/api/models", timeout=30).json()["models"]
    }
    assert listed[model]["random_weights"] is False, listed[model]
    assert set(listed[model]["capabilities"]) == {"caption", "flag", "collective", "chat"}


@pytest.mark.parametrize("model", list(NAMED))
def test_captions_name_colour_and_background_alone_and_batched(named_url: str, model: str) -> None:
    alone = [caption_alone(named_url, model, image)["caption"] for image in IMAGES]
    batched = concurrently(lambda image: caption_alone(named_url, model, image)["caption"], IMAGES)
    assert batched == alone
    right = share(
        [names_colour_and_background(c, i.scene) for c, i in zip(alone, IMAGES, strict=True)]
    )
    shape = share([names_shape(c, i.scene) for c, i in zip(alone, IMAGES, strict=True)])
    whole = share([c == i.scene.caption for c, i in zip(alone, IMAGES, strict=True)])
    record(f"{model} captions: colour and background", right, COLOUR_AND_BACKGROUND, len(IMAGES))
    record(f"{model} captions: shape", shape, count=len(IMAGES))
    record(f"{model} captions: whole caption", whole, count=len(IMAGES))
    assert right >= COLOUR_AND_BACKGROUND, list(
        zip(alone, [i.scene.caption for i in IMAGES], strict=True)
    )


@pytest.mark.parametrize("model", list(NAMED))
def test_flags_agree_with_the_picture(named_url: str, model: str) -> None:
    rng = random.Random(len(IMAGES))
    asked = [rng.choice(SHAPES) for _ in IMAGES]
    pairs = list(zip(IMAGES, [f"is there a {shape}?" for shape in asked], strict=True))

    def flag(pair) -> bool:
        image, question = pair
        return caption_alone(named_url, model, image, flag_caption_prompt=question)["flagged"]

    alone = [flag(pair) for pair in pairs]
    assert concurrently(flag, pairs) == alone
    truth = [shape == image.scene.shape for shape, image in zip(asked, IMAGES, strict=True)]
    agreement = share([flagged == true for flagged, true in zip(alone, truth, strict=True)])
    record(f"{model} flags: 'is there a <shape>?'", agreement, FLAGS, len(IMAGES))
    assert agreement >= FLAGS, list(zip(alone, truth, strict=True))


@pytest.mark.parametrize("model", list(NAMED))
def test_collective_captions_name_every_image_colour(named_url: str, model: str) -> None:
    rng = random.Random(7)
    sets = [rng.sample(IMAGES, rng.choice((2, 3))) for _ in range(8)]

    def collective(images) -> str:
        response = httpx.post(
            f"{named_url}/api/caption-collective-images",
            files=[("images", (i.filename, i.data, i.media_type)) for i in images],
            params={"model": model},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        return response.json()["collective_caption"]

    answers = [collective(images) for images in sets]
    assert concurrently(collective, sets) == answers
    named = share(
        [
            all(image.scene.colour in answer.split() for image in images)
            for answer, images in zip(answers, sets, strict=True)
        ]
    )
    exact = share(
        [
            answer == collective_caption([i.scene for i in images])
            for answer, images in zip(answers, sets, strict=True)
        ]
    )
    record(f"{model} collective captions: every image's colour named", named, COLLECTIVE, 8)
    record(f"{model} collective captions: exact", exact, count=8)
    assert named >= COLLECTIVE, list(
        zip(answers, [[i.scene.caption for i in s] for s in sets], strict=True)
    )


@pytest.mark.parametrize("model", list(NAMED))
def test_chat_completions_describe_the_image(named_url: str, model: str) -> None:
    """The official client asks about one held-out image per conversation; whole replies
    name its colour and background, and a stream adds up to the whole reply."""
    client = openai.OpenAI(base_url=f"{named_url}/v1", api_key="unused", max_retries=0, timeout=120)
    images = IMAGES[:12]

    def describe(image) -> str:
        uri = data_uri(image.data, image.media_type)
        reply = client.chat.completions.create(
            model=model, messages=[image_message("Describe this image in one sentence.", uri)]
        )
        assert reply.model == model and reply.choices[0].finish_reason == "stop", reply
        return reply.choices[0].message.content

    alone = [describe(image) for image in images]
    assert concurrently(describe, images) == alone
    right = share(
        [names_colour_and_background(text, i.scene) for text, i in zip(alone, images, strict=True)]
    )
    record(f"{model} /v1/chat/completions: colour and background", right, CHAT, len(images))
    assert right >= CHAT, list(zip(alone, [i.scene.caption for i in images], strict=True))
    uri = data_uri(images[0].data, images[0].media_type)
    stream = client.chat.completions.create(
        model=model,
        messages=[image_message("Describe this image in one sentence.", uri)],
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == alone[0]


@pytest.mark.parametrize("model", list(NAMED))
def test_swapped_channels_fail_the_caption_check(named_url: str, model: str) -> None:
    """The negative control: an RGB/BGR mix-up falls below the threshold the real path meets."""
    swapped = held_out(24, offset=10, transform=swap_channels)
    captions = [caption_alone(named_url, model, image)["caption"] for image in swapped]
    right = share(
        [names_colour_and_background(c, i.scene) for c, i in zip(captions, swapped, strict=True)]
    )
    record(f"{model} captions of channel-swapped images: colour and background", right, count=24)
    assert right < COLOUR_AND_BACKGROUND
