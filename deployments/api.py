"""The FastAPI application every ingress route registers on, and what all routes share.

The ingress class (``deployments/ingress.py``) and its route mixins (one module per document,
e.g. ``deployments/question_routes.py``) decorate their methods with ``api``; Serve turns the
methods of the class and of its bases into routes when the class is decorated. Helpers the
routes call live here, at module level, so they exist when Serve pickles the app.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import TypeVar
from urllib.parse import parse_qs

from fastapi import FastAPI, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.http_errors import install_error_handlers, transient_service_error
from deployments.http_guards import RequestGuards, SecurityHeaders
from deployments.service_metrics import service_metrics
from vlgraph import __version__
from vlgraph.errors import (
    PayloadTooLargeError,
    ServiceUnavailableError,
    UnsupportedMediaTypeError,
)
from vlgraph.images import inspect_image

#: The description is the running service's (deployments.openapi): the ingress serves it at
#: /openapi.json and /docs itself, with this profile's limits and models.
api = FastAPI(
    title="vlgraph",
    version=__version__,
    description="Vision-language models served on Ray Serve: captioning (documents 000 and "
    "001), visual question answering with stored uploads (document 002), CLIP embeddings "
    "(document 003), image generation and the caption -> generation pipeline (documents 002 "
    'and 004). Errors share one body shape: `{"error": {"code", "message", "request_id"}, '
    '"detail"}`; overload and deadlines answer 503 (or 429) with Retry-After.',
    openapi_url=None,
    docs_url=None,
    redoc_url=None,
)
# Middleware added later wraps what was added before: the request counter sees every final
# status, every answer gets the security headers, the error mapper catches what escapes the
# guards, the guards run next to the routes.
api.add_middleware(RequestGuards)
install_error_handlers(api)
api.add_middleware(SecurityHeaders)


class RequestCounter:
    """Counts every answered request by route template, model and status. A plain ASGI
    middleware, outermost, so it sees the final status of errors too; Starlette's
    ``BaseHTTPMiddleware`` (``@app.middleware``) would cost every request an extra task and
    a wrapped body stream."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets when the app raises before answering

        async def send_counting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counting)
        finally:
            # The router writes the matched route into this same scope.
            route = getattr(scope.get("route"), "path", "unmatched")
            model = ""
            if route.startswith("/api/caption"):
                query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
                model = query.get("model", [""])[0]
            service_metrics().count_request(route, model, status)


api.add_middleware(RequestCounter)


async def call_model(call, timeout_s: float | None = None):
    """Await a handle call, giving up after ``timeout_s`` (the callee's request timeout: the
    call is cancelled and the client gets a 503 ``model_timeout``); Serve's overload and
    dead-replica errors become a typed 503 too (Serve answers its own exceptions before any
    middleware could)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await call
    except Exception as error:
        if isinstance(error, TimeoutError) and hasattr(call, "cancel"):
            call.cancel()
        raise _model_call_error(error, timeout_s) from None


async def bounded_stream(events, timeout_s: float | None = None) -> AsyncIterator:
    """The items of a streamed handle call, all within ``timeout_s`` (the callee's request
    timeout), with the errors of :func:`call_model`. The deadline guards each wait for the
    next item, never the consumer's own work."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    try:
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    item = await anext(events)
            except StopAsyncIteration:
                return
            except Exception as error:
                raise _model_call_error(error, timeout_s) from None
            yield item
    finally:
        events.cancel()  # a consumer that left, or a deadline, stops the model's work too


def _model_call_error(error: Exception, timeout_s: float | None) -> Exception:
    """What a failed model call means to the client: a deadline passed or Serve's overload
    or dead replica (a typed 503), else the error itself."""
    if isinstance(error, TimeoutError):
        return ServiceUnavailableError(
            f"the model did not answer within its {timeout_s:g} s request timeout; retry later",
            code="model_timeout",
        )
    return transient_service_error(error) or error


async def timed_model_call(model: str, *calls, timeout_s: float | None = None):
    """Await one or more calls to ``model`` together (each bounded by ``timeout_s``),
    recording how long they took (queueing included) in the model latency histogram; the
    result, or the tuple of results."""
    started = time.perf_counter()
    results = await asyncio.gather(*(call_model(call, timeout_s) for call in calls))
    service_metrics().observe_model_latency(model, time.perf_counter() - started)
    return results[0] if len(calls) == 1 else tuple(results)


async def resolved(value):
    """An awaitable that gives ``value``: stands in for a model call that is not needed."""
    return value


Body = TypeVar("Body", bound=BaseModel)

#: OpenAPI content types of routes that take their fields as JSON or as a form.
FORM_OR_JSON = ("application/json", "application/x-www-form-urlencoded", "multipart/form-data")


def form_or_json_body(schema: dict) -> dict:
    """``openapi_extra`` declaring a request body sent as JSON or as form fields."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                kind: {"schema": schema if kind == "application/json" else form_fields(schema)}
                for kind in FORM_OR_JSON
            },
        }
    }


def form_fields(schema: dict) -> dict:
    """``schema`` (an object's JSON schema) as form fields: a form cannot carry null, so an
    optional field is left out rather than sent empty."""
    properties = {}
    for name, field in schema.get("properties", {}).items():
        branches = [b for b in field.get("anyOf", []) if b.get("type") != "null"]
        if len(branches) == 1:
            field = {k: v for k, v in field.items() if k not in ("anyOf", "default")}
            field.update(branches[0])
        properties[name] = field
    return {**schema, "properties": properties}


async def read_form_or_json(request: Request, model: type[Body]) -> Body:
    """The body as ``model``, from JSON or from form fields (documents 002 and 004 send
    either); a 422 naming the field when it does not validate, 415 for other content types."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fields: object
    if content_type == "application/json":
        try:
            fields = json.loads(await request.body())
        except ValueError as error:
            raise RequestValidationError(
                [{"type": "json_invalid", "loc": ("body",), "msg": f"invalid JSON: {error}"}]
            ) from None
        return validated(model, fields, strict=True)  # JSON carries types: no coercion
    if content_type in FORM_OR_JSON:
        form = await request.form()
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
        return validated(model, fields)  # form fields are text: "64" is the number 64
    raise UnsupportedMediaTypeError(
        "send the fields as JSON (application/json) or as a form "
        f"(application/x-www-form-urlencoded, multipart/form-data); got {content_type!r}"
    )


def validated(model: type[Body], fields: object, strict: bool = False) -> Body:
    """``fields`` as ``model``; a 422 naming each bad field (``body.<name>``) otherwise."""
    try:
        return model.model_validate(fields, strict=strict)
    except ValidationError as error:
        raise RequestValidationError(
            [{**problem, "loc": ("body", *problem["loc"])} for problem in error.errors()]
        ) from None


async def read_upload(upload: UploadFile, max_bytes: int, name: str | None = None) -> bytes:
    """An uploaded file's bytes, reading at most one past ``max_bytes``: 413 when over."""
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLargeError(
            f"{name or upload.filename or 'the image'} is over the {max_bytes}-byte limit",
            code="image_too_large",
        )
    return data


async def read_image_form(
    request: Request, max_bytes: int, formats: tuple[str, ...], max_pixels: int
) -> tuple[bytes, dict[str, str]]:
    """A multipart form's ``image`` file, checked as uploads are (size, pixels, format by
    content), and its other fields."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        raise UnsupportedMediaTypeError(
            f"send a multipart/form-data body with an 'image' file; got {content_type!r}"
        )
    form = await request.form()
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body", "image"), "msg": "Field required"}]
        )
    data = await read_upload(upload, max_bytes)
    inspect_image(data, formats, max_pixels)
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    return data, fields
