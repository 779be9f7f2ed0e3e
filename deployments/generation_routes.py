"""Image generation routes (documents 002 and 004) and the similar-image pipeline: a mixin of
the ingress class, whose ``__init__`` sets ``_generators`` (``sd``, ``sdxl``),
``_generator_configs``, ``_pipeline``, ``_store``, ``_cache``, ``_config`` and
``_fingerprints``.

Every route has a streaming twin that answers server-sent events: one ``step`` event per
denoising step, then the ``image`` (and first the ``caption`` for the pipeline). A client
that disconnects cancels the request; Serve cancels the calls it made, down to the generator,
which stops between two steps.
"""

import base64
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from ray.serve.handle import DeploymentHandle

from deployments.api import (
    api,
    bounded_stream,
    form_fields,
    form_or_json_body,
    read_form_or_json,
    read_image_form,
    validated,
)
from deployments.http_errors import error_responses
from graphs.similar_image import SimilarImageRequest
from vlgraph.config import DiffusionConfig
from vlgraph.errors import BadRequestError, ServiceError
from vlgraph.generation_params import GenerationSettings, GeneratorName, resolve_generation
from vlgraph.messages import GenerationRequest, GenerationResult

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_SSE_RESPONSE = {200: {"content": {"text/event-stream": {}}, "description": "Server-sent events."}}


class GenerateBody(GenerationSettings):
    """Document 002's ``POST /generate`` fields (form or JSON)."""

    description: str = Field(description="Text description of the image.")
    model: GeneratorName = Field("sd", description="sd (Stable Diffusion) or sdxl.")


class GeneratedImage(BaseModel):
    """A generated PNG, the settings that made it, and where it is stored."""

    model_config = ConfigDict(protected_namespaces=())

    image: str = Field(description="Base64 of the PNG.")
    image_id: str | None = Field(None, description="Stored copy: GET /images/{image_id}.")
    image_path: str | None = Field(None, description="Where the stored copy is served.")
    prompt: str
    model: str
    seed: int = Field(description="Send it back with the same settings for the same image.")
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    nsfw: bool | None = Field(None, description="The safety checker's verdict; null: none ran.")
    cache: bool = False


class GenerateImageQuery(GenerationSettings):
    """Document 004's ``GET /generate-image`` query."""

    prompt: str = Field(description="What to draw.")
    model: GeneratorName = Field("sdxl", description="sdxl (document 004) or sd.")


class SimilarImageForm(GenerationSettings):
    """The generation fields sent beside the multipart ``image``."""

    model: GeneratorName = Field("sdxl", description="sdxl (document 004) or sd.")


class SimilarImageResponse(BaseModel):
    """Document 004's answer: the upload's caption and the image generated from it."""

    caption: str
    generated: GeneratedImage


def _similar_image_form() -> dict[str, Any]:
    """The multipart body of the similar-image routes: the image and the generation fields."""
    schema = form_fields(SimilarImageForm.model_json_schema())
    schema["properties"]["image"] = {
        "type": "string",
        "contentMediaType": "application/octet-stream",
        "description": "JPEG, PNG or WebP, judged by content.",
    }
    schema["required"] = [*schema.get("required", []), "image"]
    return schema


_GENERATE_SCHEMA = GenerateBody.model_json_schema()
_SIMILAR_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": _similar_image_form()}},
    }
}


class GenerationRoutes:
    """POST /generate, GET /generate-image, POST /api/similar-image, their streams, and GET
    /images/{image_id}."""

    _generators: dict[str, DeploymentHandle]
    _generator_configs: dict[str, DiffusionConfig]
    _pipeline: DeploymentHandle | None

    @api.post(
        "/generate",
        response_model=GeneratedImage,
        summary="Generate an image from a description and store it (document 002)",
        responses=error_responses(400, 415, 422, 503),
        openapi_extra=form_or_json_body(_GENERATE_SCHEMA),
    )
    async def generate(self, request: Request) -> GeneratedImage:
        """The generated image (base64 PNG), stored; ``image_path`` serves the stored copy."""
        body = await read_form_or_json(request, GenerateBody)
        generation = self._resolved(body.model, body.description, body)
        answer = await self._generated(body.model, generation, cacheable=body.seed is not None)
        stored = await self._store.add_image(
            base64.b64decode(answer.image),
            "image/png",
            generation.prompt,
            kind="generated",
            prompt=generation.prompt,
        )
        return answer.model_copy(
            update={"image_id": stored.image_id, "image_path": f"/images/{stored.image_id}"}
        )

    @api.get(
        "/generate-image",
        response_model=GeneratedImage,
        response_model_exclude_none=True,
        summary="Generate an image from a prompt (document 004)",
        responses=error_responses(400, 422, 503),
    )
    async def generate_image(
        self, params: Annotated[GenerateImageQuery, Query()]
    ) -> GeneratedImage:
        """A base64 PNG generated from ``prompt``."""
        generation = self._resolved(params.model, params.prompt, params)
        return await self._generated(params.model, generation, cacheable=params.seed is not None)

    @api.post(
        "/generate/stream",
        summary="POST /generate as server-sent events: each step, then the image",
        responses={**error_responses(400, 415, 422, 503), **_SSE_RESPONSE},
        openapi_extra=form_or_json_body(_GENERATE_SCHEMA),
    )
    async def generate_stream(self, request: Request) -> StreamingResponse:
        """``step`` events (``{"step", "total_steps"}``), then ``image`` (as POST /generate,
        not stored) or ``error``."""
        body = await read_form_or_json(request, GenerateBody)
        generation = self._resolved(body.model, body.description, body)
        handle = self._generator(body.model).options(stream=True)
        events = handle.generate_stream.remote(generation)
        return _sse(self._generation_events(body.model, generation, events))

    @api.get(
        "/generate-image/stream",
        summary="GET /generate-image as server-sent events",
        responses={**error_responses(400, 422, 503), **_SSE_RESPONSE},
    )
    async def generate_image_stream(
        self, params: Annotated[GenerateImageQuery, Query()]
    ) -> StreamingResponse:
        """``step`` events, then ``image`` or ``error``."""
        generation = self._resolved(params.model, params.prompt, params)
        handle = self._generator(params.model).options(stream=True)
        events = handle.generate_stream.remote(generation)
        return _sse(self._generation_events(params.model, generation, events))

    @api.post(
        "/api/similar-image",
        response_model=SimilarImageResponse,
        summary="Caption an image with BLIP and generate a similar one (document 004)",
        responses=error_responses(400, 413, 415, 422, 503),
        openapi_extra=_SIMILAR_IMAGE_BODY,
    )
    async def similar_image(self, request: Request) -> SimilarImageResponse:
        """The caption of ``image`` and the image generated from it, chained inside the
        pipeline deployment (the caption never comes back through here first)."""
        model, similar = await self._similar_request(request)
        result = await self._call_models(
            "similar_image", self._pipeline_handle().run.remote(similar)
        )
        if result.error is not None:
            raise ServiceError.from_item_error(result.error)
        generation = _with_prompt(similar.generation, result.caption)
        return SimilarImageResponse(
            caption=result.caption,
            generated=_generated_image(model, generation, result.generation),
        )

    @api.post(
        "/api/similar-image/stream",
        summary="POST /api/similar-image as server-sent events: caption, steps, image",
        responses={**error_responses(400, 413, 415, 422, 503), **_SSE_RESPONSE},
        openapi_extra=_SIMILAR_IMAGE_BODY,
    )
    async def similar_image_stream(self, request: Request) -> StreamingResponse:
        """``caption``, ``step`` events, then ``image`` (as /api/similar-image) or ``error``."""
        model, similar = await self._similar_request(request)
        handle = self._pipeline_handle().options(stream=True)
        return _sse(self._pipeline_events(model, similar, handle.run_stream.remote(similar)))

    @api.get(
        "/images/{image_id}",
        summary="A stored image (uploads of document 002 and generated images)",
        responses={200: {"content": {"image/*": {}}}, **error_responses(404, 503)},
    )
    async def stored_image(self, image_id: str) -> Response:
        """The stored bytes with their media type."""
        stored = await self._store.get_image(image_id)
        data = await self._store.read_image(stored.image_id)
        return Response(data, media_type=stored.media_type)

    def _generator(self, model: str) -> DeploymentHandle:
        handle = self._generators.get(model)
        if handle is None:
            raise BadRequestError(
                f"model {model} is not served by this profile ({model}: null); served "
                f"generators: {', '.join(sorted(self._generators)) or 'none'}",
                code="model_not_served",
            )
        return handle

    def _pipeline_handle(self) -> DeploymentHandle:
        if self._pipeline is None:
            raise BadRequestError(
                "the similar-image pipeline needs the blip captioner and a generator",
                code="model_not_served",
            )
        return self._pipeline

    def _resolved(self, model: str, prompt: str, settings: GenerationSettings):
        self._generator(model)
        return resolve_generation(
            prompt, settings, self._generator_configs[model], self._config.max_prompt_chars
        )

    async def _generated(
        self, model: str, generation: GenerationRequest, cacheable: bool
    ) -> GeneratedImage:
        """Generate, or answer from the cache: only requests that chose their seed are
        cached (a random seed asks for a new image)."""
        key = None
        if cacheable and self._cache is not None:
            params = self._result_params(model, request=generation.__dict__)
            key = self._cache.text_key(generation.prompt, model, params)
            cached = await self._cache.get(key)
            if cached is not None:
                return GeneratedImage.model_validate({**cached, "cache": True})
        result = await self._call_models(model, self._generator(model).generate.remote(generation))
        if result.error is not None:
            raise ServiceError.from_item_error(result.error)
        answer = _generated_image(model, generation, result)
        if key is not None:
            await self._cache.put(key, answer.model_dump(exclude={"cache"}))
        return answer

    async def _similar_request(self, request: Request) -> tuple[str, SimilarImageRequest]:
        """The multipart ``image`` (checked as uploads are) and the generation fields."""
        self._pipeline_handle()
        data, fields = await read_image_form(
            request,
            self._config.max_image_bytes,
            self._config.allowed_formats,
            self._config.max_image_pixels,
        )
        settings = validated(SimilarImageForm, fields)
        # The prompt is the caption, made in the pipeline; a stand-in passes the checks here.
        generation = self._resolved(settings.model, "caption", settings)
        return settings.model, SimilarImageRequest(image=data, generation=generation)

    async def _generation_events(
        self, model: str, generation: GenerationRequest, events: Any
    ) -> AsyncIterator[str]:
        try:
            async for event in bounded_stream(events, self._timeouts.get(model)):
                if event.kind == "step":
                    yield _event("step", {"step": event.step, "total_steps": event.total_steps})
                elif event.result is not None and event.result.error is None:
                    yield _event("image", _generated_image(model, generation, event.result))
                else:
                    yield _error_event(event.result.error if event.result else None)
        except ServiceError as error:
            yield _error_event(error.as_item_error())

    async def _pipeline_events(
        self, model: str, request: SimilarImageRequest, events: Any
    ) -> AsyncIterator[str]:
        try:
            async for event in bounded_stream(events, self._timeouts.get("similar_image")):
                if event.kind == "caption":
                    yield _event("caption", {"caption": event.caption})
                elif event.kind == "step":
                    yield _event("step", {"step": event.step, "total_steps": event.total_steps})
                elif event.kind == "image" and event.result is not None:
                    generation = _with_prompt(request.generation, event.result.caption)
                    response = SimilarImageResponse(
                        caption=event.result.caption,
                        generated=_generated_image(model, generation, event.result.generation),
                    )
                    yield _event("image", response)
                else:
                    yield _error_event(event.result.error if event.result else None)
        except ServiceError as error:
            yield _error_event(error.as_item_error())


def _with_prompt(generation: GenerationRequest, caption: str | None) -> GenerationRequest:
    return dataclasses.replace(generation, prompt=caption or generation.prompt)


def _generated_image(
    model: str, generation: GenerationRequest, result: GenerationResult
) -> GeneratedImage:
    return GeneratedImage(
        image=base64.b64encode(result.image_png).decode("ascii"),
        prompt=generation.prompt,
        model=model,
        seed=result.seed if result.seed is not None else generation.seed,
        width=generation.width,
        height=generation.height,
        num_inference_steps=generation.steps,
        guidance_scale=generation.guidance_scale,
        nsfw=result.nsfw,
    )


def _event(kind: Literal["caption", "step", "image", "error"], data: Any) -> str:
    payload = data.model_dump_json() if isinstance(data, BaseModel) else json.dumps(data)
    return f"event: {kind}\ndata: {payload}\n\n"


def _error_event(error: Any) -> str:
    body = error.model_dump() if error is not None else {"message": "generation failed"}
    return _event("error", {"error": body})


def _sse(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers=_SSE_HEADERS)
