"""What a diffusers text-to-image checkpoint can do, read from its own files when a profile is
built: whether ``AutoPipelineForText2Image`` serves it at all, and the bounds a named generator
leaves to the pipeline (:class:`~vlgraph.config.GenerationModelConfig`).

Everything is read from ``model_index.json``, the denoiser's and the VAE's ``config.json`` and
the pipeline class's ``__call__`` defaults; no weights are loaded. A checkpoint that is not a
plain text-to-image pipeline is refused here, with the model's name, the class it found and the
classes served, so no replica starts that would fail every request.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlgraph.errors import UnsupportedModelError
from vlgraph.limits import MIN_SIZE, SIZE_MULTIPLE
from vlgraph.model_config import DiffusionConfig
from vlgraph.named_model_config import GenerationModelConfig

#: Pipelines in diffusers' text-to-image table that need an input besides the prompt (a
#: control image, an image to edit): not served by the text-to-image routes.
_NEEDS_MORE_THAN_TEXT = ("ControlNet", "Control", "Kontext", "Inpaint", "Omni")
#: Pipelines that pack 2x2 latents into one token (FLUX and its kin): their sides are
#: multiples of twice the VAE's downsampling though their transformer's patch size is 1.
_PACKED_LATENTS = ("Flux", "Chroma", "QwenImage")
#: The default size of a pipeline whose denoiser does not say what it was trained at.
_FALLBACK_SIZE = 1024
#: Largest side a profile may allow (the config's bound).
_LARGEST_SIDE = 4096


@dataclass(frozen=True)
class PipelineLimits:
    """The bounds a text-to-image checkpoint sets for itself."""

    #: The class ``model_index.json`` names, e.g. ``StableDiffusion3Pipeline``.
    pipeline_class: str
    #: Sides are multiples of this: the VAE's downsampling times the denoiser's patch size.
    size_multiple: int
    #: The side the denoiser was trained at (its ``sample_size`` in latents, in pixels).
    default_size: int
    #: The largest side its position table holds (SD 3's ``pos_embed_max_size``); None when
    #: nothing in the checkpoint bounds it.
    max_size: int | None
    default_steps: int | None
    guidance_scale: float | None


def served_pipeline_classes() -> dict[str, type]:
    """The pipeline classes named generators are served with, by name: diffusers'
    text-to-image table, less those that need more than a prompt."""
    from diffusers.pipelines.auto_pipeline import AUTO_TEXT2IMAGE_PIPELINES_MAPPING

    return {
        pipeline.__name__: pipeline
        for pipeline in AUTO_TEXT2IMAGE_PIPELINES_MAPPING.values()
        if not any(part in pipeline.__name__ for part in _NEEDS_MORE_THAN_TEXT)
    }


def read_pipeline_limits(path: Path, name: str) -> PipelineLimits:
    """The limits of the checkpoint folder ``path`` of the generator ``name``, or
    :class:`UnsupportedModelError` when no text-to-image pipeline serves it."""
    index = _json(path / "model_index.json")
    if index is None:
        raise UnsupportedModelError(
            f"models.{name}: {path} is not a diffusers pipeline (no model_index.json); task "
            "generate serves text-to-image pipelines saved by diffusers' save_pretrained"
        )
    found = index.get("_class_name")
    served = served_pipeline_classes()
    if found not in served:
        raise UnsupportedModelError(
            f"models.{name}: the checkpoint is a {found}, which is not a text-to-image pipeline "
            f"that vlgraph serves; task generate serves {', '.join(sorted(served))}"
        )
    denoiser = next((part for part in ("transformer", "unet", "prior") if part in index), None)
    denoiser_config = _json(path / denoiser / "config.json") if denoiser else None
    vae_config = _json(path / "vae" / "config.json") or {}
    downsampling = 2 ** max(0, len(vae_config.get("block_out_channels", (0,) * 4)) - 1)
    denoiser_config = denoiser_config or {}
    patch = int(denoiser_config.get("patch_size") or 1)
    if any(found.startswith(prefix) for prefix in _PACKED_LATENTS):
        patch = max(patch, 2)
    multiple = _rounded_up(downsampling * patch, SIZE_MULTIPLE)
    sample_size = denoiser_config.get("sample_size")
    if isinstance(sample_size, list | tuple):
        sample_size = min(sample_size)
    default = _FALLBACK_SIZE if not sample_size else int(sample_size) * downsampling
    default = max(MIN_SIZE, min(_LARGEST_SIDE, _rounded_up(default, multiple)))
    positions = denoiser_config.get("pos_embed_max_size")
    max_size = None
    if positions:
        max_size = min(_LARGEST_SIDE, int(positions) * patch * downsampling)
        max_size -= max_size % multiple
    call = inspect.signature(served[found].__call__).parameters
    return PipelineLimits(
        pipeline_class=found,
        size_multiple=multiple,
        default_size=default if max_size is None else min(default, max_size),
        max_size=max_size,
        default_steps=_default(call, "num_inference_steps", int),
        guidance_scale=_default(call, "guidance_scale", float),
    )


def with_pipeline_limits(
    model: GenerationModelConfig, limits: PipelineLimits, name: str
) -> GenerationModelConfig:
    """``model`` with the bounds it leaves unset filled in from ``limits``, checked again; a
    bound set past what the pipeline can draw is refused with the model's name."""
    default_size = model.default_size or limits.default_size
    # Nothing in the checkpoint bounds the size: up to the size it was trained at.
    largest = limits.max_size or max(limits.default_size, default_size)
    filled: dict[str, Any] = {
        "size_multiple": model.size_multiple or limits.size_multiple,
        "default_size": default_size,
        "max_height": model.max_height or largest,
        "max_width": model.max_width or largest,
        "default_steps": _first_set(model.default_steps, limits.default_steps, "default_steps"),
        "guidance_scale": _first_set(model.guidance_scale, limits.guidance_scale, "guidance_scale"),
    }
    if filled["size_multiple"] % limits.size_multiple:
        raise UnsupportedModelError(
            f"models.{name}.size_multiple ({filled['size_multiple']}) must be a multiple of "
            f"{limits.size_multiple}, the size step of its {limits.pipeline_class}"
        )
    for field in ("max_height", "max_width", "default_size"):
        if limits.max_size is not None and filled[field] > limits.max_size:
            raise UnsupportedModelError(
                f"models.{name}.{field} ({filled[field]}) is larger than its "
                f"{limits.pipeline_class} can draw: {limits.max_size} px (its position table)"
            )
    try:
        return type(model).model_validate(
            {**model.model_dump(exclude_unset=True), **filled}, strict=False
        )
    except ValueError as error:
        raise UnsupportedModelError(
            f"models.{name}: with the bounds of its {limits.pipeline_class}: {error}"
        ) from None


def _first_set(profile: Any, pipeline: Any, field: str) -> Any:
    """The profile's value, else the pipeline's, else the built-in generators' default."""
    if profile is not None:
        return profile
    return pipeline if pipeline is not None else DiffusionConfig.model_fields[field].default


def _default(parameters: Any, name: str, kind: type) -> Any:
    parameter = parameters.get(name)
    if parameter is None or parameter.default in (inspect.Parameter.empty, None):
        return None
    return kind(parameter.default)


def _rounded_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
