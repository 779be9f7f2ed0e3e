"""The similar-image pipeline graph: an image is captioned by BLIP and the caption becomes
the prompt of an image generator, by chaining deployment handles inside one deployment, so the
caption never travels back through the ingress.

:class:`SimilarImagePipeline` is bound into the full application (``graphs/app.py``, route
``POST /api/similar-image`` of the ingress) and is also an application of its own:
``serve run graphs.similar_image:build_similar_image_app`` serves the same routes
(``POST /api/similar-image`` and its stream) with just the captioner, the generator, this
pipeline and the ingress, validated by :class:`SimilarImageAppConfig`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from deployments.ingress.gateway import PIPELINE
from deployments.ingress.settings import IngressSettings
from graphs.ingress import access_rules, bind_ingress
from graphs.registry import REGISTRY
from vlgraph.access_config import AccessConfig
from vlgraph.config import (
    BlipCaptionConfig,
    DiffusionConfig,
    IngressConfig,
    ModelFamilyConfig,
    PipelineConfig,
    StoreConfig,
    StrictModel,
    default_sdxl,
    resolve_checkpoint_cache_dir,
)
from vlgraph.errors import ItemError, ServiceUnavailableError
from vlgraph.messages import (
    CaptionRequest,
    CaptionResult,
    GenerationEvent,
    GenerationRequest,
    GenerationResult,
    SimilarImageRequest,
)
from vlgraph.model_calls import bounded_stream, call_model
from vlgraph.model_source import check_model_available
from vlgraph.served_models import ModelCatalog


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
        max_prompt_chars: int = 500,
        max_image_bytes: int = 16 * 1024 * 1024,
        caption_timeout_s: float | None = None,
        generation_timeout_s: float | None = None,
    ):
        self._captioner = captioner
        self._generator = generator
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
    """The pipeline as an application of its own: BLIP (the similar-image service names the
    large one) and SDXL, each its own deployment."""

    checkpoint_cache_dir: str | None = None
    captioner: BlipCaptionConfig = Field(
        default_factory=lambda: BlipCaptionConfig(source="Salesforce/blip-image-captioning-large")
    )
    generator: DiffusionConfig = Field(default_factory=default_sdxl)
    ingress: IngressConfig = Field(default_factory=IngressConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    access: AccessConfig = Field(
        default_factory=AccessConfig,
        description="API keys and rate limits of its routes (docs/access.md).",
    )


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
        ingress.max_prompt_chars,
        ingress.max_image_bytes,
        captioner_config.deployment.request_timeout_s,
        generator_config.deployment.request_timeout_s,
    )


def build_similar_image_app(args: SimilarImageAppConfig) -> Application:
    """``serve run graphs.similar_image:build_similar_image_app``: caption -> generate, behind
    the ingress's similar-image routes."""
    config = (
        args
        if isinstance(args, SimilarImageAppConfig)
        else SimilarImageAppConfig.model_validate(args)
    )
    rules = access_rules(config.access)
    cache_dir = resolve_checkpoint_cache_dir(config.checkpoint_cache_dir)
    generator_name = config.generator.family
    entries = {entry.name: entry for entry in REGISTRY}
    models = {"blip": config.captioner, generator_name: config.generator}
    for name, model in models.items():
        check_model_available(name, model.source, cache_dir, model.revision)
    handles = {name: entries[name].bind(model, str(cache_dir)) for name, model in models.items()}
    handles[PIPELINE] = bind_similar_image(
        handles["blip"],
        handles[generator_name],
        config.captioner,
        config.generator,
        config.ingress,
        config.pipeline,
    )
    settings = IngressSettings(
        profile="similar_image",
        config=config.ingress.model_copy(
            update={"image_root": config.ingress.resolved_image_root()}
        ),
        store=config.store.model_copy(update={"data_dir": config.store.resolved_data_dir()}),
        catalog=ModelCatalog(
            known={entry.name: entry.capabilities for entry in REGISTRY},
            served=tuple(entries[name].served_as(model) for name, model in models.items()),
        ),
        generators={generator_name: config.generator},
        timeouts={
            "blip": config.captioner.deployment.request_timeout_s,
            generator_name: config.generator.deployment.request_timeout_s,
            PIPELINE: config.pipeline.deployment.request_timeout_s,
        },
    )
    return bind_ingress(handles, settings, config.ingress, rules)
