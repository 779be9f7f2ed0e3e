"""``POST /v1/embeddings``: texts through the multilingual CLIP text encoder and images
through the CLIP image encoder, in one space, as OpenAI's embedding list.

Texts are ``input`` (a string or a list). Images come as infinity sends them (``modality:
"image"``, ``input`` a list of http(s) URLs or ``data:`` URIs) or as vLLM does (``messages``
whose one ``image_url`` part is the image; a text-only ``messages`` is a text). Either model
name, ``clip_text`` or ``clip_image``, names the one space; each input goes to the encoder of
its kind. An embedding model the profile names (a dual encoder such as SigLIP) embeds both
kinds itself. Vectors are unit length, as OpenAI's are, and the same cache as ``/encode_text`` and
``/encode_image`` serves both routes. ``encoding_format: base64`` (the ``openai`` client's
default) sends each vector as the base64 of its little-endian float32 bytes.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from openai.types import CreateEmbeddingResponse
from openai.types import Embedding as OpenAIEmbedding
from pydantic import Field

from deployments.ingress.callers import record_tokens
from deployments.ingress.context import IngressContext
from deployments.ingress.errors import error_responses
from deployments.ingress.openapi import MODEL_NAMES
from deployments.ingress.routes.embeddings import Embedding, unit
from deployments.ingress.routes.openai.image_urls import ImageUrls
from deployments.ingress.routes.openai.protocol import (
    EmbeddingsBody,
    ImageUrl,
    TextPart,
    refuse_unsupported,
)
from vlgraph.errors import BadRequestError, ServiceError
from vlgraph.served_models import Capability

#: The encoders of the one space: the text side and the image side.
TEXT_ENCODER, IMAGE_ENCODER = "clip_text", "clip_image"
#: One text or image input: (the field it came from, the text or the image's URL).
Item = tuple[str, str]


class EmbeddingVector(OpenAIEmbedding):
    """One vector of the response: a float list, or a base64 string when asked."""

    embedding: list[float] | str = Field(  # type: ignore[assignment]
        description="The vector as floats, or with encoding_format base64 the base64 of its "
        "little-endian float32 bytes"
    )


class EmbeddingList(CreateEmbeddingResponse):
    """OpenAI's embedding list, whose vectors may be base64 strings."""

    data: list[EmbeddingVector]  # type: ignore[assignment]


class OpenAIEmbeddings:
    """Reads a body's inputs and embeds each with the encoder of its kind."""

    def __init__(self, context: IngressContext):
        self._embedding = Embedding(context)
        self._images = ImageUrls(context)
        self._gateway = context.gateway

    def encoders(self, model: str) -> dict[str, str]:
        """The encoder of each kind (``text``, ``image``) in ``model``'s space: the built-in
        CLIP pair for either of its names, else the named embedding model itself for what it
        embeds. 4xx for a model that does not embed."""
        if model in (TEXT_ENCODER, IMAGE_ENCODER):
            return {"text": TEXT_ENCODER, "image": IMAGE_ENCODER}
        served = self._gateway.catalog.get(model)
        kinds = {
            kind: model
            for kind, capability in (
                ("text", Capability.EMBED_TEXT),
                ("image", Capability.EMBED_IMAGE),
            )
            if served is not None and served.can(capability)
        }
        if kinds:
            return kinds
        if model not in self._gateway.catalog.known:
            self._gateway.handle(model, Capability.EMBED_TEXT)  # 422 unknown_model
        names = embedding_models(self._gateway.catalog)
        raise BadRequestError(
            f"{model} does not embed; use one of: {', '.join(names)} ({TEXT_ENCODER} and "
            f"{IMAGE_ENCODER} are one space for texts and images)",
            code="embeddings_not_supported",
            param="model",
        )

    def inputs(self, body: EmbeddingsBody) -> tuple[str, list[Item]]:
        """The kind (``text`` or ``image``) and the inputs of ``body``, checked."""
        refuse_unsupported(body, {})
        if (body.input is None) == (body.messages is None):
            raise BadRequestError(
                "send exactly one of input and messages", code="invalid_input", param="input"
            )
        if body.messages is not None:
            return _from_messages(body)
        given = body.input
        if isinstance(given, list) and any(not isinstance(item, str) for item in given):
            raise BadRequestError(
                "input as token ids is not supported: send the text itself",
                code="token_ids_not_supported",
                param="input",
            )
        items = self._embedding.listed(given)  # type: ignore[arg-type]
        single = isinstance(given, str)
        fields = ["input" if single else f"input[{index}]" for index in range(len(items))]
        return body.modality, list(zip(fields, items, strict=True))

    async def vectors(
        self, encoders: dict[str, str], kind: str, items: list[Item]
    ) -> list[tuple[list[float], int]]:
        """Each input's raw vector and token count, in order, by the encoder of its kind."""
        encoder = encoders.get(kind)
        if encoder is None:
            (model,) = set(encoders.values())
            raise BadRequestError(
                f"{model} embeds no {kind}s", code="unsupported_input", param="modality"
            )
        if kind == "image":
            self._images.check_count(len(items), "input")
            images = await asyncio.gather(*(self._images.read(url, f) for f, url in items))
            return await asyncio.gather(
                *(
                    self._embedding.embed_counted(encoder, Capability.EMBED_IMAGE, data)
                    for data in images
                )
            )
        for index, (field, text) in enumerate(items):
            try:
                self._embedding.check_text(text, index if len(items) > 1 else None)
            except ServiceError as error:
                error.param = field
                raise
        return await asyncio.gather(
            *(
                self._embedding.embed_counted(encoder, Capability.EMBED_TEXT, text)
                for _, text in items
            )
        )


def embedding_models(catalog: Any) -> list[str]:
    """The served models ``/v1/embeddings`` takes, in catalog order."""
    able = set(catalog.names(Capability.EMBED_TEXT)) | set(catalog.names(Capability.EMBED_IMAGE))
    return [name for name in catalog.names() if name in able]


def _from_messages(body: EmbeddingsBody) -> tuple[str, list[Item]]:
    """vLLM's form: the one image of the messages, or their text."""
    texts: list[str] = []
    images: list[Item] = []
    for index, message in enumerate(body.messages or []):
        content = message.content
        if isinstance(content, str):
            texts.append(content)
            continue
        for position, part in enumerate(content or []):
            if isinstance(part, TextPart):
                texts.append(part.text)
            else:
                url = part.image_url.url if isinstance(part.image_url, ImageUrl) else part.image_url
                images.append((f"messages[{index}].content[{position}].image_url", url))
    if (images and any(text.strip() for text in texts)) or len(images) > 1:
        raise BadRequestError(
            "CLIP embeds one text or one image into one vector: send messages with either "
            "text or one image_url part",
            code="mixed_embedding_input",
            param="messages",
        )
    if images:
        return "image", images
    return "text", [("messages", " ".join(texts))]


def _encoded(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector


def router(context: IngressContext) -> APIRouter:
    """``POST /v1/embeddings`` of one ingress replica."""
    routes = APIRouter()
    embeddings = OpenAIEmbeddings(context)
    encoders = embedding_models(context.gateway.catalog)

    @routes.post(
        "/v1/embeddings",
        response_model=EmbeddingList,
        summary="Embed texts and images in one space (OpenAI's embeddings)",
        responses=error_responses(400, 403, 413, 415, 422, 503, openai=True),
        openapi_extra={MODEL_NAMES: encoders},
    )
    async def create_embeddings(body: EmbeddingsBody) -> Any:
        """One unit-length vector per input, in order; ``usage`` counts the text tokens."""
        encoders = embeddings.encoders(body.model)
        kind, items = embeddings.inputs(body)
        results = await embeddings.vectors(encoders, kind, items)
        dimension = len(results[0][0])
        if body.dimensions is not None and body.dimensions != dimension:
            raise BadRequestError(
                f"{body.model} makes {dimension}-dimensional vectors; send dimensions="
                f"{dimension} or leave it out",
                code="unsupported_dimensions",
                param="dimensions",
            )
        tokens = sum(count for _, count in results)
        record_tokens(body.model, tokens)
        answer = {
            "object": "list",
            "model": body.model,
            "data": [
                {
                    "object": "embedding",
                    "index": index,
                    "embedding": _encoded(unit(vector), body.encoding_format),
                }
                for index, (vector, _) in enumerate(results)
            ],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        # Returned as is: validating thousands of floats again would only cost time.
        return JSONResponse(answer)

    return routes
