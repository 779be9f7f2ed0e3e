"""``POST /v1/chat/completions``: conversations about images, whole or streamed.

Gemma 3 and InternVL take whole conversations (system messages, turns, several images, text
alone) through their own chat templates; BLIP-2 takes turns about one image. The BLIP VQA
model and the captioners are restricted chat models: one user message with one image, and the
question (VQA) or the text the caption starts with (captioners); ``GET /v1/models`` states each
model's ``chat.mode``. ``stream: true`` answers ``chat.completion.chunk`` server-sent events,
token by token from the replica (streamed and whole requests share its batches), ending with
the usage chunk when ``stream_options.include_usage`` asks. A client that disconnects stops
its generation at the next token.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from deployments.ingress.callers import record_tokens
from deployments.ingress.context import IngressContext
from deployments.ingress.errors import error_responses
from deployments.ingress.openapi import MODEL_NAMES
from deployments.ingress.routes.openai.image_urls import ImageUrls
from deployments.ingress.routes.openai.protocol import (
    ChatCompletionBody,
    ChatMessage,
    ImageUrl,
    TextPart,
    refuse_unsupported_chat,
)
from deployments.ingress.routes.openai.streams import (
    SSE_HEADERS,
    SSE_RESPONSE,
    done,
    error_event,
    sse_data,
)
from vlgraph.errors import BadRequestError, ServiceError
from vlgraph.messages import (
    CaptionRequest,
    ChatDelta,
    ChatPart,
    ChatRequest,
    ChatResult,
    ChatTurn,
    QuestionRequest,
)
from vlgraph.served_models import Capability, ChatMode, chat_mode

#: Most stop strings, as OpenAI allows.
MAX_STOP_STRINGS = 4

#: The capability whose handle serves each chat mode.
_SERVED_BY = {
    ChatMode.CONVERSATION: Capability.CHAT,
    ChatMode.ONE_IMAGE: Capability.CHAT,
    ChatMode.QUESTION: Capability.ANSWER,
    ChatMode.CAPTION: Capability.CAPTION,
}


class ChatCompletions:
    """Turns chat bodies into model requests and model results into OpenAI's answers."""

    def __init__(self, context: IngressContext):
        self._gateway = context.gateway
        self._config = context.config
        self._images = ImageUrls(context)

    def mode_of(self, model: str) -> ChatMode:
        """How ``model`` chats; 4xx when it is unknown, not served or cannot chat."""
        known = self._gateway.catalog.known
        mode = chat_mode(known[model]) if model in known else None
        if model in known and mode is None:
            able = [name for name, does in known.items() if chat_mode(does) is not None]
            raise BadRequestError(
                f"{model} does not chat; models that do: {', '.join(able)}",
                code="chat_not_supported",
                param="model",
            )
        self._gateway.handle(model, _SERVED_BY[mode] if mode else Capability.CHAT)
        return mode  # type: ignore[return-value]

    async def request_of(self, body: ChatCompletionBody, mode: ChatMode) -> ChatRequest:
        """The model request: turns, images read (fetched or decoded) and checked, and the
        sampling settings; 4xx naming the field for what the model cannot take."""
        refuse_unsupported_chat(body)
        turns, urls = _turns(body.messages)
        _check_shape(body, mode, turns, len(urls))
        self._check_text(turns)
        self._images.check_count(len(urls), "messages")
        images = await asyncio.gather(*(self._images.read(url, param) for param, url in urls))
        return ChatRequest(
            turns=turns,
            images=tuple(images),
            max_tokens=body.max_completion_tokens or body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            stop=_stop_strings(body.stop),
        )

    async def reply(self, model: str, mode: ChatMode, request: ChatRequest) -> ChatResult:
        """The whole reply, from the model's chat or (restricted models) its caption or
        answer entry point."""
        handle = self._gateway.handle(model, _SERVED_BY[mode])
        if mode in (ChatMode.CONVERSATION, ChatMode.ONE_IMAGE):
            result = await self._gateway.call(model, handle.chat.remote(request))
        elif mode is ChatMode.QUESTION:
            question = QuestionRequest(image=request.images[0], question=request.turns[-1].text)
            answer = await self._gateway.call(model, handle.answer.remote(question))
            result = _restricted(answer.answer, answer.error, request)
        else:
            prompt = request.turns[-1].text.strip() or None
            caption = CaptionRequest(image=request.images[0], prompt=prompt)
            captioned = await self._gateway.call(model, handle.caption.remote(caption))
            result = _restricted(captioned.caption, captioned.error, request)
        if result.error is not None:
            raise ServiceError.from_item_error(result.error)
        return result

    async def deltas(
        self, model: str, mode: ChatMode, request: ChatRequest
    ) -> AsyncIterator[ChatDelta]:
        """The reply as it is generated: the replica's stream for chat models, the whole
        reply as one piece for restricted ones. An error before the first piece (a
        conversation too long for the model) is raised here, before any byte is sent."""
        if mode not in (ChatMode.CONVERSATION, ChatMode.ONE_IMAGE):
            result = await self.reply(model, mode, request)
            return _one_piece(result)
        handle = self._gateway.handle(model, Capability.CHAT).options(stream=True)
        events = self._gateway.stream(model, handle.chat_stream.remote(request))
        first = await anext(events)
        if first.result is not None and first.result.error is not None:
            await events.aclose()
            raise ServiceError.from_item_error(first.result.error)
        return _starting_with(first, events)

    def _check_text(self, turns: tuple[ChatTurn, ...]) -> None:
        characters = sum(len(part.text) for turn in turns for part in turn.parts)
        limit = self._config.max_chat_chars
        if characters > limit:
            raise ServiceError(
                f"the conversation has {characters} characters of text; the limit is {limit} "
                "(ingress.max_chat_chars)",
                code="conversation_too_long",
                status=422,
                param="messages",
            )


def _turns(messages: list[ChatMessage]) -> tuple[tuple[ChatTurn, ...], list[tuple[str, str]]]:
    """The conversation's turns, and (field, URL) of each image in order of appearance."""
    turns: list[ChatTurn] = []
    urls: list[tuple[str, str]] = []
    for index, message in enumerate(messages):
        role = "system" if message.role == "developer" else message.role
        content = message.content
        if content is None or content == []:
            raise BadRequestError(
                f"message {index} has no content", code="empty_message", param=f"messages[{index}]"
            )
        if isinstance(content, str):
            turns.append(ChatTurn(role, (ChatPart("text", content),)))
            continue
        parts: list[ChatPart] = []
        for position, part in enumerate(content):
            if isinstance(part, TextPart):
                parts.append(ChatPart("text", part.text))
                continue
            param = f"messages[{index}].content[{position}].image_url"
            if role != "user":
                raise BadRequestError(
                    f"{param}: images go in user messages, not {message.role} ones",
                    code="image_outside_user_message",
                    param=param,
                )
            url = part.image_url.url if isinstance(part.image_url, ImageUrl) else part.image_url
            urls.append((param, url))
            parts.append(ChatPart("image"))
        turns.append(ChatTurn(role, tuple(parts)))
    if turns[-1].role != "user":
        raise BadRequestError(
            "the last message must be the user's: the model replies to it",
            code="last_message_not_user",
            param="messages",
        )
    return tuple(turns), urls


def _check_shape(
    body: ChatCompletionBody, mode: ChatMode, turns: tuple[ChatTurn, ...], images: int
) -> None:
    """400 for a conversation the model's chat mode cannot take, saying what it takes."""
    model = body.model
    if mode is ChatMode.CONVERSATION:
        return
    if mode is ChatMode.ONE_IMAGE:
        if images != 1:
            raise BadRequestError(
                f"{model} talks about exactly one image per conversation; this one has {images}",
                code="one_image_per_conversation",
                param="messages",
            )
        return
    what = "a question" if mode is ChatMode.QUESTION else "optional text the caption starts with"
    if len(turns) != 1 or images != 1:
        raise BadRequestError(
            f"{model} is a restricted chat model: send one user message with one image_url "
            f"part and {what} (this request has {len(turns)} messages and {images} images)",
            code="restricted_chat_model",
            param="messages",
        )
    if mode is ChatMode.QUESTION and not turns[0].text.strip():
        raise BadRequestError(
            f"{model} answers a question about the image: add a text part with the question",
            code="empty_question",
            param="messages[0].content",
        )
    if body.temperature:
        raise BadRequestError(
            f"{model} decodes greedily: send temperature 0 or leave it out",
            code="unsupported_field",
            param="temperature",
        )
    if body.max_tokens is not None or body.max_completion_tokens is not None:
        param = "max_tokens" if body.max_tokens is not None else "max_completion_tokens"
        raise BadRequestError(
            f"{model}'s reply length is set by its configuration: leave {param} out",
            code="unsupported_field",
            param=param,
        )


def _stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP_STRINGS:
        raise BadRequestError(
            f"{len(stops)} stop strings; at most {MAX_STOP_STRINGS}",
            code="too_many_stop_strings",
            param="stop",
        )
    return tuple(text for text in stops if text)


def _restricted(text: str | None, error: Any, request: ChatRequest) -> ChatResult:
    """A captioner's or answerer's reply as a chat result, cut at the first stop string."""
    if error is not None:
        return ChatResult(error=error)
    text = text or ""
    cuts = [text.find(stop) for stop in request.stop if stop in text]
    return ChatResult(text=text[: min(cuts)] if cuts else text, finish_reason="stop")


async def _one_piece(result: ChatResult) -> AsyncIterator[ChatDelta]:
    yield ChatDelta(text=result.text or "")
    yield ChatDelta(result=result)


async def _starting_with(first: ChatDelta, rest: AsyncIterator[ChatDelta]):
    yield first
    async for delta in rest:
        yield delta


def _usage(model: str, result: ChatResult, restricted: bool) -> CompletionUsage | None:
    if restricted:  # the captioners and the answerer do not count tokens
        return None
    record_tokens(model, result.prompt_tokens, result.completion_tokens)
    return CompletionUsage(
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        total_tokens=result.prompt_tokens + result.completion_tokens,
    )


def completion(model: str, mode: ChatMode, result: ChatResult) -> ChatCompletion:
    """OpenAI's ``chat.completion`` for ``result``."""
    return ChatCompletion.model_validate(
        {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "finish_reason": result.finish_reason or "stop",
                    "logprobs": None,
                }
            ],
            "usage": _usage(model, result, _restricted_mode(mode)),
        }
    )


def _restricted_mode(mode: ChatMode) -> bool:
    return mode in (ChatMode.QUESTION, ChatMode.CAPTION)


async def completion_chunks(
    model: str, mode: ChatMode, deltas: AsyncIterator[ChatDelta], include_usage: bool
) -> AsyncIterator[str]:
    """``chat.completion.chunk`` events: the role, each piece of text, the finish reason,
    the usage when asked, then ``[DONE]``; an error after the start is an ``error`` event."""
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def chunk(choices: list[dict[str, Any]], usage: Any = None) -> str:
        fields: dict[str, Any] = {**base, "choices": choices}
        if include_usage:
            fields["usage"] = usage
        return sse_data(ChatCompletionChunk.model_validate(fields))

    def choice(delta: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]

    yield chunk(choice({"role": "assistant", "content": ""}))
    try:
        async for delta in deltas:
            result = delta.result
            if result is None:
                yield chunk(choice({"content": delta.text}))
            elif result.error is not None:
                failed = result.error
                yield error_event(failed.status, failed.code, failed.message)
                return
            else:
                yield chunk(choice({}, result.finish_reason or "stop"))
                usage = _usage(model, result, _restricted_mode(mode))
                if include_usage and usage is not None:
                    yield chunk([], usage)
    except ServiceError as error:
        yield error_event(error.status, error.code, error.message)
        return
    yield done()


def router(context: IngressContext) -> APIRouter:
    """``POST /v1/chat/completions`` of one ingress replica."""
    routes = APIRouter()
    chats = ChatCompletions(context)
    chatting = [
        model.name for model in context.settings.catalog.served if chat_mode(model.capabilities)
    ]

    @routes.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        response_model_exclude_none=True,
        summary="Chat about images (OpenAI's chat completions, streamed or not)",
        responses={
            **error_responses(400, 403, 413, 415, 422, 503, openai=True),
            **SSE_RESPONSE,
        },
        openapi_extra={MODEL_NAMES: chatting},
    )
    async def chat_completions(body: ChatCompletionBody, request: Request) -> Any:
        """The model's reply to the conversation: ``chat.completion``, or with ``stream``
        ``chat.completion.chunk`` server-sent events ending with ``data: [DONE]``."""
        mode = chats.mode_of(body.model)
        chat = await chats.request_of(body, mode)
        if not body.stream:
            result = await chats.reply(body.model, mode, chat)
            answer = completion(body.model, mode, result)
            return JSONResponse(answer.model_dump(mode="json", exclude_none=True))
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        deltas = await chats.deltas(body.model, mode, chat)
        return StreamingResponse(
            completion_chunks(body.model, mode, deltas, include_usage),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )

    return routes
