"""The image routes' pure parts: OpenAI's ``size`` parsed against one generator's bounds (and
the pattern the API description states agrees with the parser on every candidate), the
bodies' descriptions, and the replica's stream events as OpenAI's server-sent events."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator

import pytest

from deployments.ingress.routes.openai.images import (
    _openai_events,
    image_bodies,
    parse_size,
    size_pattern,
)
from vlgraph.config import DiffusionConfig
from vlgraph.errors import ItemError
from vlgraph.generation_params import BoundsError
from vlgraph.messages import GenerationEvent, GenerationResult


def generator(**fields: int) -> DiffusionConfig:
    bounds = {"default_size": 64, "max_width": 128, "max_height": 96} | fields
    return DiffusionConfig(family="sd", source="tiny:sd", device="cpu", **bounds)


@pytest.mark.parametrize(
    ("size", "expected"),
    [(None, (64, 64)), ("auto", (64, 64)), ("128x96", (128, 96)), ("72x64", (72, 64))],
)
def test_sizes_within_the_bounds_are_width_then_height(
    size: str | None, expected: tuple[int, int]
) -> None:
    assert parse_size(size, generator(), "sd") == expected


@pytest.mark.parametrize(
    "size", ["65x64", "64x104", "136x64", "56x64", "64", "64x64x64", " 64x64", "64X64", "", "big"]
)
def test_other_sizes_are_a_422_naming_size_and_the_bounds(size: str) -> None:
    with pytest.raises(BoundsError) as refused:
        parse_size(size, generator(), "sd")
    assert (refused.value.status, refused.value.param) == (422, "size")
    message = refused.value.message
    assert "width 64 to 128 and height 64 to 96 for sd" in message and repr(size) in message


def test_the_described_pattern_takes_exactly_the_sizes_the_loosest_generator_takes() -> None:
    narrow, wide = generator(max_width=96), generator(max_height=128)
    pattern = re.compile(size_pattern([narrow, wide]))
    loosest = generator(max_height=128)
    for width in range(0, 200, 4):
        for height in range(0, 200, 4):
            size = f"{width}x{height}"
            try:
                parse_size(size, loosest, "sd")
                accepted = True
            except BoundsError:
                accepted = False
            assert bool(pattern.fullmatch(size)) == accepted, size
    assert pattern.fullmatch("auto") and not pattern.fullmatch("auto64x64")


def test_bodies_describe_their_generators_sizes_and_refuse_nothing_silently() -> None:
    generation, variation = image_bodies([generator()], generator(max_width=64))
    generation_schema = generation.model_json_schema()
    assert "(64|72|80|88|96|104|112|120|128)x" in str(generation_schema["properties"]["size"])
    assert "^(auto|(64)x(64|72|80|88|96))$" in str(variation.model_json_schema())
    assert generation_schema["additionalProperties"] is False
    assert generation_schema["properties"]["background"]["anyOf"][0]["enum"] == ["auto", "opaque"]
    body = generation.model_validate({"prompt": "x", "n": 2.0, "style": "vivid"})
    assert body.n == 2 and body.model_extra == {"style": "vivid"}  # refused by the route


def test_stream_events_are_openais_and_an_error_is_one_the_client_raises() -> None:
    described = {"size": "64x64", "quality": "auto", "background": "auto", "output_format": "png"}

    async def replica(last: GenerationEvent) -> AsyncIterator[GenerationEvent]:
        yield GenerationEvent(kind="step", step=1, total_steps=2)
        yield GenerationEvent(kind="partial_image", step=1, partial_image_index=0, image_png=b"a")
        yield last

    async def sent(last: GenerationEvent) -> list[tuple[str, dict]]:
        blocks = [block async for block in _openai_events("sd", replica(last), described)]
        pairs = [dict(line.split(": ", 1) for line in b.strip().splitlines()) for b in blocks]
        return [(pair["event"], json.loads(pair["data"])) for pair in pairs]

    done = GenerationEvent(kind="image", result=GenerationResult(image_png=b"b", seed=1))
    partial, completed = asyncio.run(sent(done))
    assert partial == ("image_generation.partial_image", {
        "type": "image_generation.partial_image", "b64_json": "YQ==", "partial_image_index": 0,
        "created_at": partial[1]["created_at"], **described,
    })  # fmt: skip
    assert completed[0] == completed[1]["type"] == "image_generation.completed"
    assert completed[1]["b64_json"] == "Yg==" and completed[1]["usage"]["total_tokens"] == 0
    failure = ItemError(status=503, code="model_timeout", message="too slow")
    failed = GenerationEvent(kind="error", result=GenerationResult(error=failure))
    _, (name, data) = asyncio.run(sent(failed))
    assert name == "error" and data["error"]["code"] == "model_timeout"
    assert data["error"]["message"] == "too slow"
