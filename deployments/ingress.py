"""The HTTP ingress: FastAPI on Ray Serve, holding handles to the model deployments.

It validates input (paths, sizes, formats) before anything reaches a model, fans requests out
to the model deployments through their handles, and maps every error in one place
(:mod:`deployments.http_errors`). Routes of document 000 (BLIP captioning by image path) are
served exactly as that document writes them.
"""

import asyncio
import hmac
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import httpx
from fastapi import File, Query, Request, Response, Security, UploadFile
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.api import api, read_upload, resolved, timed_model_call
from deployments.embedding_routes import EmbeddingRoutes
from deployments.generation_routes import GenerationRoutes
from deployments.http_errors import error_responses
from deployments.http_guards import GuardSettings
from deployments.openapi import ServiceLimits, service_openapi
from deployments.question_routes import QuestionRoutes
from deployments.service_metrics import only_vlgraph_series, ray_metrics_url, service_metrics
from deployments.web_page import mount_static, page_html, prefers_html
from vlgraph import __version__
from vlgraph.cache import make_result_cache
from vlgraph.config import (
    AdminConfig,
    CacheConfig,
    DiffusionConfig,
    ImageFetchConfig,
    IngressConfig,
    StoreConfig,
)
from vlgraph.errors import (
    BadRequestError,
    ForbiddenError,
    ItemError,
    PayloadTooLargeError,
    ServiceError,
    ServiceUnavailableError,
    UnauthorizedError,
)
from vlgraph.image_paths import read_image_file, resolve_image_path
from vlgraph.image_store import make_image_store
from vlgraph.images import inspect_image
from vlgraph.messages import (
    CaptionRequest,
    CaptionResult,
    CollectionCaptionRequest,
    FlagRequest,
    FlagResult,
)
from vlgraph.safe_fetch import ImageFetcher
from vlgraph.tags import caption_tags
from vlgraph.text_inputs import checked_text

ModelName = Literal["blip", "blip2", "gemma", "intern_vlm"]
#: Models that read several images in one prompt, hence give one caption for a set.
COLLECTIVE_MODELS: tuple[ModelName, ...] = ("gemma", "intern_vlm")


class _Body(BaseModel):
    # Strict: a JSON body is typed; "0" is not false, "1" is not a number.
    model_config = ConfigDict(extra="forbid", strict=True)


class CaptionPathRequest(_Body):
    """Caption one image file, given by its path inside the image root."""

    image_path: str = Field(
        min_length=1,
        max_length=4096,
        examples=["/app/images/example.jpg"],
        description="Path relative to the image root, or absolute inside it.",
    )


class BatchCaptionPathRequest(_Body):
    """Caption several image files, given by their paths inside the image root."""

    image_paths: list[str] = Field(
        min_length=1,
        examples=[["/app/images/example1.jpg", "/app/images/example2.jpg"]],
        description="Paths relative to the image root, or absolute inside it.",
    )


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
        description="Some models are tiny checkpoints with random weights (the offline "
        "profile): their captions, answers, images and vectors are random.",
    )


class CaptionResponse(BaseModel):
    """A caption of one image, as document 000 writes it."""

    image_path: str
    caption: str
    processing_time: float = Field(description="Seconds spent on this image at the server.")


class BatchCaptionItem(BaseModel):
    """One entry of a batch: a caption, or an error for this image alone."""

    image_path: str
    caption: str | None = None
    processing_time: float | None = None
    error: ItemError | None = Field(None, description="Why this image got no caption.")


class BatchCaptionResponse(BaseModel):
    """Results in request order, and the wall time of the whole request."""

    results: list[BatchCaptionItem]
    total_processing_time: float


class CaptionImagesItem(BaseModel):
    """One uploaded image's caption, tags and flag (document 001), or its error."""

    filename: str
    caption: str | None = None
    tags: list[str] = Field(
        default_factory=list, description="Content words of the caption (see the README)."
    )
    flagged: bool = Field(
        False, description="The model's yes/no answer to flag_caption_prompt; false without it."
    )
    cache: bool = Field(False, description="Whether the cache answered.")
    error: ItemError | None = Field(None, description="Why this image got no caption.")


class CaptionImagesResponse(BaseModel):
    """Results in upload order."""

    results: list[CaptionImagesItem]


class CollectiveCaptionResponse(BaseModel):
    """One caption for a set of images (document 001)."""

    collective_caption: str
    count: int = Field(description="How many images the caption describes.")
    tags: list[str]
    flagged: bool


_API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="The admin key (API_KEY); not needed when the service runs with DEBUG=true.",
)
_IMAGES_FILE = File(description="One or more JPEG, PNG or WebP images, judged by content.")
_IMAGE_SET_FILE = File(description="The JPEG, PNG or WebP images of the set.")


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


class ResetCacheResponse(BaseModel):
    """What a cache reset removed."""

    removed: int = Field(description="Keys removed (this service's namespace only).")
    backend: str = Field(description="memory, redis or none.")
    scope: Literal["service", "replica"] = Field(
        description="service: the shared cache every ingress replica reads (redis, none); "
        "replica: only the in-process cache of the ingress replica that answered (memory); "
        "with several ingress replicas, use redis for a service-wide reset."
    )


_MODEL_QUERY = Query("blip", description="Which model captions: blip, blip2, gemma, intern_vlm.")
_COLLECTIVE_MODEL_QUERY = Query(
    None,
    description="Which model captions the set: gemma or intern_vlm (unset: the first of them "
    "this profile serves).",
)
_CAPTION_PROMPT_QUERY = Query(
    None, description="Conditions the caption: BLIP's text prefix, the VLMs' instruction."
)
_FLAG_PROMPT_QUERY = Query(
    None, description="A yes/no question about the image; flagged is the model's answer."
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


mount_static(api)


@serve.ingress(api)
class Ingress(QuestionRoutes, EmbeddingRoutes, GenerationRoutes):
    """Routes requests to the model deployments; owns validation and error mapping. Document
    002's question routes come from :class:`~deployments.question_routes.QuestionRoutes`,
    document 003's from :class:`~deployments.embedding_routes.EmbeddingRoutes`, generation
    (documents 002 and 004) from :class:`~deployments.generation_routes.GenerationRoutes`."""

    def __init__(
        self,
        captioners: dict[str, DeploymentHandle],
        config: IngressConfig,
        profile: str,
        cache_config: CacheConfig | None = None,
        model_fingerprints: dict[str, dict] | None = None,
        admin: AdminConfig | None = None,
        vqa: DeploymentHandle | None = None,
        store_config: StoreConfig | None = None,
        encoders: dict[str, DeploymentHandle] | None = None,
        fetch_config: ImageFetchConfig | None = None,
        generators: dict[str, DeploymentHandle] | None = None,
        generator_configs: dict[str, DiffusionConfig] | None = None,
        pipeline: DeploymentHandle | None = None,
        random_weights: bool = False,
        timeouts: dict[str, float] | None = None,
        overload_statuses: tuple[int, ...] = (503,),
    ):
        self._random_weights = random_weights
        self._timeouts = timeouts or {}
        self._admin = admin or AdminConfig(api_key=None, debug=False)
        self._captioners = captioners
        self._vqa = vqa
        self._deployment_of = {name: f"{name}_caption" for name in captioners}
        if vqa is not None:
            self._deployment_of["vqa"] = "blip_vqa"
        self._encoders = encoders or {}
        for name in self._encoders:
            self._deployment_of[name] = f"{name}_encoder"
        self._fetcher = ImageFetcher(fetch_config or ImageFetchConfig(), config.max_image_bytes)
        self._generators = generators or {}
        self._generator_configs = generator_configs or {}
        for name in self._generators:
            self._deployment_of[name] = f"{name}_generator"
        self._pipeline = pipeline
        if pipeline is not None:
            self._deployment_of["similar_image"] = "similar_image"
        self._store = make_image_store(store_config or StoreConfig())
        cache_config = cache_config or CacheConfig(backend="none")
        self._cache = make_result_cache(cache_config, service_metrics().count_cache_event)
        self._cache_backend = cache_config.backend
        self._fingerprints = model_fingerprints or {}
        self._config = config
        #: Read by deployments.http_guards.RequestGuards through Serve's replica context.
        self.guard_settings = GuardSettings.from_config(config)
        self._image_root = config.resolved_image_root()
        self._profile = profile
        self._limits = ServiceLimits(
            ingress=config,
            captioners=tuple(sorted(captioners)),
            collective=tuple(name for name in COLLECTIVE_MODELS if name in captioners),
            generators=self._generator_configs,
            overload_statuses=overload_statuses,
        )
        self._openapi: dict | None = None

    @api.get(
        "/",
        response_model=HealthResponse,
        summary="Health check (document 000); the web page for browsers (document 001)",
        responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}},
    )
    async def health(self, request: Request) -> HealthResponse | HTMLResponse:
        """The service is running; whether each model deployment is reachable. A client whose
        ``Accept`` ranks ``text/html`` above JSON (a browser) gets the web page instead."""
        if prefers_html(request.headers.get("accept")):
            return HTMLResponse(page_html())
        models = await asyncio.to_thread(self._model_health)
        reachable = {name: model.reachable for name, model in models.items()}
        return HealthResponse(
            status="healthy" if all(reachable.values()) else "degraded",
            profile=self._profile,
            models=sorted(self._deployment_of),
            reachable=reachable,
            random_weights=self._random_weights,
        )

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request) -> JSONResponse:
        """This service's OpenAPI description, with its profile's limits and models."""
        if self._openapi is None:
            self._openapi = service_openapi(
                title=api.title,
                version=api.version,
                description=api.description,
                routes=request.app.routes,
                limits=self._limits,
                root_path=request.scope.get("root_path", "").rstrip("/"),
            )
        return JSONResponse(self._openapi)

    @api.get("/docs", include_in_schema=False)
    async def docs(self, request: Request) -> HTMLResponse:
        """Swagger UI over /openapi.json."""
        root_path = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root_path}/openapi.json", title=f"{api.title} - Swagger UI"
        )

    @api.get(
        "/healthz",
        response_model=HealthzResponse,
        summary="Readiness of every model deployment and of the cache (document 001)",
        responses={503: {"model": HealthzResponse, "description": "A model is unreachable."}},
    )
    async def healthz(self, response: Response) -> HealthzResponse:
        """Whether each model deployment can serve a request, and whether the cache answers;
        503 when a model cannot."""
        models = await asyncio.to_thread(self._model_health)
        cache_ok = await self._cache.backend.ping() if self._cache is not None else True
        if not all(model.reachable for model in models.values()):
            status, response.status_code = "unavailable", 503
        else:
            status = "ok" if cache_ok else "degraded"
        return HealthzResponse(
            status=status,
            profile=self._profile,
            models=models,
            cache=CacheHealth(backend=self._cache_backend, reachable=cache_ok),
        )

    def _model_health(self) -> dict[str, ModelHealth]:
        application = serve.get_replica_context().app_name
        deployments = serve.status().applications[application].deployments
        return model_health(deployments, self._deployment_of)

    @api.post(
        "/caption",
        response_model=CaptionResponse,
        summary="Caption one image by path (document 000)",
        responses=error_responses(400, 403, 404, 413, 415, 422, 503),
    )
    async def caption(self, body: CaptionPathRequest) -> CaptionResponse:
        """Caption the image at ``image_path``."""
        started = time.perf_counter()
        result = await self._caption_path(body.image_path)
        if result.error is not None:
            raise ServiceError.from_item_error(result.error)
        return CaptionResponse(
            image_path=body.image_path,
            caption=result.caption or "",
            processing_time=round(time.perf_counter() - started, 4),
        )

    @api.post(
        "/batch-caption",
        response_model=BatchCaptionResponse,
        summary="Caption several images by path (document 000)",
        responses=error_responses(413, 422, 503),
    )
    async def batch_caption(self, body: BatchCaptionPathRequest) -> BatchCaptionResponse:
        """Caption every image; a bad path gives that entry an ``error``, the rest still run."""
        return await self._caption_paths(body.image_paths)

    @api.post(
        "/async-batch-caption",
        response_model=BatchCaptionResponse,
        summary="Caption several images by path, concurrently (document 000)",
        responses=error_responses(413, 422, 503),
    )
    async def async_batch_caption(self, body: BatchCaptionPathRequest) -> BatchCaptionResponse:
        """Same contract as ``/batch-caption`` (both fan out; Ray batches on the model side)."""
        return await self._caption_paths(body.image_paths)

    @api.post(
        "/api/caption-images",
        response_model=CaptionImagesResponse,
        summary="Caption uploaded images with a chosen model (document 001)",
        responses=error_responses(400, 413, 415, 422, 503),
    )
    async def caption_images(
        self,
        images: list[UploadFile] = _IMAGES_FILE,
        model: ModelName = _MODEL_QUERY,
        caption_prompt: str | None = _CAPTION_PROMPT_QUERY,
        flag_caption_prompt: str | None = _FLAG_PROMPT_QUERY,
    ) -> CaptionImagesResponse:
        """Caption each image; with several, a bad image gets its own ``error`` entry."""
        self._captioner(model)  # refuses a model this profile does not serve
        caption_prompt, flag_prompt = self._prompts(caption_prompt, flag_caption_prompt)
        uploads = await self._read_uploads(images)
        items = await asyncio.gather(
            *(
                self._caption_upload(model, name, data, caption_prompt, flag_prompt)
                for name, data in uploads
            )
        )
        if len(items) == 1 and items[0].error is not None:
            raise ServiceError.from_item_error(items[0].error)
        return CaptionImagesResponse(results=list(items))

    @api.post(
        "/api/caption-collective-images",
        response_model=CollectiveCaptionResponse,
        summary="One caption for a set of uploaded images (document 001; gemma, intern_vlm)",
        responses=error_responses(400, 413, 415, 422, 503),
    )
    async def caption_collective_images(
        self,
        images: list[UploadFile] = _IMAGE_SET_FILE,
        model: ModelName | None = _COLLECTIVE_MODEL_QUERY,
        caption_prompt: str | None = _CAPTION_PROMPT_QUERY,
        flag_caption_prompt: str | None = _FLAG_PROMPT_QUERY,
    ) -> CollectiveCaptionResponse:
        """Caption the images together; every image must be valid."""
        if model is None:
            served = self._limits.collective
            model = served[0] if served else COLLECTIVE_MODELS[0]
        if model not in COLLECTIVE_MODELS:
            raise BadRequestError(
                f"collective captions need a model that reads several images at once: "
                f"use model={' or model='.join(COLLECTIVE_MODELS)}, not {model}",
                code="collective_not_supported",
            )
        handle = self._captioner(model)
        caption_prompt, flag_prompt = self._prompts(caption_prompt, flag_caption_prompt)
        uploads = await self._read_uploads(images)
        for name, data in uploads:
            if isinstance(data, ItemError):
                raise ServiceError.from_item_error(
                    data.model_copy(update={"message": f"{name}: {data.message}"})
                )
        image_set = tuple(data for _, data in uploads)
        key = None
        if self._cache is not None:
            params = self._result_params(
                model, caption_prompt=caption_prompt, flag_prompt=flag_prompt
            )
            key = self._cache.collection_key(image_set, model, params)
            cached = await self._cache.get(key)
            if cached is not None:
                return self._collective(cached, len(image_set), caption_prompt)
        caption_call = handle.caption_collection.remote(
            CollectionCaptionRequest(images=image_set, prompt=caption_prompt)
        )
        flag_call = self._flag_call(handle, image_set, flag_prompt)
        result, flag = await self._call_models(model, caption_call, flag_call)
        for outcome in (result, flag):
            if outcome.error is not None:
                raise ServiceError.from_item_error(outcome.error)
        answer = {"caption": result.caption or "", "flagged": bool(flag.flagged)}
        if key is not None:
            await self._cache.put(key, answer)
        return self._collective(answer, len(image_set), caption_prompt)

    def _collective(
        self, answer: dict, count: int, caption_prompt: str | None
    ) -> CollectiveCaptionResponse:
        return CollectiveCaptionResponse(
            collective_caption=answer["caption"],
            count=count,
            tags=caption_tags(answer["caption"], self._config.max_tags, caption_prompt),
            flagged=answer["flagged"],
        )

    @api.get(
        "/metrics",
        response_class=PlainTextResponse,
        summary="Application metrics in Prometheus text format (document 001)",
        responses=error_responses(503),
    )
    async def metrics(self) -> PlainTextResponse:
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

    @api.post(
        "/api/admin/reset-cache",
        response_model=ResetCacheResponse,
        summary="Remove this service's cached answers (document 001)",
        responses=error_responses(401, 403, 503),
    )
    async def reset_cache(
        self, api_key: str | None = Security(_API_KEY_HEADER)
    ) -> ResetCacheResponse:
        """Remove every key under this service's namespace, never other data in Redis."""
        self._authorize_admin(api_key)
        if self._cache is None:
            return ResetCacheResponse(removed=0, backend="none", scope="service")
        try:
            removed = await self._cache.clear()
        except Exception as error:
            raise ServiceUnavailableError(
                f"the cache backend did not answer: {type(error).__name__}",
                code="cache_unavailable",
            ) from None
        scope = "replica" if self._cache_backend == "memory" else "service"
        return ResetCacheResponse(removed=removed, backend=self._cache_backend, scope=scope)

    def _authorize_admin(self, api_key: str | None) -> None:
        if self._admin.debug:
            return
        expected = self._admin.api_key
        if expected is None:
            raise ForbiddenError(
                "admin routes are disabled: set API_KEY (or DEBUG=true for development only)",
                code="admin_disabled",
            )
        if not api_key:
            raise UnauthorizedError("send the admin key in the X-API-Key header")
        if not hmac.compare_digest(api_key.encode(), expected.get_secret_value().encode()):
            raise ForbiddenError(
                "the X-API-Key header does not match API_KEY", code="invalid_api_key"
            )

    def _captioner(self, model: str) -> DeploymentHandle:
        handle = self._captioners.get(model)
        if handle is None:
            raise BadRequestError(
                f"model {model} is not served by the {self._profile} profile; served models: "
                + ", ".join(self._model_names()),
                code="model_not_served",
            )
        return handle

    def _prompts(self, *prompts: str | None) -> list[str | None]:
        """Blank prompts count as absent; overlong ones are refused before any model runs."""
        return [
            checked_text(
                prompt,
                what="the prompt",
                limit=self._config.max_prompt_chars,
                long_code="prompt_too_long",
            )
            for prompt in prompts
        ]

    async def _read_uploads(self, files: list[UploadFile]) -> list[tuple[str, bytes | ItemError]]:
        """Each upload's name and bytes, checked (size, pixels, format by content), or the
        error that refuses it."""
        limit = self._config.max_upload_images
        if len(files) > limit:
            raise PayloadTooLargeError(
                f"{len(files)} images in one request; the limit is {limit}",
                code="too_many_images",
            )
        uploads: list[tuple[str, bytes | ItemError]] = []
        for index, upload in enumerate(files):
            name = upload.filename or f"image{index}"
            try:
                data = await read_upload(upload, self._config.max_image_bytes, name)
                inspect_image(data, self._config.allowed_formats, self._config.max_image_pixels)
            except ServiceError as error:
                uploads.append((name, error.as_item_error()))
                continue
            uploads.append((name, data))
        return uploads

    async def _caption_upload(
        self,
        model: str,
        name: str,
        data: bytes | ItemError,
        caption_prompt: str | None,
        flag_prompt: str | None,
    ) -> CaptionImagesItem:
        if isinstance(data, ItemError):
            return CaptionImagesItem(filename=name, error=data)
        try:
            outcome = await self._answer(model, data, caption_prompt, flag_prompt)
        except ServiceUnavailableError as error:
            return CaptionImagesItem(filename=name, error=error.as_item_error())
        if isinstance(outcome, ItemError):
            return CaptionImagesItem(filename=name, error=outcome)
        answer, cached = outcome
        return self._captioned(name, answer, caption_prompt, cache=cached)

    async def _answer(
        self, model: str, data: bytes, caption_prompt: str | None, flag_prompt: str | None
    ) -> tuple[dict, bool] | ItemError:
        """One checked image's ``{"caption", "flagged"}`` and whether the cache gave it, or
        the model's error for it. Every captioning route shares these cache entries."""
        key = None
        if self._cache is not None:
            params = self._result_params(
                model, caption_prompt=caption_prompt, flag_prompt=flag_prompt
            )
            key = self._cache.image_key(data, model, params)
            cached = await self._cache.get(key)
            if cached is not None:
                return cached, True
        handle = self._captioners[model]
        caption_call = handle.caption.remote(CaptionRequest(image=data, prompt=caption_prompt))
        flag_call = self._flag_call(handle, (data,), flag_prompt)
        result, flag = await self._call_models(model, caption_call, flag_call)
        error = result.error or flag.error
        if error is not None:
            return error
        answer = {"caption": result.caption or "", "flagged": bool(flag.flagged)}
        if key is not None:
            await self._cache.put(key, answer)
        return answer, False

    def _captioned(
        self, name: str, answer: dict, caption_prompt: str | None, cache: bool
    ) -> CaptionImagesItem:
        return CaptionImagesItem(
            filename=name,
            caption=answer["caption"],
            tags=caption_tags(answer["caption"], self._config.max_tags, caption_prompt),
            flagged=answer["flagged"],
            cache=cache,
        )

    async def _call_models(self, model: str, *calls):
        """Await calls to ``model`` together, each bounded by the model's request timeout and
        timed for the latency histogram; the result, or the tuple of results."""
        return await timed_model_call(model, *calls, timeout_s=self._timeouts.get(model))

    def _result_params(self, model: str, **inputs: object) -> dict:
        """What a cache key carries besides the input itself: everything that changes the
        answer, i.e. the model (name and result-relevant settings) and the request's other
        inputs (prompts, question, generation settings). Every route's keys come from here."""
        return {"model": model, "settings": self._fingerprints.get(model, {}), **inputs}

    @staticmethod
    def _flag_call(handle: DeploymentHandle, images: tuple[bytes, ...], question: str | None):
        if question is None:
            return resolved(FlagResult(flagged=False))
        return handle.flag.remote(FlagRequest(images=images, question=question))

    def _model_names(self) -> list[str]:
        return sorted(self._captioners)

    async def _caption_paths(self, paths: list[str]) -> BatchCaptionResponse:
        limit = self._config.max_batch_images
        if len(paths) > limit:
            raise PayloadTooLargeError(
                f"{len(paths)} image paths in one request; the limit is {limit}",
                code="too_many_images",
            )
        started = time.perf_counter()
        items = await asyncio.gather(*(self._timed_item(path) for path in paths))
        return BatchCaptionResponse(
            results=list(items), total_processing_time=round(time.perf_counter() - started, 4)
        )

    async def _timed_item(self, path: str) -> BatchCaptionItem:
        started = time.perf_counter()
        try:
            result = await self._caption_path(path)
        except ServiceUnavailableError as error:
            # Overload or a dead replica costs this image only; finished captions are kept.
            result = CaptionResult(error=error.as_item_error())
        if result.error is not None:
            return BatchCaptionItem(image_path=path, error=result.error)
        return BatchCaptionItem(
            image_path=path,
            caption=result.caption,
            processing_time=round(time.perf_counter() - started, 4),
        )

    async def _caption_path(self, path: str) -> CaptionResult:
        """Read and check one image file, then caption it with BLIP (through the cache, which
        the upload routes share); client errors become results."""
        try:
            image = await asyncio.to_thread(self._load_image, path)
        except ServiceError as error:
            return CaptionResult(error=error.as_item_error())
        outcome = await self._answer("blip", image, None, None)
        if isinstance(outcome, ItemError):
            return CaptionResult(error=outcome)
        return CaptionResult(caption=outcome[0]["caption"])

    def _load_image(self, raw_path: str) -> bytes:
        path: Path = resolve_image_path(raw_path, self._image_root)
        data = read_image_file(path, self._config.max_image_bytes)
        inspect_image(data, self._config.allowed_formats, self._config.max_image_pixels)
        return data


IngressDeployment = serve.deployment(Ingress, name="ingress")
