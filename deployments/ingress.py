"""The HTTP ingress: FastAPI on Ray Serve, holding handles to the model deployments.

It validates input (paths, sizes, formats) before anything reaches a model, fans requests out
to the model deployments through their handles, and maps every error in one place
(:mod:`deployments.http_errors`). Routes of document 000 (BLIP captioning by image path) are
served exactly as that document writes them.
"""

import asyncio
import time
from pathlib import Path

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.http_errors import (
    error_responses,
    install_error_handlers,
    transient_service_error,
)
from vlgraph import __version__
from vlgraph.config import IngressConfig
from vlgraph.errors import (
    ItemError,
    PayloadTooLargeError,
    ServiceError,
    ServiceUnavailableError,
)
from vlgraph.image_paths import read_image_file, resolve_image_path
from vlgraph.images import inspect_image
from vlgraph.messages import CaptionRequest, CaptionResult

api = FastAPI(
    title="vlgraph",
    version=__version__,
    description="Vision-language models served on Ray Serve: BLIP captioning by image path "
    "(document 000). Errors share one body shape: "
    '`{"error": {"code", "message", "request_id"}, "detail"}`.',
)
install_error_handlers(api)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CaptionPathRequest(_Body):
    """Caption one image file, given by its path inside the image root."""

    image_path: str = Field(
        min_length=1,
        max_length=4096,
        examples=["/app/images/example.jpg"],
        description="Path relative to the image root, or absolute inside it.",
    )


class BatchCaptionPathRequest(_Body):
    """Caption several image files, given by their paths inside the image root."""

    image_paths: list[str] = Field(
        min_length=1,
        examples=[["/app/images/example1.jpg", "/app/images/example2.jpg"]],
        description="Paths relative to the image root, or absolute inside it.",
    )


class HealthResponse(BaseModel):
    """The service is up; which models it serves."""

    status: str = Field(examples=["healthy"])
    service: str = "vlgraph"
    version: str = __version__
    profile: str
    models: list[str]


class CaptionResponse(BaseModel):
    """A caption of one image, as document 000 writes it."""

    image_path: str
    caption: str
    processing_time: float = Field(description="Seconds spent on this image at the server.")


class BatchCaptionItem(BaseModel):
    """One entry of a batch: a caption, or an error for this image alone."""

    image_path: str
    caption: str | None = None
    processing_time: float | None = None
    error: ItemError | None = Field(None, description="Why this image got no caption.")


class BatchCaptionResponse(BaseModel):
    """Results in request order, and the wall time of the whole request."""

    results: list[BatchCaptionItem]
    total_processing_time: float


@serve.ingress(api)
class Ingress:
    """Routes requests to the model deployments; owns validation and error mapping."""

    def __init__(
        self, captioners: dict[str, DeploymentHandle], config: IngressConfig, profile: str
    ):
        self._captioners = captioners
        self._config = config
        self._image_root = config.resolved_image_root()
        self._profile = profile

    @api.get("/", response_model=HealthResponse, summary="Health check (document 000)")
    async def health(self) -> HealthResponse:
        """The service is running."""
        return HealthResponse(status="healthy", profile=self._profile, models=self._model_names())

    @api.post(
        "/caption",
        response_model=CaptionResponse,
        summary="Caption one image by path (document 000)",
        responses=error_responses(400, 403, 404, 413, 415, 422, 503),
    )
    async def caption(self, body: CaptionPathRequest) -> CaptionResponse:
        """Caption the image at ``image_path``."""
        started = time.perf_counter()
        result = await self._caption_path(body.image_path)
        if result.error is not None:
            raise ServiceError.from_item_error(result.error)
        return CaptionResponse(
            image_path=body.image_path,
            caption=result.caption or "",
            processing_time=round(time.perf_counter() - started, 4),
        )

    @api.post(
        "/batch-caption",
        response_model=BatchCaptionResponse,
        summary="Caption several images by path (document 000)",
        responses=error_responses(413, 422, 503),
    )
    async def batch_caption(self, body: BatchCaptionPathRequest) -> BatchCaptionResponse:
        """Caption every image; a bad path gives that entry an ``error``, the rest still run."""
        return await self._caption_paths(body.image_paths)

    @api.post(
        "/async-batch-caption",
        response_model=BatchCaptionResponse,
        summary="Caption several images by path, concurrently (document 000)",
        responses=error_responses(413, 422, 503),
    )
    async def async_batch_caption(self, body: BatchCaptionPathRequest) -> BatchCaptionResponse:
        """Same contract as ``/batch-caption`` (both fan out; Ray batches on the model side)."""
        return await self._caption_paths(body.image_paths)

    def _model_names(self) -> list[str]:
        return sorted(self._captioners)

    async def _caption_paths(self, paths: list[str]) -> BatchCaptionResponse:
        limit = self._config.max_batch_images
        if len(paths) > limit:
            raise PayloadTooLargeError(
                f"{len(paths)} image paths in one request; the limit is {limit}",
                code="too_many_images",
            )
        started = time.perf_counter()
        items = await asyncio.gather(*(self._timed_item(path) for path in paths))
        return BatchCaptionResponse(
            results=list(items), total_processing_time=round(time.perf_counter() - started, 4)
        )

    async def _timed_item(self, path: str) -> BatchCaptionItem:
        started = time.perf_counter()
        try:
            result = await self._caption_path(path)
        except ServiceUnavailableError as error:
            # Overload or a dead replica costs this image only; finished captions are kept.
            result = CaptionResult(error=error.as_item_error())
        if result.error is not None:
            return BatchCaptionItem(image_path=path, error=result.error)
        return BatchCaptionItem(
            image_path=path,
            caption=result.caption,
            processing_time=round(time.perf_counter() - started, 4),
        )

    async def _caption_path(self, path: str) -> CaptionResult:
        """Read and check one image file, then caption it; client errors become results."""
        try:
            image = await asyncio.to_thread(self._load_image, path)
        except ServiceError as error:
            return CaptionResult(error=error.as_item_error())
        try:
            return await self._captioners["blip"].caption.remote(CaptionRequest(image=image))
        except Exception as error:
            # Serve answers its own exceptions before any middleware: type them here.
            transient = transient_service_error(error)
            if transient is None:
                raise
            raise transient from None

    def _load_image(self, raw_path: str) -> bytes:
        path: Path = resolve_image_path(raw_path, self._image_root)
        data = read_image_file(path, self._config.max_image_bytes)
        inspect_image(data, self._config.allowed_formats, self._config.max_image_pixels)
        return data


IngressDeployment = serve.deployment(Ingress, name="ingress")
