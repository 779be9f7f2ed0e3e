"""Generators a profile names itself (task ``generate``): bounds read from the pipeline's own
files when the profile leaves them unset, refusals with the model's name for checkpoints that
are not text-to-image pipelines and for bounds past what the pipeline can draw, and the registry
entry the ingress learns the generator from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from graphs.app import build_app
from graphs.registry import catalog, served_entries
from vlgraph.config import AppConfig, GenerationModelConfig
from vlgraph.errors import ModelUnavailableError, UnsupportedModelError
from vlgraph.pipeline_limits import (
    read_pipeline_limits,
    served_pipeline_classes,
    with_pipeline_limits,
)
from vlgraph.served_models import Capability
from vlgraph.tiny import ensure_checkpoint


def generator(**fields: object) -> GenerationModelConfig:
    return GenerationModelConfig.model_validate({"task": "generate", "source": "x", **fields})


def profile(cache: Path, **named: dict) -> AppConfig:
    """A profile of the tiny BLIP and the ``named`` models."""
    return AppConfig.model_validate(
        {
            "checkpoint_cache_dir": str(cache),
            "access": {"mode": "open"},
            "models": {
                "blip": {"source": "tiny:blip-caption"},
                "blip2": None,
                "gemma": None,
                "intern_vlm": None,
                **named,
            },
            **dict.fromkeys(("vqa", "clip_image", "clip_text", "sd", "sdxl")),
        }
    )


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        # MMDiT on 2x2 patches of 8x latents, 8-latent sample size, 32-patch position table.
        ("sd3", ("StableDiffusion3Pipeline", 16, 64, 512, 28, 7.0)),
        # DiT on 2x2 patches, 32-latent sample size, positions interpolated (no table bound).
        ("pixart", ("PixArtSigmaPipeline", 16, 256, None, 20, 4.5)),
        # A UNet on 8x latents: any multiple of 8.
        ("sdxl", ("StableDiffusionXLPipeline", 8, 64, None, 50, 5.0)),
    ],
)
def test_limits_are_read_from_the_pipelines_own_files(
    checkpoint_cache: Path, family: str, expected: tuple
) -> None:
    limits = read_pipeline_limits(ensure_checkpoint(family, checkpoint_cache), family)
    found = (
        limits.pipeline_class,
        limits.size_multiple,
        limits.default_size,
        limits.max_size,
        limits.default_steps,
        limits.guidance_scale,
    )
    assert found == expected


def test_unset_bounds_come_from_the_pipeline_and_set_ones_stay(checkpoint_cache: Path) -> None:
    limits = read_pipeline_limits(ensure_checkpoint("sd3", checkpoint_cache), "sd3")
    filled = with_pipeline_limits(generator(), limits, "mine")
    assert (filled.default_size, filled.max_height, filled.max_width) == (64, 512, 512)
    assert (filled.size_multiple, filled.default_steps, filled.guidance_scale) == (16, 28, 7.0)
    assert filled.max_steps == 50 and filled.max_guidance_scale == 20.0  # the server's own
    assert not filled.unset_limits()
    chosen = with_pipeline_limits(
        generator(default_size=128, max_height=256, default_steps=4, guidance_scale=0.0),
        limits,
        "mine",
    )
    assert (chosen.default_size, chosen.max_height, chosen.max_width) == (128, 256, 512)
    assert (chosen.default_steps, chosen.guidance_scale) == (4, 0.0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_height": 1024}, r"models\.mine\.max_height \(1024\) is larger than .* 512 px"),
        ({"size_multiple": 24}, r"models\.mine\.size_multiple \(24\) must be a multiple of 16"),
        ({"default_size": 72}, r"default_size \(72\) must be a multiple of size_multiple \(16\)"),
        ({"default_size": 576}, r"models\.mine\.default_size \(576\) is larger than"),
    ],
)
def test_bounds_past_what_the_pipeline_draws_are_refused_with_the_models_name(
    checkpoint_cache: Path, fields: dict, message: str
) -> None:
    limits = read_pipeline_limits(ensure_checkpoint("sd3", checkpoint_cache), "sd3")
    with pytest.raises(UnsupportedModelError, match=message):
        with_pipeline_limits(generator(**fields), limits, "mine")


def test_checkpoints_that_are_not_text_to_image_pipelines_are_refused(
    checkpoint_cache: Path, tmp_path: Path
) -> None:
    with pytest.raises(
        UnsupportedModelError,
        match=r"models\.chat: .* not a diffusers pipeline \(no model_index\.json\)",
    ):
        read_pipeline_limits(ensure_checkpoint("blip2", checkpoint_cache), "chat")
    for found in ("StableDiffusionImg2ImgPipeline", "StableDiffusionControlNetPipeline"):
        folder = tmp_path / found
        shutil.copytree(ensure_checkpoint("sd", checkpoint_cache), folder)
        index = json.loads((folder / "model_index.json").read_text())
        (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": found}))
        with pytest.raises(UnsupportedModelError) as refused:
            read_pipeline_limits(folder, "edit")
        message = str(refused.value)
        assert f"models.edit: the checkpoint is a {found}" in message
        assert "StableDiffusion3Pipeline" in message and "PixArtSigmaPipeline" in message
    assert not any("ControlNet" in name for name in served_pipeline_classes())


def test_a_named_generator_is_an_entry_with_its_bounds_resolved(checkpoint_cache: Path) -> None:
    config = profile(
        checkpoint_cache,
        drawer={"task": "generate", "source": "tiny:sd3", "label": "SD 3", "default_steps": 2},
    )
    served = served_entries(config)
    entries = {entry.name: (entry, model) for entry, model in served}
    entry, model = entries["drawer"]
    assert (entry.label, entry.deployment_name, entry.section) == (
        "SD 3",
        "drawer_generate",
        "models.drawer",
    )
    assert entry.capabilities == {Capability.GENERATE}
    assert isinstance(model, GenerationModelConfig) and not model.unset_limits()
    assert (model.size_multiple, model.default_steps, model.max_height) == (16, 2, 512)
    assert catalog(served).names(Capability.GENERATE) == ("drawer",)
    build_app(config)  # binds the diffusion deployment with the resolved bounds


def test_a_generator_that_is_not_text_to_image_is_refused_when_the_app_is_built(
    checkpoint_cache: Path,
) -> None:
    config = profile(checkpoint_cache, drawer={"task": "generate", "source": "tiny:blip2"})
    with pytest.raises(UnsupportedModelError, match=r"models\.drawer: .* not a diffusers"):
        build_app(config)


def test_a_profile_that_sets_every_bound_is_built_without_the_checkpoint(tmp_path: Path) -> None:
    bounds = {
        "default_size": 512,
        "max_height": 1024,
        "max_width": 1024,
        "size_multiple": 16,
        "default_steps": 28,
        "guidance_scale": 3.5,
    }
    config = profile(
        tmp_path,
        remote={"task": "generate", "source": "stabilityai/stable-diffusion-3.5-medium", **bounds},
    )
    config = config.model_copy(update={"check_models_before_start": False})
    [(entry, model)] = [(e, m) for e, m in served_entries(config) if e.name == "remote"]
    assert model.max_height == 1024 and entry.capabilities == {Capability.GENERATE}
    partial = profile(
        tmp_path, remote={"task": "generate", "source": "stabilityai/stable-diffusion-3.5-medium"}
    )
    with pytest.raises(ModelUnavailableError, match=r"or set models\.remote\.default_size"):
        served_entries(partial)


def test_generate_is_a_task_of_the_profile() -> None:
    config = AppConfig.model_validate(
        {
            "models": {
                "art": {"task": "generate", "source": "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"}
            }
        }
    )
    (named,) = config.models.named().values()
    assert isinstance(named, GenerationModelConfig) and named.family == "auto"
    assert named.unset_limits() == {
        "default_steps",
        "default_size",
        "max_height",
        "max_width",
        "size_multiple",
        "guidance_scale",
    }
    with pytest.raises(ValidationError, match=r"art\.generate\.family"):
        AppConfig.model_validate(
            {"models": {"art": {"task": "generate", "source": "x", "family": "sdxl"}}}
        )
