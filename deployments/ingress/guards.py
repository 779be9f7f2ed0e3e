"""What every request passes before a route sees it: CORS (closed unless origins are
configured), a bound on the body's size and on the time a client may take to send it, and the
ingress's deadline for starting a response; and the security headers every answer carries
(:class:`SecurityHeaders`).

The limits come from the ingress's :class:`~vlgraph.config.IngressConfig` as
:class:`~deployments.ingress.settings.GuardSettings`, passed to the app factory.
"""

from __future__ import annotations

import asyncio

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.ingress.errors import body_too_large, error_response
from deployments.ingress.settings import GuardSettings
from vlgraph.errors import ServiceUnavailableError

#: Headers a browser page on an allowed origin may send, and read back.
CORS_REQUEST_HEADERS = ("Content-Type", "Authorization", "X-API-Key", "X-Request-ID")
CORS_EXPOSED_HEADERS = (
    "X-Request-ID",
    "Retry-After",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
)
#: Sent with every answer: browsers must take the declared Content-Type as it is, never sniff
#: an image (a stored upload may be a JPEG with HTML appended) into a page that runs scripts.
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff"}


class RequestGuards:
    """ASGI middleware applying :class:`GuardSettings`:

    - a ``Content-Length`` over ``max_body_bytes`` is answered 413 ``body_too_large`` before
      any byte is read; a body without one is counted as it streams (Starlette's
      :class:`~starlette.middleware.body_limit.RequestBodyLimitMiddleware`) and refused with
      the same 413 when it crosses the limit;
    - the body must arrive within ``body_timeout_s`` of the request's start (408
      ``body_timeout``): a client trickling bytes cannot hold a connection and a buffer open;
    - a response must start within ``request_timeout_s`` (503 ``request_timeout`` with
      ``Retry-After``; the work is cancelled); a stream, once started, is bounded by its
      model's own request timeout;
    - CORS answers only for ``cors_allow_origins`` (Starlette's
      :class:`~starlette.middleware.cors.CORSMiddleware`); with none, no CORS header is ever
      sent and a preflight is refused like any unknown method; with some, another origin gets
      no ``Access-Control-*`` header either and its preflight a 400 ``cors_not_allowed``.
    """

    def __init__(self, app: ASGIApp, settings: GuardSettings):
        self.app = app
        self._settings = settings
        self._stack = self._build(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        limit = self._settings.max_body_bytes
        if declared is not None and declared > limit:
            refusal = error_response(Request(scope), 413, "body_too_large", body_too_large(limit))
            await refusal(scope, receive, send)
            return
        await self._stack(scope, receive, send)

    def _build(self, settings: GuardSettings) -> ASGIApp:
        stack: ASGIApp = RequestBodyLimitMiddleware(self.app, settings.max_body_bytes)
        stack = _Deadlines(stack, settings)
        if settings.cors_allow_origins:
            stack = _OriginCORS(
                stack,
                allow_origins=list(settings.cors_allow_origins),
                allow_methods=["GET", "POST"],
                allow_headers=list(CORS_REQUEST_HEADERS),
                expose_headers=list(CORS_EXPOSED_HEADERS),
                max_age=600,
            )
        return stack


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every answer of the app, error
    answers included (install it outside the error mapper)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(SECURITY_HEADERS)
            await send(message)

        await self.app(scope, receive, send_secured)


class _OriginCORS(CORSMiddleware):
    """Starlette's CORS for the configured origins, answering nothing CORS to any other:
    Starlette would still send it ``Access-Control-Expose-Headers`` on a simple request, and
    refuse its preflight with a plain-text 400 carrying ``Access-Control-Allow-*`` headers.
    Here another origin gets no ``Access-Control-*`` header, and a refused preflight gets the
    standard error body (400 ``cors_not_allowed``) naming what was refused."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        preflight = (
            scope["method"] == "OPTIONS"
            and "origin" in headers
            and "access-control-request-method" in headers
        )
        if preflight:
            answer = self.preflight_response(request_headers=headers)
            if answer.status_code != 200:
                refused = bytes(answer.body).decode("utf-8", "replace")
                answer = error_response(
                    Request(scope),
                    400,
                    "cors_not_allowed",
                    f"{refused}: this API answers cross-origin requests only from "
                    f"ingress.cors_allow_origins",
                    headers={"Vary": answer.headers.get("Vary", "Origin")},
                )
            await answer(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    async def send(self, message: Message, send: Send, request_headers: Headers) -> None:
        origin = request_headers.get("Origin")
        if (
            message["type"] == "http.response.start"
            and origin is not None
            and not self.is_allowed_origin(origin=origin)
        ):
            headers = MutableHeaders(scope=message)
            headers["Vary"] = ", ".join([*headers.getlist("Vary"), "Origin"])
            await send(message)
            return
        await super().send(message, send, request_headers)


class _Deadlines:
    """The body deadline (408, raised from ``receive`` as an ``HTTPException`` that FastAPI
    passes through to the error handlers) and the response deadline (503)."""

    def __init__(self, app: ASGIApp, settings: GuardSettings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        body_deadline = loop.time() + self.settings.body_timeout_s
        body_done = False
        started = False

        async def receive_in_time() -> Message:
            nonlocal body_done
            if body_done:  # later receives wait for a disconnect: no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(body_deadline):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(
                    408,
                    f"the request body did not arrive within {self.settings.body_timeout_s:g} "
                    "s; send it faster or in a smaller request",
                ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                deadline.reschedule(None)  # a started stream is bounded by its model's timeout
            await send(message)

        try:
            async with asyncio.timeout(self.settings.request_timeout_s) as deadline:
                await self.app(scope, receive_in_time, send_tracking)
        except TimeoutError:
            if started:
                raise
            timeout = ServiceUnavailableError(
                f"no answer within the {self.settings.request_timeout_s:g} s request timeout; "
                "retry later",
                code="request_timeout",
            )
            response = error_response(
                Request(scope),
                timeout.status,
                timeout.code,
                timeout.message,
                headers={"Retry-After": str(timeout.retry_after_s)},
            )
            await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    return int(value) if value is not None and value.isdigit() else None
