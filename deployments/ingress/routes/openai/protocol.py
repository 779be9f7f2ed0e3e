"""Request bodies of the ``/v1`` operations, after ``openai.types`` (the ``*CreateParams``).

Bodies are strict pydantic models. Fields OpenAI defines that would change a result this
server cannot produce (several choices, tools, log probabilities, audio, penalties, ...) are
accepted only at their neutral value; anything else, and any field OpenAI does not define, is
a 400 ``unsupported_field`` naming it (:func:`refuse_unsupported`), never silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from vlgraph.errors import BadRequestError
from vlgraph.generation_params import MAX_SEED, whole_number

#: A count: 1 or more (4.0 is 4, as JSON Schema has it).
AtLeastOne = whole_number(ge=1)
#: A seed: what the generators take.
Seed = whole_number(ge=0, le=MAX_SEED)

#: Fields OpenAI defines for chat completions and their neutral values: other values are
#: refused with the reason.
_NEUTRAL_CHAT_FIELDS: dict[str, tuple[tuple[Any, ...], str]] = {
    "tools": ((None, []), "tools (function calling) are not supported"),
    "tool_choice": ((None, "none"), "tools (function calling) are not supported"),
    "functions": ((None, []), "functions are not supported"),
    "function_call": ((None, "none"), "functions are not supported"),
    "parallel_tool_calls": ((None, True, False), ""),
    "logprobs": ((None, False), "log probabilities are not supported"),
    "top_logprobs": ((None, 0), "log probabilities are not supported"),
    "audio": ((None,), "audio output is not supported"),
    "modalities": ((None, ["text"]), "only text output is supported"),
    "frequency_penalty": ((None, 0, 0.0), "frequency_penalty is not supported (send 0)"),
    "presence_penalty": ((None, 0, 0.0), "presence_penalty is not supported (send 0)"),
    "logit_bias": ((None, {}), "logit_bias is not supported"),
    "response_format": ((None, {"type": "text"}), "only text responses are supported"),
    "prediction": ((None,), "predicted outputs are not supported"),
    "reasoning_effort": ((None,), "reasoning_effort is not supported"),
    "verbosity": ((None,), "verbosity is not supported"),
    "web_search_options": ((None,), "web search is not supported"),
    "moderation": ((None,), "moderation is not supported"),
    # Accepted and without effect on the reply.
    "metadata": (("*",), ""),
    "store": ((None, True, False), ""),
    "service_tier": (("*",), ""),
    "safety_identifier": (("*",), ""),
    "prompt_cache_key": (("*",), ""),
    "prompt_cache_options": (("*",), ""),
    "prompt_cache_retention": (("*",), ""),
}


def closed_schema(neutral: dict[str, tuple[tuple[Any, ...], str]]) -> Any:
    """A ``json_schema_extra`` that states what :func:`refuse_unsupported` enforces: the
    neutral fields with their accepted values, and no other field."""

    def close(schema: dict[str, Any]) -> None:
        properties = schema.setdefault("properties", {})
        for name, (allowed, reason) in neutral.items():
            if "*" in allowed:
                properties[name] = {"description": "Accepted; no effect on the answer."}
            else:
                properties[name] = {
                    "enum": list(allowed),
                    "description": f"Only these values: {reason}." if reason else "Accepted.",
                }
        schema["additionalProperties"] = False

    return close


class OpenAIBody(BaseModel):
    """A ``/v1`` body: strictly typed, unknown fields kept for :func:`refuse_unsupported`."""

    model_config = ConfigDict(strict=True, extra="allow", protected_namespaces=())


class ImageUrl(BaseModel):
    """Where an image is: ``data:image/...;base64,...`` or an http(s) URL."""

    model_config = ConfigDict(strict=True, extra="forbid")

    url: str = Field(description="A data: URI (base64) or an http(s) URL of a public host.")
    detail: Literal["auto", "low", "high"] | None = Field(
        None, description="Accepted for compatibility; the model's processor sets the detail."
    )


class TextPart(BaseModel):
    """A text part of a message."""

    model_config = ConfigDict(strict=True, extra="forbid")

    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    """An image part of a message (vLLM also accepts the URL as a plain string)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    type: Literal["image_url"]
    image_url: ImageUrl | str


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    """One message: ``system`` (or ``developer``), ``user`` or ``assistant``; text, or a
    list of text and image parts (images in user messages only)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(None, description="Accepted; not shown to the model.")


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` sends a last chunk with the token counts."""

    model_config = ConfigDict(strict=True, extra="allow")

    include_usage: bool = False


class ChatCompletionBody(OpenAIBody):
    """``POST /v1/chat/completions`` (``openai.types.chat.CompletionCreateParams``)."""

    model_config = ConfigDict(json_schema_extra=closed_schema(_NEUTRAL_CHAT_FIELDS))

    model: str = Field(description="A served model that chats: GET /v1/models.")
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: AtLeastOne | None = Field(None, description="Most tokens to generate.")
    max_completion_tokens: AtLeastOne | None = Field(None, description="Same as max_tokens.")
    temperature: float | None = Field(
        None, ge=0, le=2, description="Unset or 0: greedy decoding (the same reply each time)."
    )
    top_p: float | None = Field(None, gt=0, le=1)
    seed: Seed | None = Field(None, description="Repeatable sampling.")
    stop: str | list[str] | None = Field(None, description="Up to 4 stop strings.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: AtLeastOne | None = Field(None, description="Only 1.")
    user: str | None = None


class EmbeddingsBody(OpenAIBody):
    """``POST /v1/embeddings`` (``openai.types.EmbeddingCreateParams``), with infinity's
    ``modality`` and vLLM's ``messages`` for images."""

    model_config = ConfigDict(json_schema_extra=closed_schema({}))

    model: str = Field(description="clip_text or clip_image: one space for texts and images.")
    input: str | list[str] | list[int] | list[list[int]] | None = Field(
        None,
        description="Texts, or with modality=image image URLs or data: URIs. Token ids are "
        "not accepted.",
        # Token ids parse, to be refused with a clear 400; the description leaves them out.
        json_schema_extra={
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}},
                {"type": "null"},
            ]
        },
    )
    modality: Literal["text", "image"] = Field(
        "text", description="infinity's field: whether input holds texts or images."
    )
    messages: list[ChatMessage] | None = Field(
        None, description="vLLM's form: one vector for the text or the one image of messages."
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: little-endian float32 bytes (the openai client's default)."
    )
    dimensions: AtLeastOne | None = Field(None, description="Only the model's own dimension.")
    user: str | None = None


def _same_json_value(value: Any, allowed: Any) -> bool:
    # JSON compares numbers by value (0 and 0.0 are one value) but never a number with a
    # boolean, and Python's 0 == False must not let false through where 0 is allowed.
    if isinstance(value, bool) or isinstance(allowed, bool):
        return value is allowed
    if isinstance(value, int | float) and isinstance(allowed, int | float):
        return value == allowed
    return type(value) is type(allowed) and value == allowed


def refuse_unsupported(body: OpenAIBody, neutral: dict[str, tuple[tuple[Any, ...], str]]) -> None:
    """400 ``unsupported_field`` for the first field of ``body`` the server does not honour:
    one OpenAI defines, at a value other than its neutral ones, or one nobody defines."""
    for name, value in (body.model_extra or {}).items():
        if name not in neutral:
            raise BadRequestError(
                f"{name} is not a field this server knows; remove it",
                code="unsupported_field",
                param=name,
            )
        allowed, reason = neutral[name]
        if "*" not in allowed and not any(_same_json_value(value, ok) for ok in allowed):
            raise BadRequestError(
                f"{reason}: remove {name} or send {allowed[-1]!r}",
                code="unsupported_field",
                param=name,
            )


def refuse_unsupported_chat(body: ChatCompletionBody) -> None:
    """:func:`refuse_unsupported` for a chat body, and ``n`` other than 1."""
    if body.n not in (None, 1):
        raise BadRequestError(
            f"n={body.n}: one choice per request only; send n=1 and repeat the request",
            code="unsupported_field",
            param="n",
        )
    refuse_unsupported(body, _NEUTRAL_CHAT_FIELDS)
