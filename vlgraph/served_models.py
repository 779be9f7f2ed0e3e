"""What the ingress knows of each served model: its API name, its deployment and what it can
do. The model registry (:mod:`graphs.registry`) writes these for the models a profile serves;
the ingress reads them (model lookup, OpenAPI, ``GET /api/models``, health) without importing
the registry or any model code.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class Capability(enum.StrEnum):
    """One thing a served model does, named as the API and the page name it."""

    CAPTION = "caption"
    FLAG = "flag"
    COLLECTIVE = "collective"
    ANSWER = "answer"
    EMBED_IMAGE = "embed_image"
    EMBED_TEXT = "embed_text"
    GENERATE = "generate"
    CHAT = "chat"


#: The generators the caption -> diffusion pipeline chains into, in order of preference: it
#: uses the first one the profile serves.
PIPELINE_GENERATORS = ("sdxl", "sd")


def pipeline_generator(served: Iterable[str]) -> str | None:
    """The generator among ``served`` that the caption -> diffusion pipeline chains into."""
    names = set(served)
    return next((name for name in PIPELINE_GENERATORS if name in names), None)


class ChatMode(enum.StrEnum):
    """What ``POST /v1/chat/completions`` accepts for a model, from what it can do."""

    #: Several messages and images, system messages, text alone (Gemma 3, InternVL).
    CONVERSATION = "conversation"
    #: Several messages about exactly one image (BLIP-2).
    ONE_IMAGE = "one_image"
    #: One user message: one image and one question (BLIP VQA).
    QUESTION = "question"
    #: One user message: one image, and optional text the caption starts with (captioners).
    CAPTION = "caption"


def chat_mode(capabilities: frozenset[Capability]) -> ChatMode | None:
    """How a model with ``capabilities`` chats, or None when it does not."""
    if Capability.CHAT in capabilities:
        return (
            ChatMode.CONVERSATION if Capability.COLLECTIVE in capabilities else ChatMode.ONE_IMAGE
        )
    if Capability.ANSWER in capabilities:
        return ChatMode.QUESTION
    if Capability.CAPTION in capabilities:
        return ChatMode.CAPTION
    return None


@dataclass(frozen=True)
class ServedModel:
    """A model the running profile serves."""

    name: str
    label: str
    deployment: str
    capabilities: frozenset[Capability]
    #: A tiny checkpoint left random: its answers are noise.
    random_weights: bool = False
    #: A tiny checkpoint trained on the offline world (vlgraph.tiny.world): it knows only that.
    offline_world: bool = False

    def can(self, capability: Capability) -> bool:
        """Whether this model does ``capability``."""
        return capability in self.capabilities


@dataclass(frozen=True)
class ModelCatalog:
    """Every model name the application knows (served or not) and the ones this profile
    serves, in registry order."""

    known: dict[str, frozenset[Capability]]
    served: tuple[ServedModel, ...]

    def get(self, name: str) -> ServedModel | None:
        """The served model called ``name``, or None."""
        return next((model for model in self.served if model.name == name), None)

    def names(self, capability: Capability | None = None) -> tuple[str, ...]:
        """Served models' names, all or those that do ``capability``."""
        return tuple(
            model.name for model in self.served if capability is None or model.can(capability)
        )

    def known_names(self, capability: Capability | None = None) -> tuple[str, ...]:
        """Every model name the application knows, all or those that do ``capability``."""
        return tuple(
            name for name, does in self.known.items() if capability is None or capability in does
        )
