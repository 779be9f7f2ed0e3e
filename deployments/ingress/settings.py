"""What the ingress is configured with: one typed object that the application builder
(:func:`graphs.app.build_app`) fills from the profile, and the request guards' limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from deployments.ingress.rate_limits import RedisTarget
from vlgraph.config import (
    AdminConfig,
    CacheConfig,
    DiffusionConfig,
    ImageFetchConfig,
    IngressConfig,
    SearchConfig,
    StoreConfig,
)
from vlgraph.served_models import ModelCatalog


@dataclass(frozen=True)
class IngressSettings:
    """The ingress's configuration: its own limits, the models served (from the registry)
    and the services around them (cache, store, image fetching, admin key)."""

    profile: str
    config: IngressConfig
    catalog: ModelCatalog
    cache: CacheConfig = field(default_factory=lambda: CacheConfig(backend="none"))
    admin: AdminConfig = field(default_factory=lambda: AdminConfig(api_key=None, debug=False))
    store: StoreConfig = field(default_factory=StoreConfig)
    image_fetch: ImageFetchConfig = field(default_factory=ImageFetchConfig)
    generators: dict[str, DiffusionConfig] = field(default_factory=dict)
    #: Per model: the settings that change its answers (part of every cache key).
    fingerprints: dict[str, dict] = field(default_factory=dict)
    #: Per called deployment: its request timeout in seconds.
    timeouts: dict[str, float] = field(default_factory=dict)
    #: The statuses overload answers with (503, and 429 where a deployment is set to it).
    overload_statuses: tuple[int, ...] = (503,)
    #: Where the callers' rate-limit budgets are shared (the cache's Redis); None: in process.
    rate_limit_redis: RedisTarget | None = None
    #: Semantic search over the stored images, its engine resolved; None: search is off.
    search: SearchConfig | None = None


@dataclass(frozen=True)
class GuardSettings:
    """The limits the request guards apply to every request."""

    max_body_bytes: int
    body_timeout_s: float
    request_timeout_s: float
    cors_allow_origins: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: IngressConfig) -> GuardSettings:
        """The guards an ingress configured by ``config`` applies."""
        return cls(
            max_body_bytes=config.body_limit(),
            body_timeout_s=config.body_timeout_s,
            request_timeout_s=config.deployment.request_timeout_s,
            cors_allow_origins=config.cors_allow_origins,
        )
