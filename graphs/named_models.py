"""Registry entries of the models a profile names itself (``models.NAME: {task: ...}``).

A named chat or caption model is served by the vision-language deployment, a named embedding
model by the named-encoder deployment, a named generator by the diffusion deployment. What each
can do comes from its checkpoint, read when the profile is built: the family that serves it
(which refuses a checkpoint no family serves, with the model's name, before any replica
starts), whether it reads several images per prompt, what an encoder embeds, a generator's
pipeline and the bounds it sets (:mod:`vlgraph.pipeline_limits`). A profile whose weights are
only on the workers declares those instead (``multi_image``, ``modalities``, every bound of a
generator).
"""

from __future__ import annotations

from pathlib import Path

from deployments.diffusion import DiffusionDeployment
from deployments.named_encoder import NamedEncoderDeployment
from deployments.vlm_caption import VisionLanguageDeployment
from graphs.model_entry import ModelEntry
from vlgraph.config import (
    AppConfig,
    ChatModelConfig,
    EmbeddingModelConfig,
    GenerationModelConfig,
    ModelFamilyConfig,
)
from vlgraph.embedding_families import IMAGE, TEXT, derive_encoder
from vlgraph.errors import ModelUnavailableError
from vlgraph.model_source import resolve_model_path
from vlgraph.pipeline_limits import read_pipeline_limits, with_pipeline_limits
from vlgraph.served_models import Capability
from vlgraph.vlm_families import checked_family

_EMBEDS = {IMAGE: Capability.EMBED_IMAGE, TEXT: Capability.EMBED_TEXT}
GENERATE = Capability.GENERATE


def named_entries(config: AppConfig) -> list[tuple[ModelEntry, ModelFamilyConfig]]:
    """An entry for each model ``config`` names, with its settings, in profile order."""
    cache_dir = config.resolved_cache_dir()
    entries: list[tuple[ModelEntry, ModelFamilyConfig]] = []
    for name, model in config.models.named().items():
        if isinstance(model, EmbeddingModelConfig):
            entries.append(
                (embedding_entry(name, model, modalities(name, model, cache_dir)), model)
            )
        elif isinstance(model, GenerationModelConfig):
            bounded = bounded_generator(name, model, cache_dir)
            entries.append((_entry(name, bounded, DiffusionDeployment, {GENERATE}), bounded))
        else:
            multi_image = reads_several_images(name, model, cache_dir)
            entries.append((chat_entry(name, model, multi_image), model))
    return entries


def chat_entry(name: str, model: ChatModelConfig, multi_image: bool) -> ModelEntry:
    """A chat or caption model: it captions (sets of images too when it reads several at
    once) and, for task ``chat``, answers flag questions and chats."""
    capabilities = {Capability.CAPTION} | ({Capability.COLLECTIVE} if multi_image else set())
    if model.task == "chat":
        capabilities |= {Capability.FLAG, Capability.CHAT}
    return _entry(name, model, VisionLanguageDeployment, capabilities)


def embedding_entry(name: str, model: EmbeddingModelConfig, embeds: tuple[str, ...]) -> ModelEntry:
    """An embedding model: it embeds the modalities ``embeds`` into one space."""
    return _entry(name, model, NamedEncoderDeployment, {_EMBEDS[m] for m in embeds})


def _entry(name: str, model, deployment, capabilities: set[Capability]) -> ModelEntry:
    return ModelEntry(
        name=name,
        label=model.label or name,
        section=f"models.{name}",
        deployment=deployment,
        deployment_name=f"{name}_{model.task}",
        capabilities=frozenset(capabilities),
    )


def reads_several_images(name: str, model: ChatModelConfig, cache_dir: Path) -> bool:
    """Whether the chat model ``name`` reads several images in one prompt: as the profile
    says, else as its checkpoint's family does."""
    if model.multi_image is not None:
        return model.multi_image
    path = _checkpoint(name, model, cache_dir, "multi_image")
    return checked_family(path, model.family, name, model.task).multi_image


def modalities(name: str, model: EmbeddingModelConfig, cache_dir: Path) -> tuple[str, ...]:
    """What the embedding model ``name`` embeds: as the profile says, else as its
    checkpoint's encoder family does."""
    if model.modalities is not None:
        return model.modalities
    return derive_encoder(_checkpoint(name, model, cache_dir, "modalities")).modalities


def bounded_generator(
    name: str, model: GenerationModelConfig, cache_dir: Path
) -> GenerationModelConfig:
    """The generator ``name`` with every bound set: as the profile says, the rest read from
    its pipeline (which must be a text-to-image one). A profile that sets every bound is built
    without reading the checkpoint."""
    if not model.unset_limits():
        return model
    path = _checkpoint(name, model, cache_dir, ", ".join(sorted(model.unset_limits())))
    return with_pipeline_limits(model, read_pipeline_limits(path, name), name)


def _checkpoint(name: str, model: ModelFamilyConfig, cache_dir: Path, declared: str) -> Path:
    """The local folder of ``model``'s checkpoint (a ``tiny:`` one is built here)."""
    try:
        return Path(resolve_model_path(name, model.source, cache_dir, model.revision, False))
    except ModelUnavailableError as error:
        raise ModelUnavailableError(
            f"{error} (or set models.{name}.{declared}, so that the profile is built without "
            "reading the checkpoint)"
        ) from None
