"""Health, readiness, metrics, the served models and the OpenAPI description: ``GET /``
(the web page for browsers), ``GET /healthz``, ``GET /metrics``, ``GET /api/models``,
``GET /openapi.json`` and ``GET /docs``."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Literal

import httpx
from fastapi import APIRouter, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field
from ray import serve

from deployments.ingress.context import IngressContext
from deployments.ingress.errors import error_responses
from deployments.ingress.openapi import ServiceLimits, service_openapi
from deployments.ingress.routes.web import page_html, prefers_html
from vlgraph import __version__
from vlgraph.config import DiffusionConfig
from vlgraph.errors import ServiceUnavailableError
from vlgraph.search_config import SearchConfig
from vlgraph.served_models import Capability
from vlgraph.service_metrics import only_vlgraph_series, ray_metrics_url


class HealthResponse(BaseModel):
    """The service is up (always 200); which models it serves and whether each is reachable.
    ``status`` is ``healthy`` when every model is, else ``degraded`` (details: /healthz)."""

    status: Literal["healthy", "degraded"] = Field(examples=["healthy"])
    service: str = "vlgraph"
    version: str = __version__
    profile: str
    models: list[str]
    reachable: dict[str, bool] = Field(description="Per model: would a request be served now.")
    random_weights: bool = Field(
        False,
        description="Some models are tiny checkpoints with random weights (SDXL in the "
        "offline profile): their answers are noise.",
    )
    offline_world: bool = Field(
        False,
        description="Some models are tiny checkpoints trained on the offline world (the "
        "offline profile): they know one coloured shape on a plain background, nothing else.",
    )


class ModelHealth(BaseModel):
    """One model deployment as Serve's controller sees it."""

    deployment: str
    status: str = Field(description="Serve's deployment status, e.g. HEALTHY, UPSCALING.")
    running_replicas: int
    reachable: bool = Field(
        description="A request would be served: a replica runs, or the deployment is scaled "
        "to zero and starts one on demand."
    )
    message: str | None = Field(None, description="Serve's explanation when not healthy.")


class CacheHealth(BaseModel):
    """The result cache's backend."""

    backend: str
    reachable: bool


class HealthzResponse(BaseModel):
    """Readiness: ok, degraded (cache down, requests still served) or unavailable (503)."""

    status: str = Field(examples=["ok"])
    profile: str
    models: dict[str, ModelHealth]
    cache: CacheHealth


class GenerationBounds(BaseModel):
    """What an image generator draws when not asked, and the most a request may ask."""

    default_size: int
    max_height: int
    max_width: int
    size_multiple: int = Field(description="Heights and widths are multiples of this.")
    default_steps: int
    max_steps: int
    guidance_scale: float
    max_guidance_scale: float

    @classmethod
    def of(cls, config: DiffusionConfig) -> GenerationBounds:
        """The bounds of one generator's resolved configuration."""
        return cls.model_validate(config.model_dump(include=set(cls.model_fields)))


class ServedModelInfo(BaseModel):
    """One model this profile serves: its API name, a label for people, what it can do."""

    name: str = Field(examples=["gemma"])
    label: str = Field(examples=["Gemma 3"])
    deployment: str
    capabilities: list[Capability]
    random_weights: bool = Field(description="A tiny random checkpoint: its answers are noise.")
    offline_world: bool = Field(
        description="A tiny checkpoint trained on the offline world of coloured shapes."
    )
    generation: GenerationBounds | None = Field(
        None, description="An image generator's bounds (null for other models)."
    )


class ModelsResponse(BaseModel):
    """The served models, in the registry's order (the web page builds its menus from it)."""

    models: list[ServedModelInfo]
    similar_image_generator: str | None = Field(
        None,
        description="The generator the similar-image pipeline draws with (the only model "
        "POST /api/similar-image and /v1/images/variations take); null: no pipeline.",
    )
    search: bool = Field(
        False, description="POST /api/search is served: stored images are indexed."
    )


# Statuses in which a request is served even with no replica running yet: scaled to zero
# (HEALTHY) or starting one (UPSCALING); the request waits for the replica.
_SERVES_FROM_ZERO = {"HEALTHY", "UPSCALING"}


def model_health(
    deployments: Mapping[str, Any], deployment_of: Mapping[str, str]
) -> dict[str, ModelHealth]:
    """Each model's deployment (``deployment_of``: model name to deployment name) as Serve's
    controller reports it (``serve.status()``'s ``DeploymentStatusOverview`` by deployment
    name): reachable when a replica runs, or when the deployment is scaled to zero or scaling
    up and will start one for the request."""
    health: dict[str, ModelHealth] = {}
    for model, name in deployment_of.items():
        found = deployments.get(name)
        if found is None:
            health[model] = ModelHealth(
                deployment=name, status="MISSING", running_replicas=0, reachable=False
            )
            continue
        running = found.replica_states.get("RUNNING", 0)
        status = str(getattr(found.status, "value", found.status))
        health[model] = ModelHealth(
            deployment=name,
            status=status,
            running_replicas=running,
            reachable=running > 0 or status in _SERVES_FROM_ZERO,
            message=found.message or None,
        )
    return health


def served_model_health(context: IngressContext) -> dict[str, ModelHealth]:
    """Every served deployment's health, from Serve's controller (blocking: run in a
    thread)."""
    application = serve.get_replica_context().app_name
    deployments = serve.status().applications[application].deployments
    return model_health(deployments, context.deployments())


def router(context: IngressContext) -> APIRouter:
    """The health, metrics, models and description routes of one ingress replica."""
    routes = APIRouter()
    settings = context.settings
    limits = ServiceLimits(
        ingress=settings.config,
        catalog=settings.catalog,
        generators=settings.generators,
        overload_statuses=settings.overload_statuses,
        search=settings.search or SearchConfig(),
    )
    described: dict[bool, Any] = {}

    @routes.get(
        "/",
        response_model=HealthResponse,
        summary="Health check; the web page for browsers",
        responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}},
    )
    async def health(request: Request) -> HealthResponse | HTMLResponse:
        """The service is running; whether each model deployment is reachable. A client whose
        ``Accept`` ranks ``text/html`` above JSON (a browser) gets the web page instead."""
        if prefers_html(request.headers.get("accept")):
            return HTMLResponse(page_html())
        models = await asyncio.to_thread(served_model_health, context)
        reachable = {name: model.reachable for name, model in models.items()}
        return HealthResponse(
            status="healthy" if all(reachable.values()) else "degraded",
            profile=settings.profile,
            models=sorted(context.deployments()),
            reachable=reachable,
            random_weights=any(model.random_weights for model in settings.catalog.served),
            offline_world=any(model.offline_world for model in settings.catalog.served),
        )

    @routes.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> JSONResponse:
        """This service's OpenAPI description, with its profile's limits and models."""
        keys_required = context.access.rules.mode == "keys"  # rules change live
        if keys_required not in described:
            app = request.app
            described[keys_required] = service_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                limits=limits,
                root_path=request.scope.get("root_path", "").rstrip("/"),
                keys_required=keys_required,
            )
        return JSONResponse(described[keys_required])

    @routes.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        """Swagger UI over /openapi.json."""
        root_path = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root_path}/openapi.json", title=f"{request.app.title} - Swagger UI"
        )

    @routes.get(
        "/healthz",
        response_model=HealthzResponse,
        summary="Readiness of every model deployment and of the cache",
        responses={503: {"model": HealthzResponse, "description": "A model is unreachable."}},
    )
    async def healthz(response: Response) -> HealthzResponse:
        """Whether each model deployment can serve a request, and whether the cache answers;
        503 when a model cannot."""
        models = await asyncio.to_thread(served_model_health, context)
        cache = context.gateway.cache
        cache_ok = await cache.backend.ping() if cache is not None else True
        if not all(model.reachable for model in models.values()):
            status, response.status_code = "unavailable", 503
        else:
            status = "ok" if cache_ok else "degraded"
        return HealthzResponse(
            status=status,
            profile=settings.profile,
            models=models,
            cache=CacheHealth(backend=settings.cache.backend, reachable=cache_ok),
        )

    @routes.get(
        "/api/models",
        response_model=ModelsResponse,
        summary="The models this profile serves and what each can do",
    )
    async def models() -> ModelsResponse:
        """Every served model with its capabilities, in the registry's order."""
        return ModelsResponse(
            models=[
                ServedModelInfo(
                    name=model.name,
                    label=model.label,
                    deployment=model.deployment,
                    capabilities=sorted(model.capabilities),
                    random_weights=model.random_weights,
                    offline_world=model.offline_world,
                    generation=(
                        GenerationBounds.of(settings.generators[model.name])
                        if model.name in settings.generators
                        else None
                    ),
                )
                for model in settings.catalog.served
            ],
            similar_image_generator=context.gateway.pipeline_generator(),
            search=context.search is not None,
        )

    @routes.get(
        "/metrics",
        response_class=PlainTextResponse,
        summary="Application metrics in Prometheus text format",
        responses=error_responses(503),
    )
    async def metrics() -> PlainTextResponse:
        """This service's series (``ray_vlgraph_*``) from the Prometheus endpoint of the Ray
        node this replica runs on; scrape Ray's endpoints directly for every node."""
        try:
            url = await asyncio.to_thread(ray_metrics_url)
            async with httpx.AsyncClient(timeout=5) as client:
                exposition = (await client.get(url)).raise_for_status().text
        except Exception as error:
            raise ServiceUnavailableError(
                f"Ray's metrics endpoint did not answer: {type(error).__name__}",
                code="metrics_unavailable",
            ) from None
        return PlainTextResponse(
            only_vlgraph_series(exposition), media_type="text/plain; version=0.0.4"
        )

    return routes
