"""API keys and per-caller rate limits on every route but the open ones (:data:`OPEN_PATHS`).

:class:`AccessControl` is the ASGI middleware that applies an ingress replica's
:class:`~deployments.ingress.callers.AccessGate` before a route reads a byte of the body:

- a key comes in ``Authorization: Bearer KEY`` (the ``openai`` client's way) or ``X-API-Key``
  (the documents' clients'); a key in the query string is refused (URLs are logged);
- the presented key is hashed and compared, in constant time, with every configured hash;
- a known key (or, when access is open, the client address) is admitted against its budget:
  429 with ``Retry-After`` and ``RateLimit-*`` headers past it; a slot in flight is held until
  the answer ends (the last byte of a stream, or the client leaving);
- the caller's name (the key's name, ``anonymous`` when open) is :data:`CALLER` for the
  metrics and logs of the request. The key itself is never logged or echoed.

``/api/admin/*`` answers to the admin key alone (routes/admin.py) and is not limited here.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qsl

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.ingress.callers import CALLER, AccessGate
from deployments.ingress.errors import app_path, error_response
from vlgraph.access_config import ApiKey
from vlgraph.service_metrics import service_metrics

logger = logging.getLogger("ray.serve")

#: Answer without a key: liveness and the page (/), readiness, metrics, the API description.
OPEN_PATHS = frozenset({"/", "/healthz", "/metrics", "/openapi.json", "/docs"})
#: Prefixes answered without a key: the page's static files.
OPEN_PREFIXES = ("/static/",)
#: Prefix of the routes guarded by the admin key instead.
ADMIN_PREFIX = "/api/admin/"
#: Query parameters that look like a credential: refused wherever they appear.
QUERY_KEY_NAMES = frozenset(
    {"api_key", "apikey", "api-key", "x-api-key", "key", "access_token", "token", "auth"}
)
ANONYMOUS = "anonymous"

HOW_TO_SEND = "send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"


class AccessControl:
    """ASGI middleware applying an :class:`AccessGate` (install it inside CORS, so that a
    browser on an allowed origin can read a 401 or 429)."""

    def __init__(self, app: ASGIApp, gate: AccessGate):
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = app_path(scope)
        request = Request(scope)
        if _credential_in_query(scope):
            await self._refuse(
                request,
                400,
                "key_in_query",
                "API keys are not accepted in the URL (URLs end up in logs and histories): "
                f"{HOW_TO_SEND}, and replace a key that was sent in a URL",
                caller="",
            )(scope, receive, send)
            return
        if not needs_key(path):
            await self.app(scope, receive, send)
            return
        if _is_preflight(scope):  # carries no credentials by design; CORS answers it
            await self.app(scope, receive, send)
            return
        rules = self.gate.rules
        if rules.mode == "open":
            caller = ANONYMOUS
            limit = rules.anonymous
            identity = f"address:{(scope.get('client') or ('unknown', 0))[0]}"
        else:
            key, refusal = self._authenticate(request)
            if key is None:
                await refusal(scope, receive, send)
                return
            caller, limit, identity = key.name, rules.limit_of(key), f"key:{key.name}"
        token = CALLER.set(caller)
        try:
            await self._admitted(request, caller, identity, limit, scope, receive, send)
        finally:
            CALLER.reset(token)

    def _authenticate(self, request: Request) -> tuple[ApiKey | None, Any]:
        headers = request.headers
        presented, problem = _presented_key(headers)
        if problem:
            return None, self._unauthorized(request, "malformed_key", problem, "")
        if presented is None:
            return None, self._unauthorized(
                request,
                "missing_key",
                f"This service needs an API key: {HOW_TO_SEND}",
                "",
            )
        key, is_admin = self.gate.identify(presented)
        if key is None:
            reason = "admin_key" if is_admin else "invalid_key"
            return None, self._unauthorized(
                request,
                reason,
                "The API key is not valid (it may have been revoked or rotated): "
                f"{HOW_TO_SEND} with a current key",
                "unknown",
            )
        return key, None

    async def _admitted(
        self,
        request: Request,
        caller: str,
        identity: str,
        limit: Any,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        if limit is None:
            await self.app(scope, receive, send)
            return
        admission = await self.gate.budgets.admit(identity, limit)
        if not admission.allowed:
            if admission.reason == "rate_limited":
                what = f"{limit.requests_per_minute} requests per minute"
            else:
                plural = "s" if limit.max_in_flight > 1 else ""
                what = f"{limit.max_in_flight} request{plural} at once"
            headers = {**admission.headers, "Retry-After": str(admission.retry_after_s)}
            await self._refuse(
                request,
                429,
                admission.reason,
                f"Rate limit reached: {caller if caller != ANONYMOUS else 'this address'} may "
                f"make {what}; retry after {admission.retry_after_s} s",
                caller=caller,
                headers=headers,
            )(scope, receive, send)
            return

        async def send_with_budget(message: Message) -> None:
            if message["type"] == "http.response.start" and admission.headers:
                MutableHeaders(scope=message).update(admission.headers)
            await send(message)

        try:
            await self.app(scope, receive, send_with_budget)
        finally:
            await admission.release()

    def _unauthorized(self, request: Request, reason: str, message: str, caller: str) -> Any:
        return self._refuse(
            request,
            401,
            reason,
            message,
            caller=caller,
            headers={"WWW-Authenticate": 'Bearer realm="vlgraph"'},
        )

    def _refuse(
        self,
        request: Request,
        status: int,
        reason: str,
        message: str,
        caller: str,
        headers: dict[str, str] | None = None,
    ) -> Any:
        service_metrics().count_refusal(caller or "unknown", reason)
        logger.warning(
            "access refused: %s %s -> %d %s (caller %s, client %s)",
            request.method,
            request.url.path,
            status,
            reason,
            caller or "unknown",
            request.client.host if request.client else "unknown",
        )
        return error_response(request, status, reason, message, headers=headers)


def needs_key(path: str) -> bool:
    """Whether a request to ``path`` (within the application) needs an API key: every
    path but the open ones and the admin routes (which need the admin key instead)."""
    return not (
        path in OPEN_PATHS or path.startswith(OPEN_PREFIXES) or path.startswith(ADMIN_PREFIX)
    )


def _presented_key(headers: Headers) -> tuple[str | None, str]:
    """The key of a request, or what is wrong with how it was sent."""
    authorization = headers.getlist("authorization")
    api_key = headers.getlist("x-api-key")
    if len(authorization) + len(api_key) > 1:
        return None, f"Send one API key in one header: {HOW_TO_SEND}"
    if authorization:
        scheme, _, value = authorization[0].strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None, f"The Authorization header must be 'Bearer KEY': {HOW_TO_SEND}"
        return value.strip(), ""
    if api_key:
        if not api_key[0].strip():
            return None, f"The X-API-Key header is empty: {HOW_TO_SEND}"
        return api_key[0].strip(), ""
    return None, ""


def _credential_in_query(scope: Scope) -> bool:
    query = scope.get("query_string", b"").decode("latin-1")
    if not query:
        return False
    return any(name.lower() in QUERY_KEY_NAMES for name, _ in parse_qsl(query, True))


def _is_preflight(scope: Scope) -> bool:
    headers = Headers(scope=scope)
    return (
        scope["method"] == "OPTIONS"
        and "origin" in headers
        and "access-control-request-method" in headers
    )
