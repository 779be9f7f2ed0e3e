"""The model registry: one table of every model the application can serve.

Each entry says a model's API name, its section in the profile, its deployment class and
deployment name, and what it can do. :func:`graphs.app.build_app` binds the served entries,
and the ingress learns the API's model names, each route's choices, the OpenAPI description's
and the web page's model menus from the :class:`~vlgraph.served_models.ModelCatalog` made
here. Adding a model is one entry (with its family module, config section and tiny
checkpoint builder: see docs/adding-a-model.md).
"""

from __future__ import annotations

from deployments.blip_caption import BlipCaptionDeployment
from deployments.blip_vqa import BlipVqaDeployment
from deployments.clip_encoder import ClipImageDeployment, ClipTextDeployment
from deployments.diffusion import DiffusionDeployment
from deployments.git_caption import GitCaptionDeployment
from deployments.vlm_caption import VisionLanguageDeployment
from graphs.model_entry import ModelEntry
from graphs.named_models import named_entries
from vlgraph.config import AppConfig, ModelFamilyConfig
from vlgraph.served_models import Capability, ModelCatalog

CAPTION, FLAG, COLLECTIVE = Capability.CAPTION, Capability.FLAG, Capability.COLLECTIVE
CHAT = Capability.CHAT


def _entry(name, label, section, deployment, deployment_name, *capabilities, extra_args=()):
    return ModelEntry(
        name, label, section, deployment, deployment_name, frozenset(capabilities), extra_args
    )


#: Every model the application can serve, in the order the API and the page list them.
REGISTRY: tuple[ModelEntry, ...] = (
    _entry("blip", "BLIP", "models.blip", BlipCaptionDeployment, "blip_caption", CAPTION, FLAG),
    _entry(
        "blip2",
        "BLIP-2",
        "models.blip2",
        VisionLanguageDeployment,
        "blip2_caption",
        CAPTION,
        FLAG,
        CHAT,
    ),
    _entry(
        "gemma",
        "Gemma 3",
        "models.gemma",
        VisionLanguageDeployment,
        "gemma_caption",
        CAPTION,
        FLAG,
        COLLECTIVE,
        CHAT,
    ),
    _entry(
        "intern_vlm",
        "InternVL",
        "models.intern_vlm",
        VisionLanguageDeployment,
        "intern_vlm_caption",
        CAPTION,
        FLAG,
        COLLECTIVE,
        CHAT,
    ),
    _entry("git", "GIT", "models.git", GitCaptionDeployment, "git_caption", CAPTION),
    _entry("vqa", "BLIP VQA", "vqa", BlipVqaDeployment, "blip_vqa", Capability.ANSWER),
    _entry(
        "clip_image",
        "CLIP image encoder",
        "clip_image",
        ClipImageDeployment,
        "clip_image_encoder",
        Capability.EMBED_IMAGE,
        extra_args=("image",),
    ),
    _entry(
        "clip_text",
        "CLIP multilingual text encoder",
        "clip_text",
        ClipTextDeployment,
        "clip_text_encoder",
        Capability.EMBED_TEXT,
        extra_args=("text",),
    ),
    _entry(
        "sd", "Stable Diffusion", "sd", DiffusionDeployment, "sd_generator", Capability.GENERATE
    ),
    _entry(
        "sdxl",
        "Stable Diffusion XL",
        "sdxl",
        DiffusionDeployment,
        "sdxl_generator",
        Capability.GENERATE,
    ),
)


def served_entries(config: AppConfig) -> list[tuple[ModelEntry, ModelFamilyConfig]]:
    """The registry's entries that ``config`` serves, then its named models' entries, each
    with its model's settings."""
    served = []
    for entry in REGISTRY:
        model = entry.config_of(config)
        if model is not None:
            served.append((entry, model))
    return served + named_entries(config)


def catalog(served: list[tuple[ModelEntry, ModelFamilyConfig]]) -> ModelCatalog:
    """Every model name the registry knows, and the ``served`` ones (:func:`served_entries`)."""
    known = {entry.name: entry.capabilities for entry in REGISTRY}
    known |= {entry.name: entry.capabilities for entry, _ in served}
    return ModelCatalog(
        known=known, served=tuple(entry.served_as(model) for entry, model in served)
    )
