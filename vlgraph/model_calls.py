"""Awaiting calls to model deployments: deadlines, and what Serve's failures mean to a client.

Shared by the ingress (its model gateway) and the caption -> diffusion pipeline, which both
call deployments through handles. Nothing here knows HTTP: failures become typed
:class:`~vlgraph.errors.ServiceUnavailableError` values that the ingress's one error mapper
turns into 503 (or 429) with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from vlgraph.errors import ServiceUnavailableError


def transient_service_error(error: BaseException) -> ServiceUnavailableError | None:
    """What a Ray overload or replica failure means to a client (retry later); else None."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    if isinstance(error, BackPressureError):
        return ServiceUnavailableError(
            "the service is at capacity; retry after the Retry-After delay",
            code="overloaded",
            status=error.status_code,
            retry_after_s=error.retry_after_s,
        )
    if isinstance(error, ActorDiedError | ActorUnavailableError | RayActorError):
        return ServiceUnavailableError(
            "a model replica failed while serving this request; retry it",
            code="replica_unavailable",
        )
    if isinstance(error, DeploymentUnavailableError):
        return ServiceUnavailableError(
            "a model deployment is not available; retry later", code="model_unavailable"
        )
    return None


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


async def resolved(value):
    """An awaitable that gives ``value``: stands in for a model call that is not needed."""
    return value
