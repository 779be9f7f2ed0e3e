"""The FastAPI application every ingress route registers on, and what all routes share.

The ingress class (``deployments/ingress.py``) and its route mixins (one module per document,
e.g. ``deployments/question_routes.py``) decorate their methods with ``api``; Serve turns the
methods of the class and of its bases into routes when the class is decorated. Helpers the
routes call live here, at module level, so they exist when Serve pickles the app.
"""

from __future__ import annotations

from fastapi import FastAPI, Request

from deployments.http_errors import install_error_handlers, transient_service_error
from deployments.service_metrics import service_metrics
from vlgraph import __version__

api = FastAPI(
    title="vlgraph",
    version=__version__,
    description="Vision-language models served on Ray Serve: captioning (documents 000 and "
    "001), visual question answering with stored uploads (document 002). Errors share one "
    'body shape: `{"error": {"code", "message", "request_id"}, "detail"}`.',
)
install_error_handlers(api)


@api.middleware("http")
async def _count_requests(request: Request, call_next):
    """Count every answered request by route template, model and status (outermost, so it
    sees the final status of errors too)."""
    response = await call_next(request)
    route = getattr(request.scope.get("route"), "path", "unmatched")
    model = request.query_params.get("model", "") if route.startswith("/api/caption") else ""
    service_metrics().count_request(route, model, response.status_code)
    return response


async def call_model(call):
    """Await a handle call; Serve's overload and dead-replica errors become a typed 503
    (Serve answers its own exceptions before any middleware could)."""
    try:
        return await call
    except Exception as error:
        transient = transient_service_error(error)
        if transient is None:
            raise
        raise transient from None


async def resolved(value):
    """An awaitable that gives ``value``: stands in for a model call that is not needed."""
    return value
