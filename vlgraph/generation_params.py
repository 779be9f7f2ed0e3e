"""What a client may ask of an image generator, and the bounds that keep one request from
taking the machine (image generation and similar image generation).

:func:`resolve_generation` turns the optional fields of a request into a complete
:class:`~vlgraph.messages.GenerationRequest` for one model: defaults from the model's
:class:`~vlgraph.config.DiffusionConfig`, a random seed when none is given (reported back so
the image can be made again), and a 422 naming the limit for anything out of bounds.

The bounds are defined here once (the smallest side, :data:`MIN_SIZE`, and
:data:`SIZE_MULTIPLE` come from :mod:`vlgraph.limits`, which the config reads too, and are
re-exported here): the request model above, the OpenAPI document and the generator's own check
(:func:`generation_problems`, in ``deployments/diffusion.py``) all read them.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from vlgraph.config import DiffusionConfig
from vlgraph.errors import ServiceError
from vlgraph.limits import MIN_SIZE, SIZE_MULTIPLE  # noqa: F401 (re-exported)
from vlgraph.messages import GenerationRequest
from vlgraph.text_inputs import checked_text

#: Largest seed. ``torch.Generator.manual_seed`` takes up to 2**64 - 1 (and wraps negative
#: seeds), but a seed must also survive every client: a signed 64-bit integer is the widest
#: that JSON libraries of typed languages (int64) read back exactly, so the bound is 2**63 - 1
#: for the request and for the generator alike.
MAX_SEED = 2**63 - 1

#: Most intermediate images a streamed generation sends (OpenAI's ``partial_images`` bound);
#: each costs one VAE decode.
MAX_PARTIAL_IMAGES = 3


def _whole_number(value: object) -> object:
    # JSON Schema counts 64.0 as an integer; strict validation of a JSON body would not.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: An integer as JSON Schema defines one: 64 and 64.0, never "64" in a JSON body.
WholeNumber = Annotated[int, BeforeValidator(_whole_number)]


def whole_number(ge: int | None = None, le: int | None = None) -> Any:
    """:data:`WholeNumber` within ``ge`` and ``le``.

    The bounds go before the validator: given as ``Field(ge=...)`` on ``WholeNumber | None``,
    pydantic checks them but describes them as ``ge``/``le``, which JSON Schema ignores."""
    return Annotated[int, Field(ge=ge, le=le), BeforeValidator(_whole_number)]


class GenerationSettings(BaseModel):
    """Optional settings of one generation; unset ones take the model's defaults."""

    model_config = ConfigDict(extra="forbid")

    height: WholeNumber | None = Field(
        None, description="Pixels, a multiple of 8 (of 16 for SD 3 and PixArt: GET /api/models)."
    )
    width: WholeNumber | None = Field(None, description="Pixels, as height.")
    num_inference_steps: WholeNumber | None = Field(None, description="Denoising steps.")
    guidance_scale: float | None = Field(None, description="Classifier-free guidance.")
    negative_prompt: str | None = Field(None, description="What the image should not show.")
    seed: WholeNumber | None = Field(
        None, description="Same seed, same settings, same prompt: same image. Unset: random."
    )


class BoundsError(ServiceError):
    """422: a generation setting is outside what this server allows; the message names it."""

    status = 422
    code = "generation_limit"


def resolve_generation(
    prompt: str, settings: GenerationSettings, config: DiffusionConfig, max_prompt_chars: int
) -> GenerationRequest:
    """The complete request for ``config``'s model, or :class:`BoundsError` naming the limit."""
    text = checked_text(
        prompt,
        what="prompt",
        limit=max_prompt_chars,
        long_code=BoundsError.code,
        empty_code=BoundsError.code,
        error=BoundsError,
        param="prompt",
    )
    negative = checked_text(
        settings.negative_prompt,
        what="negative_prompt",
        limit=max_prompt_chars,
        long_code=BoundsError.code,
        error=BoundsError,
        param="negative_prompt",
    )
    height = _checked_size("height", settings.height, config, config.max_height)
    width = _checked_size("width", settings.width, config, config.max_width)
    steps = settings.num_inference_steps
    if steps is None:
        steps = config.default_steps
    elif not 1 <= steps <= config.max_steps:
        raise BoundsError(
            f"num_inference_steps must be between 1 and {config.max_steps}, not {steps}",
            param="num_inference_steps",
        )
    guidance = config.guidance_scale if settings.guidance_scale is None else settings.guidance_scale
    if not 0 <= guidance <= config.max_guidance_scale:
        raise BoundsError(
            f"guidance_scale must be between 0 and {config.max_guidance_scale}, not {guidance}",
            param="guidance_scale",
        )
    seed = settings.seed if settings.seed is not None else secrets.randbelow(MAX_SEED + 1)
    if not 0 <= seed <= MAX_SEED:
        raise BoundsError(f"seed must be between 0 and {MAX_SEED}, not {seed}", param="seed")
    return GenerationRequest(
        prompt=text,
        negative_prompt=negative,
        height=height,
        width=width,
        steps=steps,
        guidance_scale=float(guidance),
        seed=seed,
    )


def generation_problems(request: GenerationRequest, config: DiffusionConfig) -> list[str]:
    """What is out of bounds in a resolved request, one phrase each (empty: nothing). The
    generator checks again what :func:`resolve_generation` checked, with the same bounds."""
    problems = []
    if not 1 <= request.steps <= config.max_steps:
        problems.append(f"steps {request.steps} is outside 1 to {config.max_steps}")
    for side, value, most in (
        ("height", request.height, config.max_height),
        ("width", request.width, config.max_width),
    ):
        if not MIN_SIZE <= value <= most or value % config.size_multiple:
            problems.append(
                f"{side} {value} must be a multiple of {config.size_multiple} from {MIN_SIZE} "
                f"to {most}"
            )
    if not 0 <= request.guidance_scale <= config.max_guidance_scale:
        problems.append(
            f"guidance_scale {request.guidance_scale} is outside 0 to {config.max_guidance_scale}"
        )
    if not 0 <= request.seed <= MAX_SEED:
        problems.append(f"seed {request.seed} is outside 0 to {MAX_SEED}")
    if not 0 <= request.partial_images <= MAX_PARTIAL_IMAGES:
        problems.append(
            f"partial_images {request.partial_images} is outside 0 to {MAX_PARTIAL_IMAGES}"
        )
    return problems


def _checked_size(name: str, value: int | None, config: DiffusionConfig, largest: int) -> int:
    if value is None:
        return config.default_size
    if value % config.size_multiple or not MIN_SIZE <= value <= largest:
        raise BoundsError(
            f"{name} must be a multiple of {config.size_multiple} between {MIN_SIZE} and "
            f"{largest}, not {value}",
            param=name,
        )
    return value
