"""Captioning: BLIP by image path (``POST /caption``, ``/batch-caption``,
``/async-batch-caption``) and uploads with a chosen model, tags and a yes/no flag
(``POST /api/caption-images``, ``/api/caption-collective-images``).

Every captioning route shares the gateway's cache entries: an image captioned by path and the
same bytes uploaded give one entry per model and prompts.
"""

import asyncio
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, File, Query, UploadFile
from pydantic import BaseModel, ConfigDict, Field
from ray.serve.handle import DeploymentHandle

from deployments.ingress.context import IngressContext
from deployments.ingress.errors import error_responses
from deployments.ingress.uploads import read_upload
from vlgraph.errors import ItemError, PayloadTooLargeError, ServiceError, ServiceUnavailableError
from vlgraph.image_paths import read_image_file, resolve_image_path
from vlgraph.images import inspect_image
from vlgraph.messages import (
    CaptionRequest,
    CaptionResult,
    CollectionCaptionRequest,
    FlagRequest,
    FlagResult,
)
from vlgraph.model_calls import resolved
from vlgraph.served_models import Capability
from vlgraph.tags import caption_tags
from vlgraph.text_inputs import checked_text

#: The captioner of the path routes and of uploads (BLIP, as the path service wrote it).
PATH_CAPTIONER = "blip"


class _Body(BaseModel):
    # Strict: a JSON body is typed; "0" is not false, "1" is not a number.
    model_config = ConfigDict(extra="forbid", strict=True)


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


class CaptionResponse(BaseModel):
    """A caption of one image by path."""

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


class CaptionImagesItem(BaseModel):
    """One uploaded image's caption, tags and flag, or its error."""

    filename: str
    caption: str | None = None
    tags: list[str] = Field(
        default_factory=list, description="Content words of the caption (see docs/api.md)."
    )
    flagged: bool = Field(
        False, description="The model's yes/no answer to flag_caption_prompt; false without it."
    )
    cache: bool = Field(False, description="Whether the cache answered.")
    error: ItemError | None = Field(None, description="Why this image got no caption.")


class CaptionImagesResponse(BaseModel):
    """Results in upload order."""

    results: list[CaptionImagesItem]


class CollectiveCaptionResponse(BaseModel):
    """One caption for a set of images."""

    collective_caption: str
    count: int = Field(description="How many images the caption describes.")
    tags: list[str]
    flagged: bool


_IMAGES_FILE = File(description="One or more JPEG, PNG or WebP images, judged by content.")
_IMAGE_SET_FILE = File(description="The JPEG, PNG or WebP images of the set.")
_CAPTION_PROMPT_QUERY = Query(
    None, description="Conditions the caption: BLIP's text prefix, the VLMs' instruction."
)
_FLAG_PROMPT_QUERY = Query(
    None, description="A yes/no question about the image; flagged is the model's answer."
)


class Captioning:
    """What the captioning routes share: reading uploads and paths, prompts, one cached
    caption-and-flag answer per image, and the tags."""

    def __init__(self, context: IngressContext):
        self._gateway = context.gateway
        self._config = context.config
        self._image_root = self._config.resolved_image_root()

    def check_flags(self, model: str, flag_prompt: str | None) -> None:
        """A flag question needs a model that answers yes/no: 400 before any upload is read
        when ``model`` does not."""
        if flag_prompt is not None:
            self._gateway.handle(model, Capability.FLAG)

    def prompts(self, *prompts: str | None) -> list[str | None]:
        """Blank prompts count as absent; overlong ones are refused before any model runs."""
        return [
            checked_text(
                prompt,
                what="the prompt",
                limit=self._config.max_prompt_chars,
                long_code="prompt_too_long",
            )
            for prompt in prompts
        ]

    async def read_uploads(self, files: list[UploadFile]) -> list[tuple[str, bytes | ItemError]]:
        """Each upload's name and bytes, checked (size, pixels, format by content), or the
        error that refuses it."""
        limit = self._config.max_upload_images
        if len(files) > limit:
            raise PayloadTooLargeError(
                f"{len(files)} images in one request; the limit is {limit}",
                code="too_many_images",
            )
        uploads: list[tuple[str, bytes | ItemError]] = []
        for index, upload in enumerate(files):
            name = upload.filename or f"image{index}"
            try:
                data = await read_upload(upload, self._config.max_image_bytes, name)
                inspect_image(data, self._config.allowed_formats, self._config.max_image_pixels)
            except ServiceError as error:
                uploads.append((name, error.as_item_error()))
                continue
            uploads.append((name, data))
        return uploads

    async def answer(
        self, model: str, data: bytes, caption_prompt: str | None, flag_prompt: str | None
    ) -> tuple[dict, bool] | ItemError:
        """One checked image's ``{"caption", "flagged"}`` and whether the cache gave it, or
        the model's error for it."""
        handle = self._gateway.handle(model, Capability.CAPTION)

        async def compute() -> dict | ItemError:
            caption_call = handle.caption.remote(CaptionRequest(image=data, prompt=caption_prompt))
            return await self._caption_and_flag(model, handle, caption_call, (data,), flag_prompt)

        return await self._gateway.cached(
            model, data, compute, caption_prompt=caption_prompt, flag_prompt=flag_prompt
        )

    async def collective_answer(
        self,
        model: str,
        handle: DeploymentHandle,
        images: tuple[bytes, ...],
        caption_prompt: str | None,
        flag_prompt: str | None,
    ) -> dict:
        """One caption and flag for ``images`` read together."""

        async def compute() -> dict | ItemError:
            caption_call = handle.caption_collection.remote(
                CollectionCaptionRequest(images=images, prompt=caption_prompt)
            )
            return await self._caption_and_flag(model, handle, caption_call, images, flag_prompt)

        outcome = await self._gateway.cached(
            model, images, compute, caption_prompt=caption_prompt, flag_prompt=flag_prompt
        )
        if isinstance(outcome, ItemError):
            raise ServiceError.from_item_error(outcome)
        return outcome[0]

    async def _caption_and_flag(
        self,
        model: str,
        handle: DeploymentHandle,
        caption_call: Awaitable[CaptionResult],
        images: tuple[bytes, ...],
        flag_prompt: str | None,
    ) -> dict | ItemError:
        """The caption call and the flag question's (false without one) together: the
        cacheable ``{"caption", "flagged"}``, or the first error."""
        flag_call = (
            resolved(FlagResult(flagged=False))
            if flag_prompt is None
            else handle.flag.remote(FlagRequest(images=images, question=flag_prompt))
        )
        result, flag = await self._gateway.call(model, caption_call, flag_call)
        error = result.error or flag.error
        if error is not None:
            return error
        return {"caption": result.caption or "", "flagged": bool(flag.flagged)}

    def tags(self, caption: str, caption_prompt: str | None) -> list[str]:
        """The caption's content words (the prompt's own words left out)."""
        return caption_tags(caption, self._config.max_tags, caption_prompt)

    async def upload_item(
        self,
        model: str,
        name: str,
        data: bytes | ItemError,
        caption_prompt: str | None,
        flag_prompt: str | None,
    ) -> CaptionImagesItem:
        """One upload's entry: its caption, tags and flag, or its error."""
        if isinstance(data, ItemError):
            return CaptionImagesItem(filename=name, error=data)
        try:
            outcome = await self.answer(model, data, caption_prompt, flag_prompt)
        except ServiceUnavailableError as error:
            return CaptionImagesItem(filename=name, error=error.as_item_error())
        if isinstance(outcome, ItemError):
            return CaptionImagesItem(filename=name, error=outcome)
        answer, cached = outcome
        return CaptionImagesItem(
            filename=name,
            caption=answer["caption"],
            tags=self.tags(answer["caption"], caption_prompt),
            flagged=answer["flagged"],
            cache=cached,
        )

    async def caption_paths(self, paths: list[str]) -> BatchCaptionResponse:
        """Caption every path concurrently; a bad path costs its own entry only."""
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
            result = await self.caption_path(path)
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

    async def caption_path(self, path: str) -> CaptionResult:
        """Read and check one image file, then caption it with BLIP (through the cache, which
        the upload routes share); client errors become results."""
        try:
            image = await asyncio.to_thread(self._load_image, path)
        except ServiceError as error:
            return CaptionResult(error=error.as_item_error())
        outcome = await self.answer(PATH_CAPTIONER, image, None, None)
        if isinstance(outcome, ItemError):
            return CaptionResult(error=outcome)
        return CaptionResult(caption=outcome[0]["caption"])

    def _load_image(self, raw_path: str) -> bytes:
        path: Path = resolve_image_path(raw_path, self._image_root)
        data = read_image_file(path, self._config.max_image_bytes)
        inspect_image(data, self._config.allowed_formats, self._config.max_image_pixels)
        return data


def router(context: IngressContext) -> APIRouter:
    """The captioning routes of one ingress replica."""
    routes = APIRouter()
    captioning = Captioning(context)
    gateway = context.gateway
    catalog = context.settings.catalog
    caption_models = catalog.known_names(Capability.CAPTION)
    CaptionModel = Literal[caption_models]
    served_collective = gateway.served(Capability.COLLECTIVE)
    model_query = Query(
        PATH_CAPTIONER, description=f"Which model captions: {', '.join(caption_models)}."
    )
    collective_query = Query(
        None,
        description="Which model captions the set: "
        f"{' or '.join(catalog.known_names(Capability.COLLECTIVE))} (unset: the first of them "
        "this profile serves).",
    )

    @routes.post(
        "/caption",
        response_model=CaptionResponse,
        summary="Caption one image by path",
        responses=error_responses(400, 403, 404, 413, 415, 422, 503),
    )
    async def caption(body: CaptionPathRequest) -> CaptionResponse:
        """Caption the image at ``image_path``."""
        started = time.perf_counter()
        result = await captioning.caption_path(body.image_path)
        if result.error is not None:
            raise ServiceError.from_item_error(result.error)
        return CaptionResponse(
            image_path=body.image_path,
            caption=result.caption or "",
            processing_time=round(time.perf_counter() - started, 4),
        )

    @routes.post(
        "/batch-caption",
        response_model=BatchCaptionResponse,
        summary="Caption several images by path",
        responses=error_responses(413, 422, 503),
    )
    async def batch_caption(body: BatchCaptionPathRequest) -> BatchCaptionResponse:
        """Caption every image; a bad path gives that entry an ``error``, the rest still run."""
        return await captioning.caption_paths(body.image_paths)

    @routes.post(
        "/async-batch-caption",
        response_model=BatchCaptionResponse,
        summary="Caption several images by path, concurrently",
        responses=error_responses(413, 422, 503),
    )
    async def async_batch_caption(body: BatchCaptionPathRequest) -> BatchCaptionResponse:
        """Same contract as ``/batch-caption`` (both fan out; Ray batches on the model side)."""
        return await captioning.caption_paths(body.image_paths)

    @routes.post(
        "/api/caption-images",
        response_model=CaptionImagesResponse,
        summary="Caption uploaded images with a chosen model",
        responses=error_responses(400, 413, 415, 422, 503),
        openapi_extra={"x-model-capability": Capability.CAPTION.value},
    )
    async def caption_images(
        images: list[UploadFile] = _IMAGES_FILE,
        model: CaptionModel = model_query,
        caption_prompt: str | None = _CAPTION_PROMPT_QUERY,
        flag_caption_prompt: str | None = _FLAG_PROMPT_QUERY,
    ) -> CaptionImagesResponse:
        """Caption each image; with several, a bad image gets its own ``error`` entry."""
        gateway.handle(model, Capability.CAPTION)  # refuses a model this profile does not serve
        caption_prompt, flag_prompt = captioning.prompts(caption_prompt, flag_caption_prompt)
        captioning.check_flags(model, flag_prompt)
        uploads = await captioning.read_uploads(images)
        items = await asyncio.gather(
            *(
                captioning.upload_item(model, name, data, caption_prompt, flag_prompt)
                for name, data in uploads
            )
        )
        if len(items) == 1 and items[0].error is not None:
            raise ServiceError.from_item_error(items[0].error)
        return CaptionImagesResponse(results=list(items))

    @routes.post(
        "/api/caption-collective-images",
        response_model=CollectiveCaptionResponse,
        summary="One caption for a set of uploaded images (models that read several at once)",
        responses=error_responses(400, 413, 415, 422, 503),
        openapi_extra={"x-model-capability": Capability.COLLECTIVE.value},
    )
    async def caption_collective_images(
        images: list[UploadFile] = _IMAGE_SET_FILE,
        model: CaptionModel | None = collective_query,
        caption_prompt: str | None = _CAPTION_PROMPT_QUERY,
        flag_caption_prompt: str | None = _FLAG_PROMPT_QUERY,
    ) -> CollectiveCaptionResponse:
        """Caption the images together; every image must be valid."""
        if model is None:
            able = served_collective or catalog.known_names(Capability.COLLECTIVE)
            model = able[0] if able else PATH_CAPTIONER
        handle = gateway.handle(model, Capability.COLLECTIVE)
        caption_prompt, flag_prompt = captioning.prompts(caption_prompt, flag_caption_prompt)
        captioning.check_flags(model, flag_prompt)
        uploads = await captioning.read_uploads(images)
        for name, data in uploads:
            if isinstance(data, ItemError):
                raise ServiceError.from_item_error(
                    data.model_copy(update={"message": f"{name}: {data.message}"})
                )
        image_set = tuple(data for _, data in uploads if isinstance(data, bytes))
        answer = await captioning.collective_answer(
            model, handle, image_set, caption_prompt, flag_prompt
        )
        return CollectiveCaptionResponse(
            collective_caption=answer["caption"],
            count=len(image_set),
            tags=captioning.tags(answer["caption"], caption_prompt),
            flagged=answer["flagged"],
        )

    return routes
