"""Typed settings of the models a profile names itself (``models: {NAME: {task: ...}}``):
chat and caption models (any image-text-to-text checkpoint), embedding models (CLIP-like dual
encoders, sentence-transformers) and generators (any diffusers text-to-image pipeline), told
apart by their ``task``. What each checkpoint can do is read when the profile is built
(:mod:`graphs.named_models`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from vlgraph.limits import MIN_SIZE, SIZE_MULTIPLE
from vlgraph.model_config import DiffusionConfig, EncoderConfig, VisionLanguageConfig

#: What a named chat model of a profile does: ``chat`` (conversations about images,
#: captions and flags, through the checkpoint's chat template) or ``caption`` (captions only,
#: through the chat template or after a text prefix).
ModelTask = Literal["chat", "caption"]

#: A named model's name: what the API takes as ``model`` and Serve names its deployment after.
MODEL_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"


class ChatModelConfig(VisionLanguageConfig):
    """A model a profile names itself: any image-text-to-text checkpoint with a chat template
    (Qwen2.5-VL, SmolVLM, LLaVA-OneVision, ...), served with the batching, streaming, limits,
    cache, errors and APIs of the built-in ones."""

    task: ModelTask = Field(description="chat or caption: what the model is served for.")
    label: str | None = Field(
        None, max_length=80, description="Shown by GET /api/models and the page; default: its name."
    )
    multi_image: bool | None = Field(
        None,
        description="Whether one prompt may show several images. Unset: read from the "
        "checkpoint when the profile is built (set it where the weights are only on workers).",
    )


class EmbeddingModelConfig(EncoderConfig):
    """An embedding model a profile names itself: a CLIP-like dual encoder (CLIP, SigLIP,
    SigLIP 2: images and texts in one space, loaded with transformers' ``AutoModel``) or a
    sentence-transformers model (texts, or texts and images for its CLIP models)."""

    task: Literal["embed"] = Field(description="embed: vectors of images and texts.")
    label: str | None = Field(
        None, max_length=80, description="Shown by GET /api/models and the page; default: its name."
    )
    modalities: tuple[Literal["image", "text"], ...] | None = Field(
        None,
        min_length=1,
        description="What it embeds. Unset: read from the checkpoint when the profile is built "
        "(set it where the weights are only on workers).",
    )


class GenerationModelConfig(DiffusionConfig):
    """A text-to-image model a profile names itself: any diffusers pipeline that
    ``AutoPipelineForText2Image`` loads (Stable Diffusion 3, PixArt, Sana, FLUX, ...). Bounds
    left unset are read from the pipeline when the profile is built: the default steps and
    guidance of its ``__call__``, the default size its denoiser was trained at, the size step
    of its VAE and patches, the largest size its position table holds."""

    task: Literal["generate"] = Field(description="generate: images from text.")
    family: Literal["auto"] = Field(
        "auto", description="auto: the pipeline class named by the checkpoint's model_index.json."
    )
    label: str | None = Field(
        None, max_length=80, description="Shown by GET /api/models and the page; default: its name."
    )
    default_steps: int | None = Field(
        None, ge=1, le=500, description="Unset: the pipeline's default."
    )
    default_size: int | None = Field(
        None,
        ge=MIN_SIZE,
        le=4096,
        multiple_of=SIZE_MULTIPLE,
        description="Unset: the size the denoiser was trained at.",
    )
    max_height: int | None = Field(
        None,
        ge=MIN_SIZE,
        le=4096,
        multiple_of=SIZE_MULTIPLE,
        description="Unset: the largest size its position table holds, else the size it was "
        "trained at (or default_size when larger).",
    )
    max_width: int | None = Field(
        None, ge=MIN_SIZE, le=4096, multiple_of=SIZE_MULTIPLE, description="As max_height."
    )
    size_multiple: int | None = Field(
        None,
        ge=SIZE_MULTIPLE,
        le=128,
        multiple_of=SIZE_MULTIPLE,
        description="Unset: the VAE's downsampling times the denoiser's patch size.",
    )
    guidance_scale: float | None = Field(
        None, ge=0, le=50, description="Unset: the pipeline's default."
    )

    def unset_limits(self) -> set[str]:
        """The bounds this profile leaves to the pipeline."""
        return {name for name in PIPELINE_LIMIT_FIELDS if getattr(self, name) is None}


#: The fields of a named generator that its pipeline fills in when the profile leaves them unset.
PIPELINE_LIMIT_FIELDS = (
    "default_steps",
    "default_size",
    "max_height",
    "max_width",
    "size_multiple",
    "guidance_scale",
)


#: The tasks of the models a profile names itself.
NAMED_TASKS = ("chat", "caption", "embed", "generate")
#: A model a profile names itself, told apart by its ``task``.
NamedModelConfig = Annotated[
    ChatModelConfig | EmbeddingModelConfig | GenerationModelConfig, Field(discriminator="task")
]
