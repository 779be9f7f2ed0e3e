"""Generation settings resolved against a model's bounds (no Ray)."""

import pytest

from vlgraph.config import DiffusionConfig
from vlgraph.generation_params import (
    MAX_SEED,
    MIN_SIZE,
    BoundsError,
    GenerationSettings,
    generation_problems,
    resolve_generation,
)
from vlgraph.messages import GenerationRequest

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


@pytest.mark.parametrize(
    "fields",
    [
        {"height": MIN_SIZE},
        {"height": MIN_SIZE - 8},
        {"width": 256},
        {"width": 264},
        {"height": 73},
        {"num_inference_steps": 10},
        {"num_inference_steps": 11},
        {"guidance_scale": 15},
        {"guidance_scale": 15.5},
        {"seed": 0},
        {"seed": -1},
        {"seed": MAX_SEED},
        {"seed": MAX_SEED + 1},
        {"seed": 2**64 - 1},
    ],
)
def test_the_generator_checks_the_same_bounds_as_the_request(fields: dict) -> None:
    """One source for every limit: what the request model refuses, the generator's own check
    refuses too, and what it accepts the generator accepts."""
    try:
        resolve(**fields)
        accepted = True
    except BoundsError:
        accepted = False
    settings = {"height": 64, "width": 64, "steps": 4, "guidance_scale": 7.5, "seed": 1}
    renamed = {"num_inference_steps": "steps"}
    settings |= {renamed.get(key, key): value for key, value in fields.items()}
    request = GenerationRequest(prompt="a cat", negative_prompt=None, **settings)
    assert (generation_problems(request, CONFIG) == []) is accepted


def test_seeds_up_to_the_bound_seed_torch() -> None:
    """torch takes up to 2**64 - 1; the bound is the JSON-safe signed 64-bit maximum."""
    import torch

    assert MAX_SEED == 2**63 - 1
    assert torch.Generator().manual_seed(MAX_SEED).initial_seed() == MAX_SEED


def test_a_models_own_size_step_bounds_its_sizes() -> None:
    """SD 3 and PixArt draw multiples of 16 (8x VAE latents on 2x2 patches)."""
    patches = CONFIG.model_copy(update={"size_multiple": 16})
    assert resolve_generation("a", GenerationSettings(height=96), patches, 50).height == 96
    with pytest.raises(BoundsError, match="height must be a multiple of 16 between 64 and 128"):
        resolve_generation("a", GenerationSettings(height=72), patches, 50)
    assert resolve(height=72).height == 72  # a multiple of 8 for Stable Diffusion
    request = resolve(height=72)
    assert any("multiple of 16" in problem for problem in generation_problems(request, patches))
    assert not generation_problems(request, CONFIG)


def test_sizes_that_are_not_multiples_of_the_step_are_refused_in_the_config() -> None:
    with pytest.raises(
        ValueError, match=r"default_size \(72\) must be a multiple of size_multiple"
    ):
        DiffusionConfig(family="sd", source="x", default_size=72, size_multiple=16)
