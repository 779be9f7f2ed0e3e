"""The model registry: one table of every model the application can serve.

Each entry says a model's API name, its section in the profile, its deployment class and
deployment name, and what it can do. :func:`graphs.app.build_app` binds the served entries,
and the ingress learns the API's model names, each route's choices, the OpenAPI description's
and the web page's model menus from the :class:`~vlgraph.served_models.ModelCatalog` made
here. Adding a model is one entry (with its family module, config section and tiny
checkpoint builder: see docs/adding-a-model.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.serve import Application
from ray.serve.deployment import Deployment

from deployments.blip_caption import BlipCaptionDeployment
from deployments.blip_vqa import BlipVqaDeployment
from deployments.clip_encoder import ClipImageDeployment, ClipTextDeployment
from deployments.diffusion import DiffusionDeployment
from deployments.git_caption import GitCaptionDeployment
from deployments.vlm_caption import VisionLanguageDeployment
from vlgraph.config import TINY_PREFIX, AppConfig, ChatModelConfig, ModelFamilyConfig
from vlgraph.errors import ModelUnavailableError
from vlgraph.model_source import resolve_model_path
from vlgraph.served_models import Capability, ModelCatalog, ServedModel
from vlgraph.tiny import trained_on_world
from vlgraph.vlm_families import checked_family

CAPTION, FLAG, COLLECTIVE = Capability.CAPTION, Capability.FLAG, Capability.COLLECTIVE
CHAT = Capability.CHAT


@dataclass(frozen=True)
class ModelEntry:
    """One model the application can serve."""

    name: str
    label: str
    section: str
    deployment: Deployment
    deployment_name: str
    capabilities: frozenset[Capability]
    #: Arguments of the deployment's constructor after (config, checkpoint folder, name).
    extra_args: tuple[Any, ...] = ()

    def config_of(self, config: AppConfig) -> ModelFamilyConfig | None:
        """This model's section of ``config`` (dotted path), None when not served."""
        found: Any = config
        for part in self.section.split("."):
            found = getattr(found, part)
        return found

    def bind(self, model: ModelFamilyConfig, checkpoint_cache_dir: str) -> Application:
        """The deployment of this model, with its Ray options from ``model``."""
        options = {"name": self.deployment_name, **model.serve_options()}
        return self.deployment.options(**options).bind(
            model, checkpoint_cache_dir, self.name, *self.extra_args
        )

    def served_as(self, model: ModelFamilyConfig) -> ServedModel:
        """What the ingress knows of this model when ``model`` serves it."""
        tiny = model.source.startswith(TINY_PREFIX)
        world = tiny and trained_on_world(model.source.removeprefix(TINY_PREFIX))
        return ServedModel(
            name=self.name,
            label=self.label,
            deployment=self.deployment_name,
            capabilities=self.capabilities,
            random_weights=tiny and not world,
            offline_world=world,
        )


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


def named_entry(name: str, model: ChatModelConfig, multi_image: bool) -> ModelEntry:
    """The entry of a model the profile names itself, served by the vision-language
    deployment: it captions (sets of images too when it reads several at once) and, for
    task ``chat``, answers flag questions and chats."""
    capabilities = {CAPTION} | ({COLLECTIVE} if multi_image else set())
    if model.task == "chat":
        capabilities |= {FLAG, CHAT}
    return ModelEntry(
        name=name,
        label=model.label or name,
        section=f"models.{name}",
        deployment=VisionLanguageDeployment,
        deployment_name=f"{name}_{model.task}",
        capabilities=frozenset(capabilities),
    )


def reads_several_images(name: str, model: ChatModelConfig, cache_dir: Path) -> bool:
    """Whether the named model ``name`` reads several images in one prompt: as the profile
    says, else as its checkpoint's family does (deriving it also refuses a checkpoint no
    family serves for the model's task, before any replica starts)."""
    if model.multi_image is not None:
        return model.multi_image
    try:
        path = resolve_model_path(name, model.source, cache_dir, model.revision, download=False)
    except ModelUnavailableError as error:
        raise ModelUnavailableError(
            f"{error} (or set models.{name}.multi_image, so that the profile is built without "
            "reading the checkpoint)"
        ) from None
    return checked_family(Path(path), model.family, name, model.task).multi_image


def served_entries(config: AppConfig) -> list[tuple[ModelEntry, ModelFamilyConfig]]:
    """The registry's entries that ``config`` serves, then its named models' entries, each
    with its model's settings."""
    served = []
    for entry in REGISTRY:
        model = entry.config_of(config)
        if model is not None:
            served.append((entry, model))
    cache_dir = config.resolved_cache_dir()
    for name, model in config.models.named().items():
        entry = named_entry(name, model, reads_several_images(name, model, cache_dir))
        served.append((entry, model))
    return served


def catalog(served: list[tuple[ModelEntry, ModelFamilyConfig]]) -> ModelCatalog:
    """Every model name the registry knows, and the ``served`` ones (:func:`served_entries`)."""
    known = {entry.name: entry.capabilities for entry in REGISTRY}
    known |= {entry.name: entry.capabilities for entry, _ in served}
    return ModelCatalog(
        known=known, served=tuple(entry.served_as(model) for entry, model in served)
    )
