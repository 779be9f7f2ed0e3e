"""Image generation and the similar-image pipeline: ``POST /generate`` (stored),
``GET /generate-image``, ``POST /api/similar-image`` (caption -> generation), their
server-sent-event twins; stored generations are served by ``GET /images/{image_id}``
(routes/search.py).

Every route has a streaming twin that answers server-sent events: one ``step`` event per
denoising step, then the ``image`` (and first the ``caption`` for the pipeline). A client
that disconnects cancels the request; Serve cancels the calls it made, down to the generator,
which stops between two steps. A generated PNG stays bytes until the response is written.
"""

import base64
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    create_model,
)

from deployments.ingress.callers import record_images
from deployments.ingress.context import IngressContext
from deployments.ingress.errors import error_responses
from deployments.ingress.openapi import MODEL_CAPABILITY, MODEL_NAMES
from deployments.ingress.search import search_vector
from deployments.ingress.uploads import (
    form_or_json_body,
    image_form,
    read_form_or_json,
    read_image_form,
    validated,
)
from vlgraph.errors import ItemError, ServiceError
from vlgraph.generation_params import GenerationSettings, resolve_generation
from vlgraph.messages import GenerationRequest, GenerationResult, SimilarImageRequest
from vlgraph.served_models import Capability

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_SSE_RESPONSE = {200: {"content": {"text/event-stream": {}}, "description": "Server-sent events."}}

#: PNG bytes, written as standard base64 in JSON (and read back from it, e.g. from the cache).
PngBytes = Annotated[
    bytes,
    BeforeValidator(lambda value: base64.b64decode(value) if isinstance(value, str) else value),
    PlainSerializer(lambda data: base64.b64encode(data).decode("ascii"), return_type=str),
    WithJsonSchema(
        {"type": "string", "contentEncoding": "base64", "description": "Base64 of the PNG."}
    ),
]


class GeneratedImage(BaseModel):
    """A generated PNG, the settings that made it, and where it is stored."""

    model_config = ConfigDict(protected_namespaces=())

    image: PngBytes
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


class SimilarImageResponse(BaseModel):
    """The upload's caption and the image generated from it."""

    caption: str
    generated: GeneratedImage


@dataclasses.dataclass(frozen=True)
class GenerationBodies:
    """The request models of the generation routes, their ``model`` field taking the
    generators the registry knows."""

    generate: type[GenerationSettings]
    generate_image: type[GenerationSettings]
    similar_image: type[GenerationSettings]

    @classmethod
    def for_generators(cls, names: tuple[str, ...], chained: str | None) -> "GenerationBodies":
        """The bodies whose ``model`` is one of ``names``; the similar-image form's is
        ``chained``, the generator the pipeline draws with (any of ``names`` when this
        profile has no pipeline: the route refuses every request then)."""

        def model_field(default: str, choices: tuple[str, ...] = names) -> Any:
            listed = " or ".join(choices)
            return (Literal[choices], Field(default, description=f"The generator: {listed}."))

        return cls(
            generate=create_model(
                "GenerateBody",
                __base__=GenerationSettings,
                __doc__="``POST /generate``'s fields (form or JSON).",
                description=(str, Field(description="Text description of the image.")),
                model=model_field("sd"),
            ),
            generate_image=create_model(
                "GenerateImageQuery",
                __base__=GenerationSettings,
                __doc__="``GET /generate-image``'s query.",
                prompt=(str, Field(description="What to draw.")),
                model=model_field("sdxl"),
            ),
            similar_image=create_model(
                "SimilarImageForm",
                __base__=GenerationSettings,
                __doc__="The generation fields sent beside the multipart ``image``.",
                model=model_field(chained, (chained,)) if chained else model_field("sdxl"),
            ),
        )


class Generation:
    """What the generation routes share: resolving settings against a generator's bounds,
    cached generation, the pipeline's request, and the event streams."""

    def __init__(self, context: IngressContext, bodies: GenerationBodies):
        self._context = context
        self._gateway = context.gateway
        self._bodies = bodies

    def resolved(self, model: str, prompt: str, settings: GenerationSettings) -> GenerationRequest:
        """The complete request for ``model``; 4xx for a generator not served or a setting
        past its bounds."""
        self._gateway.handle(model, Capability.GENERATE)
        return resolve_generation(
            prompt,
            settings,
            self._context.settings.generators[model],
            self._context.config.max_prompt_chars,
        )

    async def generated(
        self, model: str, generation: GenerationRequest, cacheable: bool
    ) -> GeneratedImage:
        """Generate, or answer from the cache: only requests that chose their seed are
        cached (a random seed asks for a new image)."""
        handle = self._gateway.handle(model, Capability.GENERATE)

        async def compute() -> dict | ItemError:
            result = await self._gateway.call(model, handle.generate.remote(generation))
            if result.error is not None:
                return result.error
            return generated_image(model, generation, result).model_dump(
                mode="json", exclude={"cache"}
            )

        outcome = await self._gateway.cached(
            model,
            generation.prompt,
            compute,
            use_cache=cacheable,
            request=generation.__dict__,
        )
        if isinstance(outcome, ItemError):
            raise ServiceError.from_item_error(outcome)
        answer, cached = outcome
        return GeneratedImage.model_validate({**answer, "cache": cached})

    async def similar_request(self, request: Request) -> tuple[str, SimilarImageRequest]:
        """The multipart ``image`` (checked as uploads are) and the generation fields."""
        self._gateway.pipeline()
        config = self._context.config
        data, fields = await read_image_form(
            request, config.max_image_bytes, config.allowed_formats, config.max_image_pixels
        )
        settings = validated(self._bodies.similar_image, fields)
        # The prompt is the caption, made in the pipeline; a stand-in passes the checks here.
        generation = self.resolved(settings.model, "caption", settings)
        return settings.model, SimilarImageRequest(image=data, generation=generation)

    def generation_stream(self, model: str, generation: GenerationRequest) -> StreamingResponse:
        """``step`` events, then ``image`` or ``error``."""
        handle = self._gateway.handle(model, Capability.GENERATE).options(stream=True)
        events = self._gateway.stream(model, handle.generate_stream.remote(generation))
        return _sse(_generation_events(model, generation, events))

    def pipeline_stream(self, model: str, request: SimilarImageRequest) -> StreamingResponse:
        """``caption``, ``step`` events, then ``image`` or ``error``."""
        handle = self._gateway.pipeline().options(stream=True)
        events = self._gateway.stream("similar_image", handle.run_stream.remote(request))
        return _sse(_pipeline_events(model, request, events))


def router(context: IngressContext) -> APIRouter:
    """The generation routes of one ingress replica."""
    routes = APIRouter()
    chained = context.gateway.pipeline_generator()
    bodies = GenerationBodies.for_generators(
        context.settings.catalog.known_names(Capability.GENERATE), chained
    )
    generation = Generation(context, bodies)
    gateway = context.gateway
    store = context.store
    GenerateBody = bodies.generate
    GenerateImageQuery = bodies.generate_image
    generate_schema = GenerateBody.model_json_schema()
    similar_image_body = {
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": image_form(bodies.similar_image)}},
        }
    }
    chooses = {MODEL_CAPABILITY: Capability.GENERATE.value}
    # The pipeline draws with one generator: the only model its routes take.
    chooses_chained = {MODEL_NAMES: [chained] if chained else []}

    @routes.post(
        "/generate",
        response_model=GeneratedImage,
        summary="Generate an image from a description and store it",
        responses=error_responses(400, 415, 422, 503),
        openapi_extra={**form_or_json_body(generate_schema), **chooses},
    )
    async def generate(request: Request) -> GeneratedImage:
        """The generated image (base64 PNG), stored; ``image_path`` serves the stored copy."""
        body = await read_form_or_json(request, GenerateBody)
        settings = generation.resolved(body.model, body.description, body)
        answer = await generation.generated(body.model, settings, cacheable=body.seed is not None)
        stored = await store.add_image(
            answer.image,
            "image/png",
            settings.prompt,
            kind="generated",
            prompt=settings.prompt,
            model=body.model,
            vector=await search_vector(context.search, answer.image),
        )
        return answer.model_copy(
            update={"image_id": stored.image_id, "image_path": f"/images/{stored.image_id}"}
        )

    @routes.get(
        "/generate-image",
        response_model=GeneratedImage,
        response_model_exclude_none=True,
        summary="Generate an image from a prompt",
        responses=error_responses(400, 422, 503),
        openapi_extra=chooses,
    )
    async def generate_image(params: Annotated[GenerateImageQuery, Query()]) -> GeneratedImage:
        """A base64 PNG generated from ``prompt``."""
        settings = generation.resolved(params.model, params.prompt, params)
        return await generation.generated(params.model, settings, cacheable=params.seed is not None)

    @routes.post(
        "/generate/stream",
        summary="POST /generate as server-sent events: each step, then the image",
        responses={**error_responses(400, 415, 422, 503), **_SSE_RESPONSE},
        openapi_extra={**form_or_json_body(generate_schema), **chooses},
    )
    async def generate_stream(request: Request) -> StreamingResponse:
        """``step`` events (``{"step", "total_steps"}``), then ``image`` (as POST /generate,
        not stored) or ``error``."""
        body = await read_form_or_json(request, GenerateBody)
        settings = generation.resolved(body.model, body.description, body)
        return generation.generation_stream(body.model, settings)

    @routes.get(
        "/generate-image/stream",
        summary="GET /generate-image as server-sent events",
        responses={**error_responses(400, 422, 503), **_SSE_RESPONSE},
        openapi_extra=chooses,
    )
    async def generate_image_stream(
        params: Annotated[GenerateImageQuery, Query()],
    ) -> StreamingResponse:
        """``step`` events, then ``image`` or ``error``."""
        settings = generation.resolved(params.model, params.prompt, params)
        return generation.generation_stream(params.model, settings)

    @routes.post(
        "/api/similar-image",
        response_model=SimilarImageResponse,
        summary="Caption an image with BLIP and generate a similar one",
        responses=error_responses(400, 413, 415, 422, 503),
        openapi_extra={**similar_image_body, **chooses_chained},
    )
    async def similar_image(request: Request) -> SimilarImageResponse:
        """The caption of ``image`` and the image generated from it, chained inside the
        pipeline deployment (the caption never comes back through here first)."""
        model, similar = await generation.similar_request(request)
        result = await gateway.call("similar_image", gateway.pipeline().run.remote(similar))
        if result.error is not None:
            raise ServiceError.from_item_error(result.error)
        settings = _with_prompt(similar.generation, result.caption)
        return SimilarImageResponse(
            caption=result.caption,
            generated=generated_image(model, settings, result.generation),
        )

    @routes.post(
        "/api/similar-image/stream",
        summary="POST /api/similar-image as server-sent events: caption, steps, image",
        responses={**error_responses(400, 413, 415, 422, 503), **_SSE_RESPONSE},
        openapi_extra={**similar_image_body, **chooses_chained},
    )
    async def similar_image_stream(request: Request) -> StreamingResponse:
        """``caption``, ``step`` events, then ``image`` (as /api/similar-image) or ``error``."""
        model, similar = await generation.similar_request(request)
        return generation.pipeline_stream(model, similar)

    return routes


async def _generation_events(
    model: str, generation: GenerationRequest, events: AsyncIterator
) -> AsyncIterator[str]:
    try:
        async for event in events:
            if event.kind == "step":
                yield _event("step", {"step": event.step, "total_steps": event.total_steps})
            elif event.result is not None and event.result.error is None:
                record_images(model, event.result)
                yield _event("image", generated_image(model, generation, event.result))
            else:
                yield _error_event(event.result.error if event.result else None)
    except ServiceError as error:
        yield _error_event(error.as_item_error())


async def _pipeline_events(
    model: str, request: SimilarImageRequest, events: AsyncIterator
) -> AsyncIterator[str]:
    try:
        async for event in events:
            if event.kind == "caption":
                yield _event("caption", {"caption": event.caption})
            elif event.kind == "step":
                yield _event("step", {"step": event.step, "total_steps": event.total_steps})
            elif event.kind == "image" and event.result is not None:
                record_images(model, event.result)
                generation = _with_prompt(request.generation, event.result.caption)
                response = SimilarImageResponse(
                    caption=event.result.caption,
                    generated=generated_image(model, generation, event.result.generation),
                )
                yield _event("image", response)
            else:
                yield _error_event(event.result.error if event.result else None)
    except ServiceError as error:
        yield _error_event(error.as_item_error())


def _with_prompt(generation: GenerationRequest, caption: str | None) -> GenerationRequest:
    return dataclasses.replace(generation, prompt=caption or generation.prompt)


def generated_image(
    model: str, generation: GenerationRequest, result: GenerationResult
) -> GeneratedImage:
    """The answer for ``result``, made by ``model`` with ``generation``'s settings."""
    return GeneratedImage(
        image=result.image_png,
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
