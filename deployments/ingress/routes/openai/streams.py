"""Server-sent events as OpenAI's streams send them: ``data: <json>`` lines, ending with
``data: [DONE]`` (chat), or named events (image generation)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from deployments.ingress.errors import openai_error_type

#: Headers of every stream: no caching, no proxy buffering.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
#: The OpenAPI entry of a route that may answer a stream.
SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/event-stream": {}},
        "description": "The answer; with stream: true, server-sent events.",
    }
}


def sse_data(payload: BaseModel | dict[str, Any], event: str | None = None) -> str:
    """One event: ``payload`` as JSON (None fields left out of models), optionally named."""
    if isinstance(payload, BaseModel):
        data = payload.model_dump_json(exclude_none=True)
    else:
        data = json.dumps(payload)
    named = f"event: {event}\n" if event else ""
    return f"{named}data: {data}\n\n"


def done() -> str:
    """The end of a chat stream."""
    return "data: [DONE]\n\n"


def error_event(status: int, code: str, message: str, event: str | None = None) -> str:
    """An error inside a stream that has already started (its status is sent): OpenAI's
    error object, which the ``openai`` client raises as ``APIError``."""
    error = {"message": message, "type": openai_error_type(status), "param": None, "code": code}
    return sse_data({"error": error}, event=event)
