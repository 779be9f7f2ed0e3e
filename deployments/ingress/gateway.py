"""The one way a route reaches a model: lookup, result cache, deadline and latency metric.

Every route asks the :class:`ModelGateway` for a model by API name and capability (an unknown
name is a 422, a known model this profile does not serve a 400 ``model_not_served`` listing
the served ones, a served model that cannot do what the route asks a 400 naming the ones that
can), then calls it through :meth:`ModelGateway.call` or :meth:`ModelGateway.stream` (each
call bounded by the model's request timeout and timed for the latency histogram), optionally
through :meth:`ModelGateway.cached` (get, call, put; answers keyed by input, model, the
model's result-relevant settings and the request's other inputs).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from ray.serve.handle import DeploymentHandle

from deployments.ingress.callers import record_images
from vlgraph.cache import ResultCache
from vlgraph.errors import BadRequestError, ItemError, ServiceError
from vlgraph.model_calls import bounded_stream, call_model
from vlgraph.served_models import Capability, ModelCatalog, pipeline_generator
from vlgraph.service_metrics import service_metrics

#: The deployment that chains a captioner into a generator (not a model of the registry).
PIPELINE = "similar_image"

#: What a route asking for a capability tells a client who picked a model without it.
_NEEDS = {
    Capability.COLLECTIVE: "collective captions need a model that reads several images at once",
    Capability.FLAG: "flags need a model that answers yes/no questions",
}

#: What a cache key is about: one image, one text, or a set of images in order.
CacheSubject = bytes | str | Sequence[bytes]
#: A model's answer as the cache keeps it, or the error that leaves it uncached.
Outcome = dict[str, Any] | ItemError


class ModelGateway:
    """Model lookup, cached calls, deadlines and latency for every route of the ingress."""

    def __init__(
        self,
        handles: Mapping[str, DeploymentHandle],
        catalog: ModelCatalog,
        profile: str,
        cache: ResultCache | None = None,
        fingerprints: Mapping[str, dict] | None = None,
        timeouts: Mapping[str, float] | None = None,
    ):
        self._handles = dict(handles)
        self.catalog = catalog
        self._profile = profile
        self.cache = cache
        self._fingerprints = dict(fingerprints or {})
        self._timeouts = dict(timeouts or {})

    def served(self, capability: Capability | None = None) -> tuple[str, ...]:
        """Names of the served models, all or those that do ``capability``."""
        return self.catalog.names(capability)

    def handle(self, model: str, capability: Capability) -> DeploymentHandle:
        """The handle of ``model`` for a route that needs ``capability``; a clear 4xx when
        the name is unknown, the model cannot do it, or the profile does not serve it."""
        if model not in self.catalog.known:
            known = ", ".join(self.catalog.known_names(capability))
            raise ServiceError(
                f"unknown model {model!r}; models for {capability}: {known}",
                code="unknown_model",
                status=422,
            )
        if capability not in self.catalog.known[model]:
            able = self.catalog.known_names(capability)
            need = _NEEDS.get(capability, f"{capability} needs one of {', '.join(able)}")
            raise BadRequestError(
                f"{need}: use model={' or model='.join(able)}, not {model}",
                code=f"{capability}_not_supported",
            )
        handle = self._handles.get(model)
        if handle is None or self.catalog.get(model) is None:
            served = ", ".join(self.served(capability)) or "none"
            raise BadRequestError(
                f"model {model} is not served by the {self._profile} profile ({model}: null); "
                f"served models for {capability}: {served}",
                code="model_not_served",
            )
        return handle

    def has_pipeline(self) -> bool:
        """Whether this profile serves the caption -> generation pipeline."""
        return PIPELINE in self._handles

    def pipeline_generator(self) -> str | None:
        """The served generator the caption -> generation pipeline chains into; None when
        this profile has no pipeline."""
        if not self.has_pipeline():
            return None
        return pipeline_generator(self.served(Capability.GENERATE))

    def pipeline(self) -> DeploymentHandle:
        """The caption -> generation pipeline; 400 when this profile has none."""
        handle = self._handles.get(PIPELINE)
        if handle is None:
            raise BadRequestError(
                "the similar-image pipeline needs the blip captioner and a generator",
                code="model_not_served",
            )
        return handle

    async def call(self, model: str, *calls: Awaitable) -> Any:
        """Await calls to ``model`` together, each bounded by the model's request timeout,
        recording how long they took (queueing included) in the latency histogram; the
        result, or the tuple of results."""
        timeout_s = self._timeouts.get(model)
        started = time.perf_counter()
        results = await asyncio.gather(*(call_model(call, timeout_s) for call in calls))
        service_metrics().observe_model_latency(model, time.perf_counter() - started)
        record_images(model, results)
        return results[0] if len(calls) == 1 else tuple(results)

    def stream(self, model: str, events: Any) -> AsyncIterator:
        """The items of a streamed call to ``model``, within its request timeout."""
        return bounded_stream(events, self._timeouts.get(model))

    async def cached(
        self,
        model: str,
        subject: CacheSubject,
        compute: Callable[[], Awaitable[Outcome]],
        use_cache: bool = True,
        **inputs: object,
    ) -> tuple[dict[str, Any], bool] | ItemError:
        """``model``'s answer about ``subject`` given ``inputs`` (prompts, question,
        generation settings) and whether the cache gave it; ``compute`` runs on a miss and
        its answer is stored, its error returned uncached."""
        if self.cache is None or not use_cache:
            outcome = await compute()
            return outcome if isinstance(outcome, ItemError) else (outcome, False)
        key = self._cache_key(model, subject, inputs)
        found = await self.cache.get(key)
        if found is not None:
            return found, True
        outcome = await compute()
        if isinstance(outcome, ItemError):
            return outcome
        await self.cache.put(key, outcome)
        return outcome, False

    def _cache_key(self, model: str, subject: CacheSubject, inputs: dict[str, object]) -> str:
        """Everything that changes an answer: the input itself, the model (name and
        result-relevant settings) and the request's other inputs."""
        assert self.cache is not None
        params = {"model": model, "settings": self._fingerprints.get(model, {}), **inputs}
        if isinstance(subject, str):
            return self.cache.text_key(subject, model, params)
        if isinstance(subject, bytes):
            return self.cache.image_key(subject, model, params)
        return self.cache.collection_key(subject, model, params)
