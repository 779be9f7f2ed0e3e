"""What crosses between the ingress and the model deployments.

Plain dataclasses, pickled by Ray: images travel as their encoded bytes (smaller than pixels),
already checked by the ingress, and are decoded on the model replica.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vlgraph.errors import ItemError


@dataclass(frozen=True)
class CaptionRequest:
    """One image to caption; ``prompt`` conditions the caption (BLIP's text prefix)."""

    image: bytes
    prompt: str | None = None


@dataclass(frozen=True)
class CaptionResult:
    """A caption, or the error that kept this one image from getting one."""

    caption: str | None = None
    error: ItemError | None = None


@dataclass(frozen=True)
class FlagRequest:
    """A yes/no ``question`` about one image, or about a set of images together."""

    images: tuple[bytes, ...]
    question: str


@dataclass(frozen=True)
class FlagResult:
    """Whether the model answered yes, or the error that kept it from answering."""

    flagged: bool | None = None
    error: ItemError | None = None


@dataclass(frozen=True)
class CollectionCaptionRequest:
    """Several images that get one caption together; ``prompt`` replaces the instruction."""

    images: tuple[bytes, ...]
    prompt: str | None = None


@dataclass(frozen=True)
class QuestionRequest:
    """A question about one image (visual question answering with uploads)."""

    image: bytes
    question: str


@dataclass(frozen=True)
class AnswerResult:
    """The model's answer, or the error that kept it from answering."""

    answer: str | None = None
    error: ItemError | None = None


@dataclass(frozen=True)
class EncodeRequest:
    """One input of an encoder: encoded image bytes (checked by the ingress) or a text."""

    item: bytes | str


@dataclass(frozen=True)
class EmbeddingResult:
    """The raw (not normalized) embedding, or the error that kept this input from one."""

    embedding: tuple[float, ...] | None = None
    error: ItemError | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """One image to generate, every setting resolved by the caller.

    ``negative_prompt`` is the only optional field: ``None`` is the pipeline's own default
    (``""`` for Stable Diffusion, zero embeddings for SDXL).
    """

    prompt: str
    negative_prompt: str | None
    height: int
    width: int
    steps: int
    guidance_scale: float
    seed: int


@dataclass(frozen=True)
class GenerationResult:
    """A PNG image with the seed that made it, or the error that kept this request from one.

    ``nsfw`` is the safety checker's verdict (a flagged image comes back black), ``None`` when
    no checker runs (disabled, or SDXL, which has none).
    """

    image_png: bytes | None = None
    seed: int | None = None
    nsfw: bool | None = None
    error: ItemError | None = None


@dataclass(frozen=True)
class GenerationEvent:
    """One event of a streamed generation: a finished denoising ``step`` (1 to
    ``total_steps``), then the ``image``, or an ``error``, each carrying the final result."""

    kind: Literal["step", "image", "error"]
    step: int | None = None
    total_steps: int | None = None
    result: GenerationResult | None = None


@dataclass(frozen=True)
class SimilarImageRequest:
    """An image to caption and the generation settings for its caption (prompt left empty)."""

    image: bytes
    generation: GenerationRequest
