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
    """The raw (not normalized) embedding and, for a text, how many tokens the encoder read;
    or the error that kept this input from one."""

    embedding: tuple[float, ...] | None = None
    error: ItemError | None = None
    tokens: int | None = None
    #: The encoder's checkpoint (:func:`~vlgraph.model_source.checkpoint_fingerprint`).
    fingerprint: str | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """One image to generate, every setting resolved by the caller.

    ``negative_prompt`` is the only optional setting of the image: ``None`` is the pipeline's
    own default (``""`` for Stable Diffusion, zero embeddings for SDXL). ``partial_images``
    asks a stream for that many intermediate images (``partial_image`` events); it never
    changes the final image, and plain generation ignores it.
    """

    prompt: str
    negative_prompt: str | None
    height: int
    width: int
    steps: int
    guidance_scale: float
    seed: int
    partial_images: int = 0


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
    ``total_steps``), after some steps a ``partial_image`` (the PNG the latents of that step
    decode to, numbered from 0 by ``partial_image_index``), then the ``image`` or an
    ``error``, each of those two carrying the final result."""

    kind: Literal["step", "partial_image", "image", "error"]
    step: int | None = None
    total_steps: int | None = None
    result: GenerationResult | None = None
    partial_image_index: int | None = None
    image_png: bytes | None = None


@dataclass(frozen=True)
class SimilarImageRequest:
    """An image to caption and the generation settings for its caption (prompt left empty)."""

    image: bytes
    generation: GenerationRequest


@dataclass(frozen=True)
class ChatPart:
    """One part of a chat message's content: a ``text``, or the next ``image`` of the
    conversation (its bytes are in :attr:`ChatRequest.images`, in order of appearance)."""

    kind: Literal["text", "image"]
    text: str = ""


@dataclass(frozen=True)
class ChatTurn:
    """One message of a conversation."""

    role: Literal["system", "user", "assistant"]
    parts: tuple[ChatPart, ...]

    @property
    def text(self) -> str:
        """The message's text parts, joined by a space."""
        return " ".join(part.text for part in self.parts if part.kind == "text")


@dataclass(frozen=True)
class ChatRequest:
    """A conversation to continue, with its images and sampling settings.

    ``max_tokens`` ``None`` is the model's configured default; ``temperature`` ``None`` or 0
    decodes greedily; a ``seed`` makes sampling repeatable (the request then runs alone).
    Generation ends at ``max_tokens``, the end of the model's turn, or the first of ``stop``.
    """

    turns: tuple[ChatTurn, ...]
    images: tuple[bytes, ...] = ()
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()


FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class ChatResult:
    """The reply (``finish_reason``: ``stop`` at the end of the turn or a stop string,
    ``length`` at ``max_tokens``) and its token counts, or the error that kept it from one."""

    text: str | None = None
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: ItemError | None = None


@dataclass(frozen=True)
class ChatDelta:
    """One event of a streamed reply: new ``text``, then a last event carrying the
    :class:`ChatResult` (its ``finish_reason`` and counts, or its error)."""

    text: str = ""
    result: ChatResult | None = None
