"""CLIP embeddings: texts (multilingual) and images (by URL or base64) in one
512-dimensional space (``POST /encode_text``, ``POST /encode_image``), and the encoders'
``GET /health``.

Images given by URL are fetched by :class:`~vlgraph.safe_fetch.ImageFetcher` (public
addresses only, every hop checked, byte limit while streaming); base64 images get the same
byte and pixel limits as uploads. Vectors are cached raw and normalized here on request.
"""

import asyncio
import base64
import binascii
import math
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from deployments.ingress.context import IngressContext
from deployments.ingress.errors import error_responses
from deployments.ingress.openapi import MAX_IMAGE_URL_CHARS, MODEL_CAPABILITY
from deployments.ingress.routes.health import served_model_health
from vlgraph.errors import BadRequestError, ItemError, PayloadTooLargeError, ServiceError
from vlgraph.images import inspect_image
from vlgraph.messages import EncodeRequest
from vlgraph.served_models import Capability
from vlgraph.text_inputs import checked_text

_NORMALIZE = Field(
    False,
    description="true: unit-length vectors, so that a dot product is the cosine similarity.",
)


class EncodeTextRequest(BaseModel):
    """One text or a list of texts, in any of the model's 50+ languages."""

    # Strict: a JSON body is typed; "0" is not false, "1" is not a number.
    model_config = ConfigDict(extra="forbid", strict=True)

    text: str | list[str] = Field(examples=["This is a sample text to encode"])
    normalize: bool = _NORMALIZE
    model: str = Field(
        "clip_text",
        description="The text encoder: clip_text, or an embedding model the "
        "profile names (GET /api/models).",
    )


class EncodeImageRequest(BaseModel):
    """An image (or a list) by ``image_url`` or by ``image_b64``; exactly one of the two."""

    # Strict: a JSON body is typed; "0" is not false, "1" is not a number. The description
    # states the one-of rule the validator below enforces.
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "oneOf": [
                {"required": [name], "properties": {name: {"not": {"type": "null"}}}}
                for name in ("image_url", "image_b64")
            ]
        },
    )

    image_url: str | list[str] | None = Field(
        None, examples=["https://example.com/path/to/image.jpg"]
    )
    image_b64: str | list[str] | None = Field(None, description="Base64 of the image file.")
    normalize: bool = _NORMALIZE
    model: str = Field(
        "clip_image",
        description="The image encoder: clip_image, or an embedding model the "
        "profile names (GET /api/models).",
    )

    @model_validator(mode="after")
    def _exactly_one_source(self) -> "EncodeImageRequest":
        if (self.image_url is None) == (self.image_b64 is None):
            raise ValueError("send exactly one of image_url and image_b64")
        return self


class EmbeddingResponse(BaseModel):
    """``embedding`` for one input, ``embeddings`` (in request order) for a list."""

    embedding: list[float] | None = Field(None, description="512 floats (one input).")
    embeddings: list[list[float]] | None = Field(None, description="One vector per input.")
    dimension: int = Field(examples=[512])
    normalized: bool = Field(description="Whether the vectors have unit length.")
    model: str = Field(description="The encoder: clip_text, clip_image or a named model.")


class EncoderHealth(BaseModel):
    """The encoders' health answer."""

    status: str = Field(examples=["healthy"])


class Embedding:
    """What the embedding routes share: list bounds, text and image checks, fetching and
    decoding images, and one cached vector per input."""

    def __init__(self, context: IngressContext):
        self._config = context.config
        self._fetcher = context.fetcher
        self._gateway = context.gateway

    def listed(self, given: str | list[str]) -> list[str]:
        items = given if isinstance(given, list) else [given]
        limit = self._config.max_encode_items
        if not items:
            raise ServiceError("the list is empty", code="empty_input", status=422)
        if len(items) > limit:
            raise PayloadTooLargeError(
                f"{len(items)} inputs in one request; the limit is {limit}",
                code="too_many_inputs",
            )
        return items

    def check_text(self, text: str, index: int | None) -> None:
        checked_text(
            text,
            what="the text" if index is None else f"the text (item {index})",
            limit=self._config.max_text_chars,
            long_code="text_too_long",
            empty_code="empty_text",
        )

    async def fetched(self, url: str, index: int | None) -> bytes:
        try:
            if len(url) > MAX_IMAGE_URL_CHARS:
                raise BadRequestError(
                    f"the URL has {len(url)} characters; the limit is {MAX_IMAGE_URL_CHARS}",
                    code="invalid_url",
                )
            fetched = await self._fetcher.fetch(url)
            self.check_image(fetched.data)
        except ServiceError as error:
            raise _for_item(error, index) from None
        return fetched.data

    async def decoded_base64(self, text: str, index: int | None) -> bytes:
        limit = self._config.max_image_bytes
        try:
            if math.ceil(len(text) * 3 / 4) > limit + 3:
                raise PayloadTooLargeError(
                    f"the image is over the {limit}-byte limit", code="image_too_large"
                )
            try:
                data = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise BadRequestError(
                    "image_b64 is not valid base64 (standard alphabet, no line breaks)",
                    code="invalid_base64",
                ) from None
            if len(data) > limit:
                raise PayloadTooLargeError(
                    f"the image is over the {limit}-byte limit", code="image_too_large"
                )
            self.check_image(data)
        except ServiceError as error:
            raise _for_item(error, index) from None
        return data

    def check_image(self, data: bytes) -> None:
        inspect_image(data, self._config.allowed_formats, self._config.max_image_pixels)

    async def embed(self, name: str, capability: Capability, item: bytes | str) -> list[float]:
        """The raw vector of one text or image by encoder ``name``, cached."""
        return (await self.embed_counted(name, capability, item))[0]

    async def embed_counted(
        self, name: str, capability: Capability, item: bytes | str
    ) -> tuple[list[float], int]:
        """The raw vector of one text or image by encoder ``name``, cached, and the tokens
        the encoder read (0 for an image)."""
        handle = self._gateway.handle(name, capability)

        async def compute() -> dict | ItemError:
            result = await self._gateway.call(name, handle.encode.remote(EncodeRequest(item=item)))
            return result.error or {"embedding": list(result.embedding), "tokens": result.tokens}

        outcome = await self._gateway.cached(name, item, compute)
        if isinstance(outcome, ItemError):
            raise ServiceError.from_item_error(outcome)
        return outcome[0]["embedding"], outcome[0].get("tokens") or 0

    @staticmethod
    def response(
        name: str, given: Any, vectors: list[list[float]], normalize: bool
    ) -> EmbeddingResponse:
        rows = [unit(vector) if normalize else list(vector) for vector in vectors]
        single = not isinstance(given, list)
        return EmbeddingResponse(
            embedding=rows[0] if single else None,
            embeddings=None if single else rows,
            dimension=len(rows[0]),
            normalized=normalize,
            model=name,
        )


def unit(vector: list[float]) -> list[float]:
    """``vector`` scaled to length 1 (a zero vector as it is)."""
    norm = math.sqrt(sum(value * value for value in vector))
    return [value / norm for value in vector] if norm > 0 else list(vector)


def _for_item(error: ServiceError, index: int | None) -> ServiceError:
    """The error, its message naming the list item it is about."""
    if index is not None:
        error.message = f"item {index}: {error.message}"
    return error


def router(context: IngressContext) -> APIRouter:
    """The embedding routes of one ingress replica."""
    routes = APIRouter()
    embedding = Embedding(context)
    encoders = context.gateway.served(Capability.EMBED_IMAGE) + context.gateway.served(
        Capability.EMBED_TEXT
    )

    @routes.post(
        "/encode_text",
        response_model=EmbeddingResponse,
        response_model_exclude_none=True,
        summary="Embed text in CLIP's space, any of 50+ languages",
        responses=error_responses(400, 413, 422, 503),
        openapi_extra={MODEL_CAPABILITY: Capability.EMBED_TEXT.value},
    )
    async def encode_text(body: EncodeTextRequest) -> EmbeddingResponse:
        """The text's 512-dimensional vector (multilingual CLIP text encoder)."""
        texts = embedding.listed(body.text)
        for index, text in enumerate(texts):
            embedding.check_text(text, index if isinstance(body.text, list) else None)
        context.gateway.handle(body.model, Capability.EMBED_TEXT)  # 4xx before any work
        vectors = await asyncio.gather(
            *(embedding.embed(body.model, Capability.EMBED_TEXT, text) for text in texts)
        )
        return embedding.response(body.model, body.text, vectors, body.normalize)

    @routes.post(
        "/encode_image",
        response_model=EmbeddingResponse,
        response_model_exclude_none=True,
        summary="Embed an image in CLIP's space, by URL or base64",
        responses=error_responses(400, 403, 413, 415, 422, 503),
        openapi_extra={MODEL_CAPABILITY: Capability.EMBED_IMAGE.value},
    )
    async def encode_image(body: EncodeImageRequest) -> EmbeddingResponse:
        """The image's 512-dimensional vector (CLIP ViT-B/32 image encoder)."""
        context.gateway.handle(body.model, Capability.EMBED_IMAGE)  # 4xx before any fetch
        given = body.image_url if body.image_url is not None else body.image_b64
        items = embedding.listed(given)
        reader = embedding.fetched if body.image_url is not None else embedding.decoded_base64
        one = not isinstance(given, list)
        images = await asyncio.gather(
            *(reader(item, None if one else index) for index, item in enumerate(items))
        )
        vectors = await asyncio.gather(
            *(embedding.embed(body.model, Capability.EMBED_IMAGE, data) for data in images)
        )
        return embedding.response(body.model, given, vectors, body.normalize)

    @routes.get(
        "/health",
        response_model=EncoderHealth,
        summary="Health of the encoders",
        responses={503: {"model": EncoderHealth, "description": "An encoder is unreachable."}},
    )
    async def encoder_health(response: Response) -> EncoderHealth:
        """``{"status": "healthy"}`` while the encoders can serve; 503 otherwise."""
        models = await asyncio.to_thread(served_model_health, context)
        found = [models[name] for name in encoders if name in models]
        if found and all(model.reachable for model in found):
            return EncoderHealth(status="healthy")
        response.status_code = 503
        return EncoderHealth(status="unhealthy")

    return routes
