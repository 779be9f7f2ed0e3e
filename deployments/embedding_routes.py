"""Document 003's routes: CLIP embeddings of texts (multilingual) and images (by URL or
base64) in one 512-dimensional space, and its ``GET /health``. A mixin of the ingress class,
whose ``__init__`` sets ``_encoders``, ``_fetcher``, ``_config``, ``_cache`` and
``_fingerprints``.

Images given by URL are fetched by :class:`~vlgraph.safe_fetch.ImageFetcher` (public
addresses only, every hop checked, byte limit while streaming); base64 images get the same
byte and pixel limits as uploads. Vectors are cached raw and normalized here on request.
"""

import asyncio
import base64
import binascii
import math
from typing import Any

from fastapi import Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray.serve.handle import DeploymentHandle

from deployments.api import api
from deployments.http_errors import error_responses
from deployments.openapi import MAX_IMAGE_URL_CHARS
from vlgraph.errors import BadRequestError, PayloadTooLargeError, ServiceError
from vlgraph.images import inspect_image
from vlgraph.messages import EncodeRequest
from vlgraph.safe_fetch import ImageFetcher
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
    model: str = Field(description="The encoder's deployment: clip_text or clip_image.")


class EncoderHealth(BaseModel):
    """Document 003's health answer."""

    status: str = Field(examples=["healthy"])


class EmbeddingRoutes:
    """POST /encode_text, POST /encode_image, GET /health (document 003)."""

    _encoders: dict[str, DeploymentHandle]
    _fetcher: ImageFetcher

    @api.post(
        "/encode_text",
        response_model=EmbeddingResponse,
        response_model_exclude_none=True,
        summary="Embed text in CLIP's space, any of 50+ languages (document 003)",
        responses=error_responses(400, 413, 422, 503),
    )
    async def encode_text(self, body: EncodeTextRequest) -> EmbeddingResponse:
        """The text's 512-dimensional vector (multilingual CLIP text encoder)."""
        texts = self._listed(body.text)
        for index, text in enumerate(texts):
            self._check_text(text, index if isinstance(body.text, list) else None)
        vectors = await asyncio.gather(*(self._embed("clip_text", text) for text in texts))
        return self._response("clip_text", body.text, vectors, body.normalize)

    @api.post(
        "/encode_image",
        response_model=EmbeddingResponse,
        response_model_exclude_none=True,
        summary="Embed an image in CLIP's space, by URL or base64 (document 003)",
        responses=error_responses(400, 403, 413, 415, 422, 503),
    )
    async def encode_image(self, body: EncodeImageRequest) -> EmbeddingResponse:
        """The image's 512-dimensional vector (CLIP ViT-B/32 image encoder)."""
        given = body.image_url if body.image_url is not None else body.image_b64
        items = self._listed(given)
        reader = self._fetched if body.image_url is not None else self._decoded_base64
        one = not isinstance(given, list)
        images = await asyncio.gather(
            *(reader(item, None if one else index) for index, item in enumerate(items))
        )
        vectors = await asyncio.gather(*(self._embed("clip_image", data) for data in images))
        return self._response("clip_image", given, vectors, body.normalize)

    @api.get(
        "/health",
        response_model=EncoderHealth,
        summary="Health of the encoders (document 003)",
        responses={503: {"model": EncoderHealth, "description": "An encoder is unreachable."}},
    )
    async def encoder_health(self, response: Response) -> EncoderHealth:
        """``{"status": "healthy"}`` while the encoders can serve; 503 otherwise."""
        models = await asyncio.to_thread(self._model_health)
        encoders = [models[name] for name in self._encoders if name in models]
        if encoders and all(model.reachable for model in encoders):
            return EncoderHealth(status="healthy")
        response.status_code = 503
        return EncoderHealth(status="unhealthy")

    def _listed(self, given: str | list[str]) -> list[str]:
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

    def _check_text(self, text: str, index: int | None) -> None:
        checked_text(
            text,
            what="the text" if index is None else f"the text (item {index})",
            limit=self._config.max_text_chars,
            long_code="text_too_long",
            empty_code="empty_text",
        )

    async def _fetched(self, url: str, index: int | None) -> bytes:
        try:
            if len(url) > MAX_IMAGE_URL_CHARS:
                raise BadRequestError(
                    f"the URL has {len(url)} characters; the limit is {MAX_IMAGE_URL_CHARS}",
                    code="invalid_url",
                )
            fetched = await self._fetcher.fetch(url)
            self._check_image(fetched.data)
        except ServiceError as error:
            raise _for_item(error, index) from None
        return fetched.data

    async def _decoded_base64(self, text: str, index: int | None) -> bytes:
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
            self._check_image(data)
        except ServiceError as error:
            raise _for_item(error, index) from None
        return data

    def _check_image(self, data: bytes) -> None:
        inspect_image(data, self._config.allowed_formats, self._config.max_image_pixels)

    async def _embed(self, name: str, item: bytes | str) -> tuple[float, ...]:
        handle = self._encoders.get(name)
        if handle is None:
            raise BadRequestError(
                f"{name} is not served by this profile ({name}: null)", code="model_not_served"
            )
        key = None
        if self._cache is not None:
            params = self._result_params(name)
            key = (
                self._cache.text_key(item, name, params)
                if isinstance(item, str)
                else self._cache.image_key(item, name, params)
            )
            cached = await self._cache.get(key)
            if cached is not None:
                return tuple(cached["embedding"])
        result = await self._call_models(name, handle.encode.remote(EncodeRequest(item=item)))
        if result.error is not None:
            raise ServiceError.from_item_error(result.error)
        if key is not None:
            await self._cache.put(key, {"embedding": list(result.embedding)})
        return result.embedding

    @staticmethod
    def _response(
        name: str, given: Any, vectors: list[tuple[float, ...]], normalize: bool
    ) -> EmbeddingResponse:
        rows = [_unit(vector) if normalize else list(vector) for vector in vectors]
        single = not isinstance(given, list)
        return EmbeddingResponse(
            embedding=rows[0] if single else None,
            embeddings=None if single else rows,
            dimension=len(rows[0]),
            normalized=normalize,
            model=name,
        )


def _unit(vector: tuple[float, ...]) -> list[float]:
    norm = math.sqrt(sum(value * value for value in vector))
    return [value / norm for value in vector] if norm > 0 else list(vector)


def _for_item(error: ServiceError, index: int | None) -> ServiceError:
    """The error, its message naming the list item it is about."""
    if index is not None:
        error.message = f"item {index}: {error.message}"
    return error
