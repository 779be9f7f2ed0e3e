"""The one place where errors become HTTP responses.

Every error body has the same shape::

    {"error": {"code": "...", "message": "...", "request_id": "..."}, "detail": "..."}

``detail`` repeats the message (or lists validation problems) for clients written against
plain FastAPI. Under ``/v1`` (the OpenAI-compatible API) the body is OpenAI's instead, with the
same status and code::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "...",
               "code": "...", "request_id": "..."}}
 500 bodies never carry internals: the traceback goes to the replica log under
the request id that the response also carries (Serve's ``X-Request-ID`` header).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vlgraph.errors import ServiceError, ServiceUnavailableError
from vlgraph.model_calls import transient_service_error

logger = logging.getLogger("ray.serve")

REQUEST_ID_HEADER = "x-request-id"


class ErrorDetail(BaseModel):
    """What went wrong, and the request id to quote."""

    code: str
    message: str
    request_id: str


class ErrorResponse(BaseModel):
    """Body of every error response."""

    error: ErrorDetail
    detail: str | list[dict[str, Any]] | None = None


#: What each error status means, for every route that can answer it.
ERROR_STATUS_TEXT = {
    400: "A body that cannot be parsed (malformed JSON or multipart), or input the schema "
    "cannot express (a NUL byte in a path, a model this profile does not serve, invalid "
    "base64).",
    401: "The admin API key is missing.",
    403: "A path outside the image root, a URL to a forbidden address, or a wrong or "
    "unconfigured admin key.",
    404: "No such file, stored image or route.",
    408: "The request body did not arrive within ingress.body_timeout_s.",
    409: "The stored search vectors come from another encoder than the served one (or some "
    "images have none): run vlgraph-index --rebuild.",
    413: "Over a size limit: the body, an image's bytes or pixels, images or items per request.",
    415: "Not an image of an accepted type (judged by content), or a body of another type.",
    422: "The request does not validate (the message names the field), an undecodable "
    "image, a text or generation setting past its limit, a URL that cannot be fetched.",
    429: "Overloaded: this deployment's queue is full; retry after Retry-After.",
    500: "Internal error; quote the request id.",
    503: "Overloaded, a deadline passed, or a model replica, the image store or the search "
    "index is unavailable; retry after Retry-After.",
}


#: Codes of the errors Starlette and the request guards raise as ``HTTPException``.
_HTTP_ERROR_CODES = {
    400: "malformed_body",  # FastAPI's and Starlette's: undecodable JSON, broken multipart
    404: "route_not_found",
    405: "method_not_allowed",
    408: "body_timeout",
    413: "body_too_large",
}


def body_too_large(limit: int) -> str:
    """The message of a 413 ``body_too_large``."""
    return f"the request body is over the {limit}-byte limit (ingress.max_body_bytes)"


class OpenAIErrorDetail(BaseModel):
    """OpenAI's error object (``openai.APIError``'s ``body``), plus the request id."""

    message: str
    type: str
    param: str | None = None
    code: str
    request_id: str


class OpenAIErrorResponse(BaseModel):
    """Body of every error response under ``/v1``."""

    error: OpenAIErrorDetail


#: The ``/v1`` prefix: errors there take OpenAI's shape.
OPENAI_PREFIX = "/v1"


def openai_error_type(status: int) -> str:
    """OpenAI's error ``type`` for an HTTP status."""
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 404:
        return "not_found_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def app_path(scope: dict[str, Any]) -> str:
    """The request's path within the application (without the route prefix it is served
    under)."""
    path = scope["path"]
    root = scope.get("root_path", "").rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root) :] or "/"
    return path


def speaks_openai(path: str) -> bool:
    """Whether ``path`` is under ``/v1`` (answers errors in OpenAI's shape)."""
    return path == OPENAI_PREFIX or path.startswith(OPENAI_PREFIX + "/")


def error_responses(*statuses: int, openai: bool = False) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for the error statuses a route may answer (in
    OpenAI's shape for the ``/v1`` routes)."""
    body = OpenAIErrorResponse if openai else ErrorResponse
    return {
        status: {"model": body, "description": ERROR_STATUS_TEXT[status]} for status in statuses
    }


def request_id_of(request: Request) -> str:
    """The request id Serve's proxy assigned (it echoes it as ``X-Request-ID``)."""
    existing = request.headers.get(REQUEST_ID_HEADER) or getattr(request.state, "request_id", None)
    if existing is None:
        existing = request.state.request_id = uuid.uuid4().hex
    return existing


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    detail: Any = None,
    headers: dict[str, str] | None = None,
    param: str | None = None,
) -> JSONResponse:
    """Build the standard error body (OpenAI's under ``/v1``)."""
    request_id = request_id_of(request)
    if speaks_openai(app_path(request.scope)):
        error = {
            "message": message,
            "type": openai_error_type(status),
            "param": param,
            "code": code,
            "request_id": request_id,
        }
        body: dict[str, Any] = {"error": error}
    else:
        body = {
            "error": {"code": code, "message": message, "request_id": request_id},
            "detail": message if detail is None else detail,
        }
    return JSONResponse(jsonable_encoder(body), status_code=status, headers=headers)


def service_error_response(request: Request, error: ServiceError) -> JSONResponse:
    """The response for a typed error; retryable ones carry ``Retry-After``."""
    headers = None
    if isinstance(error, ServiceUnavailableError):
        headers = {"Retry-After": str(error.retry_after_s)}
    return error_response(
        request, error.status, error.code, error.message, headers=headers, param=error.param
    )


def _validation_summary(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors[:5]:
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        parts.append(f"{location or 'body'}: {error.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def _first_field(errors: list[dict[str, Any]]) -> str | None:
    """The dotted path of the first invalid field (OpenAI's ``param``)."""
    for error in errors:
        location = [str(part) for part in error.get("loc", ()) if part not in ("body", "query")]
        if location:
            return ".".join(location)
    return None


def install_error_handlers(app: FastAPI) -> None:
    """Register the mapping of every error type on ``app``."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, error: ServiceError) -> JSONResponse:
        return service_error_response(request, error)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = error.errors()
        detail = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in errors]
        return error_response(
            request,
            422,
            "invalid_request",
            _validation_summary(errors),
            detail=detail,
            param=_first_field(errors),
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_ERROR_CODES.get(error.status_code, "http")
        message = str(error.detail)
        limit = request.scope.get(MAX_BODY_SIZE_SCOPE_KEY)
        if error.status_code == 413 and limit is not None:  # Starlette's body limiter
            message = body_too_large(limit)
        return error_response(request, error.status_code, code, message, headers=error.headers)

    app.add_middleware(UnexpectedErrors)


class UnexpectedErrors:
    """Turns an exception that escapes every handler into a 503 (Serve's overload and
    dead-replica errors) or a 500 without internals. A plain ASGI middleware: Starlette's
    ``@app.middleware("http")`` would cost every request an extra task and a wrapped body
    stream."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception as error:
            if started:  # too late for an error body: the client sees a cut-off response
                raise
            request = Request(scope)
            transient = transient_service_error(error)
            if transient is not None:
                response = service_error_response(request, transient)
            else:
                logger.exception("request %s failed", request_id_of(request))
                response = error_response(
                    request,
                    500,
                    "internal_error",
                    "internal error; quote the request id when reporting it",
                )
            await response(scope, receive, send)
