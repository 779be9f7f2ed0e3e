"""What every route of one ingress replica works with: its settings, the model gateway, the
image store and the image fetcher, built once when the replica starts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ray.serve.handle import DeploymentHandle

from deployments.ingress.callers import AccessGate
from deployments.ingress.gateway import PIPELINE, ModelGateway
from deployments.ingress.rate_limits import CallerBudgets
from deployments.ingress.search import ImageSearch
from deployments.ingress.settings import IngressSettings
from vlgraph.access_config import AccessRules
from vlgraph.cache import make_result_cache
from vlgraph.config import IngressConfig
from vlgraph.image_store import ImageStore
from vlgraph.safe_fetch import ImageFetcher
from vlgraph.service_metrics import service_metrics
from vlgraph.store_backends import make_image_store


@dataclass
class IngressContext:
    """One ingress replica's services, handed to every route module's router factory."""

    settings: IngressSettings
    gateway: ModelGateway
    store: ImageStore
    fetcher: ImageFetcher
    access: AccessGate
    #: Semantic search over the stored images; None when the profile has it off.
    search: ImageSearch | None = None

    @classmethod
    def create(
        cls, handles: Mapping[str, DeploymentHandle], settings: IngressSettings
    ) -> IngressContext:
        """The services of an ingress with these model handles and settings."""
        cache = make_result_cache(settings.cache, service_metrics().count_cache_event)
        gateway = ModelGateway(
            handles,
            settings.catalog,
            settings.profile,
            cache=cache,
            fingerprints=settings.fingerprints,
            timeouts=settings.timeouts,
        )
        store = make_image_store(settings.store)
        search = None
        if settings.search is not None:
            search = ImageSearch.create(settings.search, settings.store, store, gateway)
        return cls(
            settings=settings,
            gateway=gateway,
            store=store,
            search=search,
            fetcher=ImageFetcher(settings.image_fetch, settings.config.max_image_bytes),
            # Closed until Serve hands the replica its rules (Ingress.reconfigure).
            access=AccessGate(
                AccessRules(mode="keys"),
                CallerBudgets(
                    settings.rate_limit_redis,
                    lease_s=_longest_request_s(settings),
                    on_fail_open=service_metrics().count_rate_limit_fail_open,
                ),
            ),
        )

    @property
    def config(self) -> IngressConfig:
        """The ingress's limits."""
        return self.settings.config

    def deployments(self) -> dict[str, str]:
        """Each served model's deployment name by model name, and the pipeline's."""
        named = {model.name: model.deployment for model in self.settings.catalog.served}
        if self.gateway.has_pipeline():
            named[PIPELINE] = PIPELINE
        return named


def _longest_request_s(settings: IngressSettings) -> float:
    """How long one request may hold a slot in flight: the ingress's deadline to start an
    answer, then the longest model deadline for a stream, with a margin."""
    longest_model = max(settings.timeouts.values(), default=0.0)
    return settings.config.deployment.request_timeout_s + longest_model + 30.0
