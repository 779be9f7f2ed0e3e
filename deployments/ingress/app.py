"""The FastAPI application of one ingress replica, built by :func:`create_api`.

Nothing is built at import: the ingress deployment calls the factory on its replica with its
services (:class:`~deployments.ingress.context.IngressContext`) and the request guards'
limits, and the factory adds the middleware and one router per API area.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.ingress.access import AccessControl
from deployments.ingress.callers import CALLER
from deployments.ingress.context import IngressContext
from deployments.ingress.errors import install_error_handlers
from deployments.ingress.guards import RequestGuards, SecurityHeaders
from deployments.ingress.routes import (
    admin,
    captions,
    embeddings,
    generation,
    health,
    openai,
    questions,
    search,
    search_admin,
    web,
)
from deployments.ingress.settings import GuardSettings
from vlgraph import __version__
from vlgraph.service_metrics import service_metrics

TITLE = "vlgraph"
DESCRIPTION = (
    "Vision-language models served on Ray Serve: captioning (by path, and uploads with a "
    "chosen model), visual question answering with stored uploads, CLIP embeddings, image "
    "generation and the caption -> generation pipeline. Errors share one body shape: "
    '`{"error": {"code", "message", "request_id"}, "detail"}`; overload and deadlines answer '
    "503 (or 429) with Retry-After."
)


def create_api(context: IngressContext, guards: GuardSettings) -> FastAPI:
    """The ingress's app: every route of every API area on ``context``'s services, behind
    the request guards, the error mapper, the security headers and the request counter."""
    # The description is the running service's (routes/health.py serves /openapi.json and
    # /docs itself, with this profile's limits and models).
    api = FastAPI(
        title=TITLE,
        version=__version__,
        description=DESCRIPTION,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    # Middleware added later wraps what was added before: the request counter sees every
    # final status, every answer gets the security headers, the error mapper catches what
    # escapes the guards, the guards run next, then the access control (inside CORS, so a
    # browser on an allowed origin can read its 401 or 429), then the routes.
    api.add_middleware(AccessControl, gate=context.access)
    api.add_middleware(RequestGuards, settings=guards)
    install_error_handlers(api)
    api.add_middleware(SecurityHeaders)
    api.add_middleware(RequestCounter)
    areas = (health, captions, questions, embeddings, generation, search, admin, search_admin)
    for area in (*areas, openai):
        api.include_router(area.router(context))
    web.mount_static(api)
    return api


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
        caller = ""

        async def send_counting(message: Message) -> None:
            nonlocal status, caller
            if message["type"] == "http.response.start":
                status = message["status"]
                caller = CALLER.get()  # set by the access control, inside this middleware
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
            service_metrics().count_request(route, model, status, caller)
