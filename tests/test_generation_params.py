"""Generation settings resolved against a model's bounds (no Ray)."""

import pytest

from vlgraph.config import DiffusionConfig
from vlgraph.generation_params import MAX_SEED, BoundsError, GenerationSettings, resolve_generation

CONFIG = DiffusionConfig(
    family="sd",
    source="tiny:sd",
    default_steps=4,
    max_steps=10,
    default_size=64,
    max_height=128,
    max_width=256,
    guidance_scale=7.5,
    max_guidance_scale=15,
)


def resolve(prompt: str = "a cat", **fields):
    return resolve_generation(prompt, GenerationSettings(**fields), CONFIG, 50)


def test_defaults_fill_what_the_request_leaves_out() -> None:
    request = resolve("  a cat  ")
    assert (request.prompt, request.height, request.width) == ("a cat", 64, 64)
    assert (request.steps, request.guidance_scale, request.negative_prompt) == (4, 7.5, None)
    assert 0 <= request.seed <= MAX_SEED
    assert resolve(seed=3, height=128, width=256, num_inference_steps=10).seed == 3


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"height": 72 + 1}, "multiple of 8"),
        ({"height": 136}, "128"),
        ({"width": 264}, "256"),
        ({"width": 56}, "between 64"),
        ({"num_inference_steps": 0}, "between 1 and 10"),
        ({"num_inference_steps": 11}, "between 1 and 10"),
        ({"guidance_scale": -1}, "guidance_scale"),
        ({"guidance_scale": 16}, "15"),
        ({"seed": -1}, "seed"),
        ({"seed": MAX_SEED + 1}, "seed"),
        ({"negative_prompt": "x" * 51}, "negative_prompt has 51 characters; the limit is 50"),
    ],
)
def test_each_bound_is_refused_naming_it(fields: dict, fragment: str) -> None:
    with pytest.raises(BoundsError, match=fragment) as error:
        resolve(**fields)
    assert error.value.status == 422


def test_prompts_must_say_something_within_the_limit() -> None:
    with pytest.raises(BoundsError, match="empty"):
        resolve("   ")
    with pytest.raises(BoundsError, match="51 characters"):
        resolve("y" * 51)
