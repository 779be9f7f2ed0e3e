"""``POST /v1/images/generations`` and ``POST /v1/images/variations``: OpenAI's image API on
the served Stable Diffusion generators.

Generations draw the prompt with the chosen generator, ``n`` images with the seeds ``seed``,
``seed + 1``, ... With ``stream: true`` (one image) they answer OpenAI's server-sent events:
``partial_images`` real intermediate images (the latents at evenly spaced steps, decoded by the
replica), then the completed image, which is the one the same request without ``stream``
answers. A client that disconnects stops the generation at its next step. Variations caption
the uploaded image and draw the caption, through the caption -> diffusion pipeline; the caption
comes back as each image's ``revised_prompt``.

Bodies follow ``openai.types.ImageGenerateParams`` and ``ImageCreateVariationParams``, with this
server's generation settings beside them (``seed``, ``negative_prompt``,
``num_inference_steps``, ``guidance_scale``). OpenAI's fields that would change an image in ways
these models cannot (a transparent background, JPEG, a style, quality levels) are accepted only
at their neutral values, and unknown fields not at all: a 400 naming the field
(:func:`~deployments.ingress.routes.openai.protocol.refuse_unsupported`). ``size`` is
``WIDTHxHEIGHT`` within the generator's bounds, or ``auto`` (its default size).
``response_format: url`` stores each PNG, as ``POST /generate`` does, and answers the absolute
URL of ``GET /images/{image_id}``.
"""

import asyncio
import base64
import dataclasses
import re
import time
from collections.abc import AsyncIterator, Iterable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from openai.types import (
    Image,
    ImageGenCompletedEvent,
    ImageGenPartialImageEvent,
    ImagesResponse,
)
from openai.types.image_gen_completed_event import Usage, UsageInputTokensDetails
from pydantic import ConfigDict, Field, WithJsonSchema, create_model

from deployments.ingress.callers import record_images
from deployments.ingress.context import IngressContext
from deployments.ingress.errors import error_responses
from deployments.ingress.gateway import PIPELINE
from deployments.ingress.openapi import MODEL_CAPABILITY, MODEL_NAMES
from deployments.ingress.routes.generation import GeneratedImage, Generation, GenerationBodies
from deployments.ingress.routes.openai.protocol import OpenAIBody, refuse_unsupported
from deployments.ingress.routes.openai.streams import (
    SSE_HEADERS,
    SSE_RESPONSE,
    error_event,
    sse_data,
)
from deployments.ingress.search import search_vector
from deployments.ingress.uploads import image_form, read_image_form, validated
from vlgraph.config import DiffusionConfig
from vlgraph.errors import BadRequestError, ItemError, ServiceError
from vlgraph.generation_params import (
    MAX_PARTIAL_IMAGES,
    MAX_SEED,
    MIN_SIZE,
    SIZE_MULTIPLE,
    BoundsError,
    GenerationSettings,
    WholeNumber,
    whole_number,
)
from vlgraph.messages import GenerationEvent, GenerationRequest, SimilarImageRequest
from vlgraph.served_models import Capability

#: Most images one request makes (OpenAI allows 10): each is a whole generation.
MAX_IMAGES = 4
#: OpenAI's ``size`` that means the generator's default.
AUTO_SIZE = "auto"

#: OpenAI's generation fields this server takes only at their neutral values, and why.
NEUTRAL_GENERATION_FIELDS: dict[str, tuple[tuple[Any, ...], str]] = {
    "quality": ((None, "auto", "standard"), "no quality levels: num_inference_steps sets them"),
    "background": ((None, "auto", "opaque"), "images are opaque: no transparent background"),
    "output_format": ((None, "png"), "images are PNGs"),
    "output_compression": ((None,), "images are PNGs, without compression settings"),
    "moderation": ((None, "auto"), "the safety checker is set by the server's configuration"),
    "style": ((None,), "no styles: describe the style in the prompt"),
    "complexity": ((None,), "no complexity setting: num_inference_steps sets the effort"),
    "frame_count": ((None,), "GIF output is not supported"),
    "frame_duration_ms": ((None,), "GIF output is not supported"),
    "svg": ((None,), "SVG output is not supported"),
    # Accepted and without effect on the images.
    "safety_identifier": (("*",), ""),
}

#: The generation settings whose bounds :func:`~vlgraph.generation_params.resolve_generation`
#: names (``param``) as this API's fields are named.
_SETTINGS = ("prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "seed")
_SIZE = re.compile(r"(\d+)x(\d+)")
#: This server counts no tokens; OpenAI's completed event requires the object.
_NO_USAGE = Usage(
    input_tokens=0,
    input_tokens_details=UsageInputTokensDetails(image_tokens=0, text_tokens=0),
    output_tokens=0,
    total_tokens=0,
)
#: ``n``: images per request.
ImageCount = whole_number(ge=1, le=MAX_IMAGES)
#: ``partial_images``: intermediate images per stream.
PartialImageCount = whole_number(ge=0, le=MAX_PARTIAL_IMAGES)


class ImageFields(OpenAIBody):
    """What both image operations take besides the prompt or the image."""

    model_config = ConfigDict(json_schema_extra=lambda schema: _closed(schema, {}))

    model: str | None = Field(None, description="The generator.")
    n: ImageCount = Field(1, description="Images to make; image i is drawn with seed + i.")
    size: str | None = Field(
        None,
        description="WIDTHxHEIGHT, each side a multiple of 8 within the generator's bounds, "
        "or auto (the generator's default size).",
    )
    response_format: Literal["b64_json", "url"] | None = Field(
        None,
        description="b64_json (the default): the PNG in base64; url: the PNG is stored and "
        "its absolute /images/{image_id} URL answered.",
    )
    user: str | None = Field(None, description="Accepted; not used.")
    negative_prompt: str | None = Field(None, description="What the images should not show.")
    num_inference_steps: WholeNumber | None = Field(None, description="Denoising steps.")
    guidance_scale: float | None = Field(None, description="Classifier-free guidance.")
    seed: WholeNumber | None = Field(
        None, description="Same seed, same settings, same prompt: same images. Unset: random."
    )

    def settings(self, width: int, height: int) -> GenerationSettings:
        """The generation settings of this body, at ``width`` x ``height``."""
        return GenerationSettings(
            width=width,
            height=height,
            negative_prompt=self.negative_prompt,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            seed=self.seed,
        )


class ImageGenerationFields(ImageFields):
    """``POST /v1/images/generations`` (``openai.types.ImageGenerateParams``)."""

    model_config = ConfigDict(
        json_schema_extra=lambda schema: _closed(schema, NEUTRAL_GENERATION_FIELDS)
    )

    prompt: str = Field(description="What to draw.")
    stream: bool | None = Field(
        None,
        description="Server-sent events: the partial images, then image_generation.completed "
        "(one image: n=1).",
    )
    partial_images: PartialImageCount | None = Field(
        None,
        description="Intermediate images a stream sends before the final one (fewer when "
        "there are too few steps).",
    )


def image_bodies(
    generators: Iterable[DiffusionConfig], chained: DiffusionConfig | None
) -> tuple[type[ImageGenerationFields], type[ImageFields]]:
    """The bodies of the generation and variation operations, whose ``size`` is described
    with the bounds of ``generators`` (the loosest; a generator's own may be tighter) and of
    the pipeline's generator ``chained``."""
    served = list(generators)
    generation = create_model(
        "ImageGenerationBody",
        __base__=ImageGenerationFields,
        __doc__=ImageGenerationFields.__doc__,
        model=_model_field("A served generator. Unset: the first served."),
        size=_size_field(served),
    )
    variation = create_model(
        "ImageVariationForm",
        __base__=ImageFields,
        __doc__="``POST /v1/images/variations``'s fields beside the multipart ``image``.",
        model=_model_field("The similar-image pipeline's generator (the default)."),
        size=_size_field([chained] if chained else []),
    )
    return generation, variation


def _model_field(description: str) -> Any:
    return (str | None, Field(None, description=description))


def _size_field(configs: list[DiffusionConfig]) -> Any:
    base = ImageFields.model_fields["size"]
    described = Annotated[str, WithJsonSchema({"type": "string", "pattern": size_pattern(configs)})]
    return (described | None, Field(None, description=base.description))


def size_pattern(configs: Iterable[DiffusionConfig]) -> str:
    """The JSON Schema pattern of the sizes some of ``configs`` can draw: ``auto``, or
    ``WIDTHxHEIGHT`` with sides multiples of 8 within the loosest bounds."""
    configs = list(configs)
    widest = max((config.max_width for config in configs), default=MIN_SIZE)
    tallest = max((config.max_height for config in configs), default=MIN_SIZE)

    def sides(largest: int) -> str:
        return "|".join(str(side) for side in range(MIN_SIZE, largest + 1, SIZE_MULTIPLE))

    return f"^({AUTO_SIZE}|({sides(widest)})x({sides(tallest)}))$"


def parse_size(size: str | None, config: DiffusionConfig, model: str) -> tuple[int, int]:
    """``(width, height)`` of an OpenAI ``size`` for ``model``: unset or ``auto`` is its
    default square; a 422 ``generation_limit`` naming ``size`` and the bounds otherwise."""
    if size is None or size == AUTO_SIZE:
        return config.default_size, config.default_size
    match = _SIZE.fullmatch(size)
    width, height = (int(side) for side in match.groups()) if match else (0, 0)
    fits = all(
        MIN_SIZE <= side <= largest and side % config.size_multiple == 0
        for side, largest in ((width, config.max_width), (height, config.max_height))
    )
    if not fits:
        raise BoundsError(
            f"size must be {AUTO_SIZE} or WIDTHxHEIGHT, sides multiples of "
            f"{config.size_multiple}, "
            f"width {MIN_SIZE} to {config.max_width} and height {MIN_SIZE} to "
            f"{config.max_height} for {model}; not {size!r}",
            param="size",
        )
    return width, height


def _closed(schema: dict[str, Any], neutral: dict[str, tuple[tuple[Any, ...], str]]) -> None:
    """Describe the OpenAI fields accepted at their neutral values, and no others: the body
    takes nothing else (a 400 names any other field)."""
    properties = schema.setdefault("properties", {})
    for name, (values, reason) in neutral.items():
        accepted = [value for value in values if value is not None]
        if "*" in values:
            properties[name] = {"description": "Accepted; not used."}
        elif accepted:
            properties[name] = {"anyOf": [{"enum": accepted}, {"type": "null"}]}
            properties[name]["description"] = f"Only {', '.join(map(str, accepted))}: {reason}."
        else:
            properties[name] = {"type": "null", "description": f"Only null: {reason}."}
    schema["additionalProperties"] = False
    if "stream" in properties:  # a stream makes one image
        schema["if"] = {"properties": {"stream": {"const": True}}, "required": ["stream"]}
        schema["then"] = {"properties": {"n": {"maximum": 1}}}


class Images:
    """Turns image bodies into generations and the generated PNGs into OpenAI's answers."""

    def __init__(self, context: IngressContext):
        self._context = context
        self._gateway = context.gateway
        self._store = context.store
        names = context.settings.catalog.known_names(Capability.GENERATE)
        self._generation = Generation(
            context, GenerationBodies.for_generators(names, context.gateway.pipeline_generator())
        )

    def generator(self, model: str | None) -> str:
        """``model``, or the first served generator; 4xx naming ``model`` when it is unknown,
        cannot generate or is not served."""
        if model is None:
            served = self._gateway.served(Capability.GENERATE)
            if not served:
                raise BadRequestError(
                    "this profile serves no image generator",
                    code="model_not_served",
                    param="model",
                )
            model = served[0]
        try:
            self._gateway.handle(model, Capability.GENERATE)
        except ServiceError as error:
            error.param = "model"
            raise
        return model

    def variation_generator(self, model: str | None) -> str:
        """The pipeline's generator (what ``model`` may name); 400 when this profile has no
        pipeline, 4xx naming ``model`` for another model."""
        self._gateway.pipeline()
        chained = self._gateway.pipeline_generator()
        assert chained is not None, "a pipeline chains into a served generator"
        if model is None or model == chained:
            return chained
        self.generator(model)  # 4xx for an unknown or unserved model first
        raise BadRequestError(
            f"variations are drawn by the similar-image pipeline's generator: send "
            f"model={chained} or leave it out, not {model}",
            code="image_variation_not_supported",
            param="model",
        )

    def resolved(self, model: str, prompt: str, body: ImageFields) -> GenerationRequest:
        """The first image's complete request; 4xx naming the field past its bound."""
        width, height = parse_size(body.size, self._context.settings.generators[model], model)
        try:
            return self._generation.resolved(model, prompt, body.settings(width, height))
        except BoundsError as error:
            # Height and width come from ``size``, checked (and named) before.
            error.param = error.param if error.param in _SETTINGS else None
            raise

    async def generated(
        self, model: str, first: GenerationRequest, body: ImageFields
    ) -> list[GeneratedImage]:
        """``body.n`` images, the i-th drawn with ``first``'s seed + i (cached as every
        generation with a chosen seed is)."""
        return await asyncio.gather(
            *(
                self._generation.generated(model, _nth(first, index), body.seed is not None)
                for index in range(body.n)
            )
        )

    async def variations(self, image: bytes, first: GenerationRequest, n: int) -> list[Any]:
        """``n`` runs of the pipeline on ``image``, the i-th drawn with ``first``'s seed + i:
        their captions and images (``SimilarImageResult``)."""
        pipeline = self._gateway.pipeline()
        results = await asyncio.gather(
            *(
                self._gateway.call(
                    PIPELINE,
                    pipeline.run.remote(SimilarImageRequest(image, _nth(first, index))),
                )
                for index in range(n)
            )
        )
        for result in results:
            if result.error is not None:
                raise ServiceError.from_item_error(result.error)
        return list(results)

    async def answer(
        self,
        request: Request,
        model: str,
        drawn: list[tuple[bytes, str]],
        body: ImageFields,
        size: str,
        revised: bool = False,
    ) -> ImagesResponse:
        """OpenAI's answer for the PNGs ``model`` drew (each with its prompt, the
        ``revised_prompt`` when ``revised``), as ``body.response_format`` asks."""
        as_url = body.response_format == "url"
        data = [
            await self._image(request, model, png, prompt, as_url, revised) for png, prompt in drawn
        ]
        return ImagesResponse(
            created=int(time.time()),
            data=data,
            size=size,
            output_format="png",
            background="opaque",
        )

    async def _image(
        self, request: Request, model: str, png: bytes, prompt: str, as_url: bool, revised: bool
    ) -> Image:
        revised_prompt = prompt if revised else None
        if not as_url:
            return Image(b64_json=_base64(png), revised_prompt=revised_prompt)
        stored = await self._store.add_image(
            png,
            "image/png",
            prompt,
            kind="generated",
            prompt=prompt,
            model=model,
            vector=await search_vector(self._context.search, png),
        )
        url = str(request.url_for("stored_image", image_id=stored.image_id))
        return Image(url=url, revised_prompt=revised_prompt)

    def stream(
        self, model: str, generation: GenerationRequest, body: ImageGenerationFields
    ) -> StreamingResponse:
        """OpenAI's image generation events for one image."""
        if body.n > 1:
            raise BadRequestError(
                f"a stream makes one image: send n=1 or leave stream out, not n={body.n}",
                code="unsupported_field",
                param="n",
            )
        handle = self._gateway.handle(model, Capability.GENERATE).options(stream=True)
        request = dataclasses.replace(generation, partial_images=body.partial_images or 0)
        events = self._gateway.stream(model, handle.generate_stream.remote(request))
        described = {
            "size": _size_text(generation),
            "quality": "auto",
            "background": body.model_extra.get("background") or "auto",
            "output_format": "png",
        }
        return StreamingResponse(
            _openai_events(model, events, described),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )


async def _openai_events(
    model: str, events: AsyncIterator, described: dict[str, str]
) -> AsyncIterator[str]:
    """``image_generation.partial_image`` events, then ``image_generation.completed``, or an
    error event the ``openai`` client raises as ``APIError``."""
    try:
        async for event in events:
            if event.kind == "step":
                continue
            if event.kind == "partial_image":
                yield _partial_image(event, described)
            elif event.kind == "image" and event.result.error is None:
                record_images(model, event.result)
                completed = ImageGenCompletedEvent(
                    type="image_generation.completed",
                    b64_json=_base64(event.result.image_png),
                    created_at=int(time.time()),
                    usage=_NO_USAGE,
                    **described,
                )
                yield sse_data(completed, event=completed.type)
            else:
                yield _error_event(event.result.error if event.result else None)
    except ServiceError as error:
        yield _error_event(error.as_item_error())


def _partial_image(event: GenerationEvent, described: dict[str, str]) -> str:
    partial = ImageGenPartialImageEvent(
        type="image_generation.partial_image",
        b64_json=_base64(event.image_png),
        partial_image_index=event.partial_image_index,
        created_at=int(time.time()),
        **described,
    )
    return sse_data(partial, event=partial.type)


def _error_event(error: ItemError | None) -> str:
    failed = error or ItemError(status=500, code="inference_failed", message="generation failed")
    return error_event(failed.status, failed.code, failed.message, event="error")


def _nth(first: GenerationRequest, index: int) -> GenerationRequest:
    return dataclasses.replace(first, seed=(first.seed + index) % (MAX_SEED + 1))


def _size_text(generation: GenerationRequest) -> str:
    return f"{generation.width}x{generation.height}"


def _base64(png: bytes | None) -> str:
    return base64.b64encode(png or b"").decode("ascii")


def router(context: IngressContext) -> APIRouter:
    """The image routes of ``/v1`` of one ingress replica."""
    routes = APIRouter()
    images = Images(context)
    generators = context.settings.generators
    chained = context.gateway.pipeline_generator()
    GenerationBody, VariationForm = image_bodies(
        (generators[name] for name in context.gateway.served(Capability.GENERATE)),
        generators.get(chained) if chained else None,
    )
    variation_body = {
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": image_form(VariationForm)}},
        },
        MODEL_NAMES: [chained] if chained else [],
    }

    @routes.post(
        "/v1/images/generations",
        response_model=ImagesResponse,
        response_model_exclude_none=True,
        summary="Generate images from a prompt (OpenAI's image generation, streamed or not)",
        responses={**error_responses(400, 415, 422, 503, openai=True), **SSE_RESPONSE},
        openapi_extra={MODEL_CAPABILITY: Capability.GENERATE.value},
    )
    async def create_images(body: GenerationBody, request: Request) -> Any:  # type: ignore[valid-type]
        """``n`` images of the prompt (``data`` in the order of their seeds), or with
        ``stream`` ``image_generation.partial_image`` events then
        ``image_generation.completed``."""
        refuse_unsupported(body, NEUTRAL_GENERATION_FIELDS)
        model = images.generator(body.model)
        first = images.resolved(model, body.prompt, body)
        if body.stream:
            return images.stream(model, first, body)
        generated = await images.generated(model, first, body)
        drawn = [(image.image, image.prompt) for image in generated]
        return await images.answer(request, model, drawn, body, _size_text(first))

    @routes.post(
        "/v1/images/variations",
        response_model=ImagesResponse,
        response_model_exclude_none=True,
        summary="Caption an image and draw the caption again (OpenAI's image variations)",
        responses=error_responses(400, 413, 415, 422, 503, openai=True),
        openapi_extra=variation_body,
    )
    async def create_variations(request: Request) -> ImagesResponse:
        """``n`` images of the uploaded image's caption (the caption -> diffusion pipeline),
        each with the caption as ``revised_prompt``."""
        context.gateway.pipeline()  # 400 before reading the upload when there is none
        config = context.config
        data, fields = await read_image_form(
            request, config.max_image_bytes, config.allowed_formats, config.max_image_pixels
        )
        body = validated(VariationForm, fields)  # form fields are text: "2" is the number 2
        refuse_unsupported(body, {})
        model = images.variation_generator(body.model)
        # The prompt is the caption, made in the pipeline; a stand-in passes the checks here.
        first = images.resolved(model, "caption", body)
        results = await images.variations(data, first, body.n)
        drawn = [(result.generation.image_png, result.caption) for result in results]
        return await images.answer(request, model, drawn, body, _size_text(first), revised=True)

    return routes
