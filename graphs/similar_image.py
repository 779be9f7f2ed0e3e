"""Document 004's pipeline graph: an image is captioned by BLIP and the caption becomes the
prompt of an image generator, by chaining deployment handles inside one deployment, so the
caption never travels back through the ingress.

:class:`SimilarImagePipeline` is bound into the full application (``graphs/app.py``, route
``POST /api/similar-image`` of the ingress) and is also an application of its own:
``serve run graphs.similar_image:build_similar_image_app`` serves ``POST /`` (multipart
``image``) with just the captioner, the generator and this pipeline, validated by
:class:`SimilarImageAppConfig`.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import Field
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse

from deployments.api import bounded_stream, call_model, read_image_form, validated
from deployments.blip_caption import BlipCaptionDeployment
from deployments.diffusion import DiffusionDeployment
from vlgraph.config import (
    BlipCaptionConfig,
    DiffusionConfig,
    IngressConfig,
    ModelFamilyConfig,
    PipelineConfig,
    StrictModel,
    default_sdxl,
    resolve_checkpoint_cache_dir,
)
from vlgraph.errors import ItemError, ServiceError, ServiceUnavailableError
from vlgraph.generation_params import GenerationSettings, resolve_generation
from vlgraph.messages import (
    CaptionRequest,
    CaptionResult,
    GenerationEvent,
    GenerationRequest,
    GenerationResult,
)
from vlgraph.model_source import check_model_available


@dataclass(frozen=True)
class SimilarImageRequest:
    """An image to caption and the generation settings for its caption (prompt left empty)."""

    image: bytes
    generation: GenerationRequest


@dataclass(frozen=True)
class SimilarImageResult:
    """The caption and the image generated from it, or the error that stopped the chain."""

    caption: str | None = None
    generation: GenerationResult | None = None
    error: ItemError | None = None


@dataclass(frozen=True)
class PipelineEvent:
    """One event of a streamed pipeline: the ``caption``, each denoising ``step``, then the
    ``image`` (or an ``error``)."""

    kind: Literal["caption", "step", "image", "error"]
    caption: str | None = None
    step: int | None = None
    total_steps: int | None = None
    result: SimilarImageResult | None = None


class SimilarImagePipeline:
    """Caption -> generate, by deployment handles."""

    def __init__(
        self,
        captioner: DeploymentHandle,
        generator: DeploymentHandle,
        generator_config: DiffusionConfig | None = None,
        max_prompt_chars: int = 500,
        max_image_bytes: int = 16 * 1024 * 1024,
        caption_timeout_s: float | None = None,
        generation_timeout_s: float | None = None,
    ):
        self._captioner = captioner
        self._generator = generator
        self._generator_config = generator_config
        self._max_prompt_chars = max_prompt_chars
        self._max_image_bytes = max_image_bytes
        self._caption_timeout_s = caption_timeout_s
        self._generation_timeout_s = generation_timeout_s

    async def run(self, request: SimilarImageRequest) -> SimilarImageResult:
        """Caption the image, then generate from the caption."""
        caption = await self._caption(request.image)
        if caption.error is not None:
            return SimilarImageResult(error=caption.error)
        generation = await _answered(
            self._generator.generate.remote(self._with_prompt(request, caption.caption)),
            GenerationResult,
            self._generation_timeout_s,
        )
        return SimilarImageResult(
            caption=caption.caption, generation=generation, error=generation.error
        )

    async def run_stream(self, request: SimilarImageRequest) -> AsyncIterator[PipelineEvent]:
        """The caption as soon as it is known, each denoising step, then the image."""
        caption = await self._caption(request.image)
        if caption.error is not None:
            yield PipelineEvent(kind="error", result=SimilarImageResult(error=caption.error))
            return
        yield PipelineEvent(kind="caption", caption=caption.caption)
        stream = self._generator.options(stream=True).generate_stream.remote(
            self._with_prompt(request, caption.caption)
        )
        try:
            async for event in bounded_stream(stream, self._generation_timeout_s):
                yield _pipeline_event(event, caption.caption)
        except ServiceUnavailableError as error:
            failed = SimilarImageResult(caption=caption.caption, error=error.as_item_error())
            yield PipelineEvent(kind="error", result=failed)

    async def __call__(self, http_request: Request) -> JSONResponse:
        """The standalone application's route: ``POST /`` with multipart ``image`` and
        optional generation fields; ``{"caption", "image", "seed"}``."""
        try:
            request = await self._request_from_form(http_request)
            result = await self.run(request)
            if result.error is not None:
                raise ServiceError.from_item_error(result.error)
        except ServiceError as error:
            return JSONResponse(
                {"error": {"code": error.code, "message": error.message}}, status_code=error.status
            )
        except RequestValidationError as error:
            return JSONResponse(
                {"error": {"code": "invalid_request", "message": str(error.errors())}},
                status_code=422,
            )
        image = base64.b64encode(result.generation.image_png).decode("ascii")
        return JSONResponse(
            {"caption": result.caption, "image": image, "seed": result.generation.seed}
        )

    async def _request_from_form(self, http_request: Request) -> SimilarImageRequest:
        if self._generator_config is None:
            raise ServiceError("this pipeline was bound without its generator's settings")
        data, fields = await read_image_form(
            http_request, self._max_image_bytes, ("JPEG", "PNG", "WEBP"), 40_000_000
        )
        settings = validated(GenerationSettings, fields)
        generation = resolve_generation(
            "caption", settings, self._generator_config, self._max_prompt_chars
        )
        return SimilarImageRequest(image=data, generation=generation)

    async def _caption(self, image: bytes) -> CaptionResult:
        return await _answered(
            self._captioner.caption.remote(CaptionRequest(image=image)),
            CaptionResult,
            self._caption_timeout_s,
        )

    def _with_prompt(self, request: SimilarImageRequest, caption: str) -> GenerationRequest:
        prompt = caption.strip()[: self._max_prompt_chars] or "an image"
        return dataclasses.replace(request.generation, prompt=prompt)


async def _answered(call: Any, result_type: type, timeout_s: float | None) -> Any:
    """The handle call's result within ``timeout_s``; a timeout and Serve's overload and
    dead-replica errors become a ``result_type`` carrying the 503 error instead of an
    exception."""
    try:
        return await call_model(call, timeout_s)
    except ServiceUnavailableError as error:
        return result_type(error=error.as_item_error())


def _pipeline_event(event: GenerationEvent, caption: str) -> PipelineEvent:
    if event.kind == "step":
        return PipelineEvent(kind="step", step=event.step, total_steps=event.total_steps)
    generation = event.result
    error = generation.error if generation is not None else None
    return PipelineEvent(
        kind="image" if error is None else "error",
        result=SimilarImageResult(caption=caption, generation=generation, error=error),
    )


SimilarImageDeployment = serve.deployment(SimilarImagePipeline, name="similar_image")


class SimilarImageAppConfig(StrictModel):
    """The pipeline as an application of its own: BLIP (document 004 names the large one)
    and SDXL, each its own deployment."""

    checkpoint_cache_dir: str | None = None
    captioner: BlipCaptionConfig = Field(
        default_factory=lambda: BlipCaptionConfig(source="Salesforce/blip-image-captioning-large")
    )
    generator: DiffusionConfig = Field(default_factory=default_sdxl)
    ingress: IngressConfig = Field(default_factory=IngressConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)


def bind_similar_image(
    captioner: Any,
    generator: Any,
    captioner_config: ModelFamilyConfig,
    generator_config: DiffusionConfig,
    ingress: IngressConfig,
    pipeline: PipelineConfig,
) -> Application:
    """The pipeline deployment (its Ray options from ``pipeline``) bound to a captioner and a
    generator (bound deployments), each call bounded by its callee's request timeout."""
    return SimilarImageDeployment.options(**pipeline.deployment.serve_options()).bind(
        captioner,
        generator,
        generator_config,
        ingress.max_prompt_chars,
        ingress.max_image_bytes,
        captioner_config.deployment.request_timeout_s,
        generator_config.deployment.request_timeout_s,
    )


def build_similar_image_app(args: SimilarImageAppConfig) -> Application:
    """``serve run graphs.similar_image:build_similar_image_app``: caption -> generate."""
    config = (
        args
        if isinstance(args, SimilarImageAppConfig)
        else SimilarImageAppConfig.model_validate(args)
    )
    cache_dir = resolve_checkpoint_cache_dir(config.checkpoint_cache_dir)
    for name, model in (("blip", config.captioner), ("sdxl", config.generator)):
        check_model_available(name, model.source, cache_dir, model.revision)
    captioner = BlipCaptionDeployment.options(**config.captioner.serve_options()).bind(
        config.captioner, str(cache_dir), "blip"
    )
    generator = DiffusionDeployment.options(
        name=f"{config.generator.family}_generator", **config.generator.serve_options()
    ).bind(config.generator, str(cache_dir), config.generator.family)
    return bind_similar_image(
        captioner, generator, config.captioner, config.generator, config.ingress, config.pipeline
    )
