"""Administration: ``POST /api/admin/reset-cache``, behind the admin key (``X-API-Key``)."""

from __future__ import annotations

import hmac
from typing import Literal

from fastapi import APIRouter, Security
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, Field

from deployments.ingress.context import IngressContext
from deployments.ingress.errors import error_responses
from vlgraph.config import AdminConfig
from vlgraph.errors import ForbiddenError, ServiceUnavailableError, UnauthorizedError

API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="The admin key (API_KEY); not needed when the service runs with DEBUG=true.",
)


class ResetCacheResponse(BaseModel):
    """What a cache reset removed."""

    removed: int = Field(description="Keys removed (this service's namespace only).")
    backend: str = Field(description="memory, redis or none.")
    scope: Literal["service", "replica"] = Field(
        description="service: the shared cache every ingress replica reads (redis, none); "
        "replica: only the in-process cache of the ingress replica that answered (memory); "
        "with several ingress replicas, use redis for a service-wide reset."
    )


def authorize_admin(admin: AdminConfig, api_key: str | None) -> None:
    """Let the request through when ``api_key`` is the admin key (or debug mode is on);
    401 without a key, 403 with a wrong one or when no admin key is configured."""
    if admin.debug:
        return
    expected = admin.api_key
    if expected is None:
        raise ForbiddenError(
            "admin routes are disabled: set API_KEY (or DEBUG=true for development only)",
            code="admin_disabled",
        )
    if not api_key:
        raise UnauthorizedError("send the admin key in the X-API-Key header")
    if not hmac.compare_digest(api_key.encode(), expected.get_secret_value().encode()):
        raise ForbiddenError("the X-API-Key header does not match API_KEY", code="invalid_api_key")


def router(context: IngressContext) -> APIRouter:
    """The admin routes of one ingress replica."""
    routes = APIRouter()
    backend = context.settings.cache.backend

    @routes.post(
        "/api/admin/reset-cache",
        response_model=ResetCacheResponse,
        summary="Remove this service's cached answers",
        responses=error_responses(401, 403, 503),
    )
    async def reset_cache(api_key: str | None = Security(API_KEY_HEADER)) -> ResetCacheResponse:
        """Remove every key under this service's namespace, never other data in Redis."""
        authorize_admin(context.settings.admin, api_key)
        cache = context.gateway.cache
        if cache is None:
            return ResetCacheResponse(removed=0, backend="none", scope="service")
        try:
            removed = await cache.clear()
        except Exception as error:
            raise ServiceUnavailableError(
                f"the cache backend did not answer: {type(error).__name__}",
                code="cache_unavailable",
            ) from None
        scope = "replica" if backend == "memory" else "service"
        return ResetCacheResponse(removed=removed, backend=backend, scope=scope)

    return routes
