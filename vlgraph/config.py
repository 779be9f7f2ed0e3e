"""Typed configuration of the whole application.

:class:`AppConfig` ties every model's settings (:mod:`vlgraph.model_config`, and the models a
profile names itself, :mod:`vlgraph.named_model_config`) to the ingress, the cache, the store,
access control and the admin routes; everything a profile holds is importable from here. Every
model forbids unknown fields, so a typo in a profile fails at build time with the field's
dotted name instead of being ignored.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, IPvAnyNetwork, SecretStr, model_validator

from vlgraph.access_config import AccessConfig
from vlgraph.model_config import (
    DEFAULT_REQUEST_TIMEOUT_S,
    TINY_PREFIX,
    AnswerGenerationConfig,
    AutoscalingConfig,
    BackpressureOptions,
    BatchingConfig,
    BlipCaptionConfig,
    BlipVqaConfig,
    CaptionGenerationConfig,
    DeploymentOptions,
    DiffusionConfig,
    DiffusionFamilyName,
    EncoderConfig,
    GitCaptionConfig,
    ModelFamilyConfig,
    RayActorOptions,
    StrictModel,
    VisionLanguageConfig,
    VisionLanguageFamilyName,
    default_sdxl,
    vision_language_section,
)
from vlgraph.named_model_config import (
    MODEL_NAME_PATTERN,
    NAMED_TASKS,
    PIPELINE_LIMIT_FIELDS,
    ChatModelConfig,
    EmbeddingModelConfig,
    GenerationModelConfig,
    ModelTask,
    NamedModelConfig,
)
from vlgraph.search_config import SearchConfig
from vlgraph.tiny import (
    DEFAULT_CHECKPOINT_CACHE,
    resolve_checkpoint_cache_dir,
    trained_on_world,
)

#: Re-exported: the per-model settings live in vlgraph.model_config and
#: vlgraph.named_model_config, and every profile type is importable from here.
__all__ = [
    "DEFAULT_CHECKPOINT_CACHE",
    "DEFAULT_REQUEST_TIMEOUT_S",
    "MODEL_NAME_PATTERN",
    "NAMED_TASKS",
    "PIPELINE_LIMIT_FIELDS",
    "TINY_PREFIX",
    "TOP_LEVEL_MODELS",
    "AdminConfig",
    "AnswerGenerationConfig",
    "AppConfig",
    "AutoscalingConfig",
    "BackpressureOptions",
    "BatchingConfig",
    "BlipCaptionConfig",
    "BlipVqaConfig",
    "CacheConfig",
    "CaptionGenerationConfig",
    "ChatModelConfig",
    "DeploymentOptions",
    "DiffusionConfig",
    "DiffusionFamilyName",
    "EmbeddingModelConfig",
    "EncoderConfig",
    "GenerationModelConfig",
    "GitCaptionConfig",
    "ImageFetchConfig",
    "IngressConfig",
    "ModelFamilyConfig",
    "ModelTask",
    "ModelsConfig",
    "NamedModelConfig",
    "PipelineConfig",
    "RayActorOptions",
    "SearchConfig",
    "StoreConfig",
    "StrictModel",
    "VisionLanguageConfig",
    "VisionLanguageFamilyName",
    "default_sdxl",
    "resolve_checkpoint_cache_dir",
]


class ModelsConfig(BaseModel):
    """Every model deployment of the application, keyed by the name used in the API
    (``?model=blip|blip2|gemma|intern_vlm|git``). A model set to ``null`` is not served.

    Any other key names a model of the operator's choosing (:class:`ChatModelConfig` or
    :class:`EmbeddingModelConfig`, told apart by ``task``): ``models: {qwen: {task: chat,
    source: Qwen/Qwen2.5-VL-3B-Instruct}}`` serves ``model=qwen`` on every route its task
    allows.
    """

    model_config = ConfigDict(extra="allow", frozen=True, validate_default=True)
    __pydantic_extra__: dict[str, NamedModelConfig] = Field(init=False)

    blip: BlipCaptionConfig = Field(default_factory=BlipCaptionConfig)
    blip2: VisionLanguageConfig | None = vision_language_section(
        "blip2", "Salesforce/blip2-opt-2.7b", caption_instruction=None
    )
    gemma: VisionLanguageConfig | None = vision_language_section("gemma3", "google/gemma-3-4b-it")
    intern_vlm: VisionLanguageConfig | None = vision_language_section(
        "internvl", "OpenGVLab/InternVL3-1B-hf"
    )
    git: GitCaptionConfig | None = Field(
        None, description="GIT captioning; served when a profile sets it (e.g. {} for the default)."
    )

    @model_validator(mode="before")
    @classmethod
    def _named_models_have_a_task(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, model in data.items():
                if name in cls.model_fields or not isinstance(model, dict):
                    continue
                if model.get("task") not in NAMED_TASKS:
                    raise ValueError(
                        f"models.{name}: a model named by the profile needs a task, one of "
                        f"{', '.join(NAMED_TASKS)} (got {model.get('task')!r})"
                    )
        return data

    @model_validator(mode="after")
    def _named_models_have_free_names(self) -> ModelsConfig:
        for name in self.named():
            if not re.fullmatch(MODEL_NAME_PATTERN, name):
                raise ValueError(
                    f"models.{name}: a model's name is lowercase letters, digits and _, "
                    "starting with a letter, at most 32 characters"
                )
            if name in RESERVED_MODEL_NAMES:
                raise ValueError(
                    f"models.{name}: {name} is the name of a built-in section of the profile; "
                    "choose another name"
                )
        return self

    def named(self) -> dict[str, ChatModelConfig | EmbeddingModelConfig | GenerationModelConfig]:
        """The models the profile names itself (besides the built-in sections), by name."""
        return dict(self.model_extra or {})

    def served(self) -> dict[str, ModelFamilyConfig]:
        """The models this profile serves, by API name: the built-in ones, then the named."""
        return {name: model for name, model in self if model is not None}


ImageFormat = Literal["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"]

#: Room for the multipart boundaries, part headers and form fields beside the images.
FORM_OVERHEAD_BYTES = 1024 * 1024
#: The ingress waits on the models, so its deadline is longer than theirs by default.
DEFAULT_INGRESS_TIMEOUT_S = 2 * DEFAULT_REQUEST_TIMEOUT_S


class IngressConfig(StrictModel):
    """The HTTP router: limits on what it accepts and where it reads images from."""

    image_root: Path | None = Field(
        None,
        description="Folder that image paths resolve in. Unset: $IMAGE_ROOT, else ./images. "
        "Paths outside it are refused.",
    )
    max_image_bytes: int = Field(16 * 1024 * 1024, ge=1, description="Largest image file read.")
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Largest width x height accepted, checked before decoding."
    )
    max_batch_images: int = Field(64, ge=1, description="Most image paths in one batch request.")
    max_upload_images: int = Field(
        16, ge=1, description="Most uploaded images in one captioning request (413 past it)."
    )
    max_prompt_chars: int = Field(
        500, ge=1, description="Longest caption_prompt or flag_caption_prompt (422 past it)."
    )
    max_tags: int = Field(5, ge=0, le=50, description="Most tags returned per caption.")
    allowed_formats: tuple[ImageFormat, ...] = Field(
        ("JPEG", "PNG", "WEBP"), min_length=1, description="Image formats, judged by content."
    )
    upload_formats: tuple[ImageFormat, ...] = Field(
        ("JPEG", "PNG"),
        min_length=1,
        description="Formats POST /upload stores, by content; the original VQA service took "
        "PNG, JPG and JPEG.",
    )
    max_question_chars: int = Field(
        500, ge=1, le=10_000, description="Longest question for POST /question (422 past it)."
    )
    max_text_chars: int = Field(
        2000, ge=1, le=100_000, description="Longest text for POST /encode_text (422 past it)."
    )
    max_chat_chars: int = Field(
        32_000,
        ge=1,
        le=1_000_000,
        description="Most characters of text in one /v1/chat/completions conversation (422 "
        "past it); the model's own context is checked too.",
    )
    max_encode_items: int = Field(
        64, ge=1, le=1024, description="Most texts or images in one encode request (413 past it)."
    )
    max_history_page: int = Field(
        100, ge=1, le=1000, description="Most images in one GET /history page (at most 1000)."
    )
    max_body_bytes: int | None = Field(
        None,
        ge=1,
        description="Largest request body. Unset: room for max_upload_images images of "
        "max_image_bytes each plus 1 MiB of form overhead. A Content-Length over it is refused "
        "before any byte is read, a chunked body as soon as it crosses it (413 body_too_large).",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Longest time a client may take to send its whole body (a slow upload "
        "holds a connection and buffers): past it, 408 body_timeout.",
    )
    cors_allow_origins: tuple[str, ...] = Field(
        (),
        description="Origins whose pages may call the API from a browser (CORS), e.g. "
        "['https://app.example.com']. Empty (the default): no cross-origin access; the "
        "service's own page at / is same-origin and needs none.",
    )
    deployment: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(
            max_ongoing_requests=256, request_timeout_s=DEFAULT_INGRESS_TIMEOUT_S
        )
    )

    @model_validator(mode="after")
    def _body_fits_one_image(self) -> IngressConfig:
        if self.max_body_bytes is not None and self.max_body_bytes <= self.max_image_bytes:
            raise ValueError(
                f"max_body_bytes ({self.max_body_bytes}) must be larger than max_image_bytes "
                f"({self.max_image_bytes}), or one image of the largest size cannot be sent"
            )
        for origin in self.cors_allow_origins:
            if origin == "*" or not origin.startswith(("http://", "https://")):
                raise ValueError(
                    f"cors_allow_origins takes full origins such as https://app.example.com, "
                    f"not {origin!r} (a wildcard would open the API to every web page)"
                )
        return self

    def body_limit(self) -> int:
        """The largest request body accepted, in bytes."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return self.max_upload_images * self.max_image_bytes + FORM_OVERHEAD_BYTES

    def resolved_image_root(self) -> Path:
        """The absolute image root: config, else ``$IMAGE_ROOT``, else ``./images``."""
        root = self.image_root or Path(os.environ.get("IMAGE_ROOT") or "images")
        return root.expanduser().resolve()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, not {value!r}") from None


class CacheConfig(StrictModel):
    """The ingress's result cache. Defaults follow multi-model captioning's variables:
    ``REDIS_HOST`` (set: Redis, unset: in-process), ``REDIS_PORT``, ``REDIS_DB``,
    ``CACHE_TTL_SECONDS``."""

    backend: Literal["memory", "redis", "none"] = Field(
        default_factory=lambda: "redis" if os.environ.get("REDIS_HOST") else "memory",
        description="memory: in-process LRU per ingress replica; redis: shared; none: off.",
    )
    redis_host: str = Field(default_factory=lambda: os.environ.get("REDIS_HOST") or "localhost")
    redis_port: int = Field(default_factory=lambda: _env_int("REDIS_PORT", 6379), ge=1, le=65535)
    redis_db: int = Field(default_factory=lambda: _env_int("REDIS_DB", 0), ge=0)
    ttl_s: int = Field(
        default_factory=lambda: _env_int("CACHE_TTL_SECONDS", 86400),
        ge=1,
        description="How long an answer stays cached.",
    )
    timeout_s: float = Field(
        0.25, gt=0, le=10, description="Redis connect and read timeout; past it, no cache."
    )
    max_entries: int = Field(10_000, ge=1, description="Bound of the in-process cache.")
    namespace: str = Field(
        "vlgraph",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Prefix of every key; a reset removes only keys under it.",
    )


class ImageFetchConfig(StrictModel):
    """How ``image_url`` inputs are fetched (CLIP embeddings). By default only public
    internet addresses are reachable: every address a host resolves to must be global."""

    allowed_domains: tuple[str, ...] = Field(
        (),
        description="If set, only these hosts and their subdomains are fetched, e.g. "
        "['images.example.com', 'cdn.example.org'].",
    )
    allowed_networks: tuple[IPvAnyNetwork, ...] = Field(
        (),
        description="Networks exempt from the public-address rule, e.g. an internal image "
        "host ['10.1.2.0/24']; the tests use ['127.0.0.2/32'] for their own servers. Empty "
        "(the default): loopback, private, link-local, CGNAT and metadata addresses are refused.",
    )
    max_redirects: int = Field(3, ge=0, le=10, description="Redirect hops followed, each checked.")
    connect_timeout_s: float = Field(3.0, gt=0, le=60)
    read_timeout_s: float = Field(10.0, gt=0, le=300, description="Longest wait for any bytes.")
    total_timeout_s: float = Field(20.0, gt=0, le=600, description="Whole fetch, redirects in.")
    user_agent: str = Field("vlgraph-image-fetch/1", min_length=1, max_length=200)


def _env_choice(name: str, choices: tuple[str, ...], default: str) -> str:
    value = (os.environ.get(name) or default).strip().lower()
    if value not in choices:
        raise ValueError(
            f"environment variable {name} must be one of {', '.join(choices)}, not {value!r}"
        )
    return value


DEFAULT_DATA_DIR = Path("data")


class StoreConfig(StrictModel):
    """Where uploaded images, their captions and their question history are kept (visual
    question answering with uploads). ``sqlite``: one SQLite file plus image files under
    ``data_dir``, for one machine (ingress replicas on that machine share it). ``redis``: a
    Redis server that every ingress replica of a multi-node cluster reaches; durable only with
    Redis's append-only file on."""

    backend: Literal["sqlite", "redis"] = Field(
        default_factory=lambda: _env_choice("VLGRAPH_STORE", ("sqlite", "redis"), "sqlite"),
        description="sqlite (embedded, the default) or redis (shared). $VLGRAPH_STORE.",
    )
    data_dir: Path | None = Field(
        None,
        description=f"sqlite: the folder of the database and images. Unset: $VLGRAPH_DATA_DIR, "
        f"else ./{DEFAULT_DATA_DIR}.",
    )
    redis_host: str = Field(default_factory=lambda: os.environ.get("REDIS_HOST") or "localhost")
    redis_port: int = Field(default_factory=lambda: _env_int("REDIS_PORT", 6379), ge=1, le=65535)
    redis_db: int = Field(default_factory=lambda: _env_int("REDIS_DB", 0), ge=0)
    timeout_s: float = Field(2.0, gt=0, le=60, description="Redis connect and read timeout.")
    require_fsync: bool = Field(
        True,
        description="redis: answer only after Redis has written the change to its append-only "
        "file on disk (WAITAOF); a Redis without appendonly is then refused at the first write.",
    )
    namespace: str = Field(
        "vlgraph-store",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="redis: prefix of every key. Distinct from the cache's, so a cache reset "
        "never touches stored images.",
    )

    def resolved_data_dir(self) -> Path:
        """The absolute data folder of the sqlite backend."""
        folder = self.data_dir or Path(os.environ.get("VLGRAPH_DATA_DIR") or DEFAULT_DATA_DIR)
        return folder.expanduser().resolve()


def _env_flag(name: str) -> bool:
    return (os.environ.get(name) or "").strip().lower() in {"1", "true", "yes", "on"}


class AdminConfig(StrictModel):
    """Who may call ``/api/admin/*``. Defaults follow multi-model captioning: ``API_KEY`` and
    ``DEBUG``."""

    api_key: SecretStr | None = Field(
        default_factory=lambda: (
            SecretStr(os.environ["API_KEY"]) if os.environ.get("API_KEY") else None
        ),
        description="Key expected in X-API-Key. Unset and debug off: admin routes refuse.",
    )
    debug: bool = Field(
        default_factory=lambda: _env_flag("DEBUG"),
        description="Development only: admin routes need no key.",
    )


class PipelineConfig(StrictModel):
    """The pipeline deployment of similar image generation, which only awaits its captioner
    and generator: a sliver of a CPU and room for many requests."""

    deployment: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(
            max_ongoing_requests=128,
            max_queued_requests=256,
            request_timeout_s=DEFAULT_INGRESS_TIMEOUT_S,
            ray_actor_options=RayActorOptions(num_cpus=0.05),
        ),
        description="Ray options of the similar_image deployment; its request_timeout_s "
        "bounds the whole chain (caption, then generation).",
    )


#: Model sections at the top level of the profile rather than under ``models``.
TOP_LEVEL_MODELS = ("vqa", "clip_image", "clip_text", "sd", "sdxl")
#: Names a named model cannot take: the top-level models and the other deployments.
RESERVED_MODEL_NAMES = frozenset({*TOP_LEVEL_MODELS, "similar_image", "ingress"})


class AppConfig(StrictModel):
    """The whole application: what ``graphs.app:build_app`` receives as ``args``."""

    profile: str = Field("custom", description="Name shown by the API, e.g. offline or gpu.")
    environment: Literal["development", "production", "test"] = Field(
        default_factory=lambda: (os.environ.get("ENV") or "development").strip().lower(),
        description="ENV, as in multi-model captioning. production refuses debug mode.",
    )
    checkpoint_cache_dir: Path | None = Field(
        None,
        description="Where 'tiny:' checkpoints are built. Unset: $VLGRAPH_CACHE_DIR, else "
        f"{DEFAULT_CHECKPOINT_CACHE}.",
    )
    check_models_before_start: bool = Field(
        True,
        description="Check at build time that every model's weights can be found, failing fast "
        "with instructions. Turn off on clusters whose weights exist only on worker nodes.",
    )
    ingress: IngressConfig = Field(default_factory=IngressConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    access: AccessConfig = Field(
        default_factory=AccessConfig,
        description="API keys and rate limits of every route (docs/access.md).",
    )
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    vqa: BlipVqaConfig | None = Field(
        default_factory=BlipVqaConfig,
        description="Visual question answering (POST /question); null: not served.",
    )
    store: StoreConfig = Field(default_factory=StoreConfig)
    search: SearchConfig = Field(
        default_factory=SearchConfig,
        description="Semantic search over stored images (docs/search.md).",
    )
    clip_image: EncoderConfig | None = Field(
        default_factory=lambda: EncoderConfig(source="sentence-transformers/clip-ViT-B-32"),
        description="CLIP image encoder (POST /encode_image); null: not served.",
    )
    clip_text: EncoderConfig | None = Field(
        default_factory=lambda: EncoderConfig(
            source="sentence-transformers/clip-ViT-B-32-multilingual-v1"
        ),
        description="CLIP multilingual text encoder (POST /encode_text).",
    )
    image_fetch: ImageFetchConfig = Field(default_factory=ImageFetchConfig)
    sd: DiffusionConfig | None = Field(
        default_factory=lambda: DiffusionConfig(
            family="sd", source="stable-diffusion-v1-5/stable-diffusion-v1-5"
        ),
        description="Stable Diffusion for image generation (POST /generate); null: not served.",
    )
    sdxl: DiffusionConfig | None = Field(
        default_factory=default_sdxl,
        description="SDXL for similar image generation (GET /generate-image, the pipeline).",
    )

    similar_image: PipelineConfig = Field(
        default_factory=PipelineConfig,
        description="The caption -> generation pipeline deployment (served when a generator is).",
    )

    @model_validator(mode="after")
    def _ingress_outwaits_its_deployments(self) -> AppConfig:
        ingress = self.ingress.deployment.request_timeout_s
        for name, options in self.called_deployments().items():
            seconds = options.request_timeout_s
            if seconds > ingress:
                raise ValueError(
                    f"{name}'s deployment.request_timeout_s ({seconds}) is longer than "
                    f"ingress.deployment.request_timeout_s ({ingress}): the ingress would give "
                    "up on the request before the model's own deadline could answer it"
                )
        return self

    @model_validator(mode="after")
    def _store_outside_the_cache_namespace(self) -> AppConfig:
        if self.store.namespace == self.cache.namespace:
            raise ValueError(
                f"store.namespace and cache.namespace are both {self.store.namespace!r}: a "
                "cache reset removes every key under the cache's namespace, stored images too"
            )
        return self

    @model_validator(mode="after")
    def _search_has_its_encoders(self) -> AppConfig:
        if not self.searches():
            return self
        served = self.served_models()
        search = self.search
        for role, name in (("image", search.image_encoder), ("text", search.text_encoder)):
            model = served.get(name)
            wanted = {"image": ("clip_image",), "text": ("clip_text",)}[role]
            if model is None and role == "text":
                continue  # text queries answer 400 naming the missing encoder
            if name not in wanted and getattr(model, "task", None) != "embed":
                raise ValueError(
                    f"search.{role}_encoder {name!r} is not an embedding model of this profile"
                )
        if search.engine == "embedded" and self.store.backend != "sqlite":
            raise ValueError(
                "search.engine embedded keeps its index beside the SQLite store; with "
                "store.backend redis (several machines) use search.engine pgvector"
            )
        return self

    @model_validator(mode="after")
    def _no_debug_in_production(self) -> AppConfig:
        if self.environment == "production" and self.admin.debug:
            raise ValueError(
                "admin.debug (DEBUG=true) lets anyone reset the cache; it is refused with "
                "environment production (ENV=production)"
            )
        return self

    def served_models(self) -> dict[str, ModelFamilyConfig]:
        """Every model deployment this profile serves, by name: the captioners, then vqa and
        the CLIP encoders."""
        served: dict[str, ModelFamilyConfig] = dict(self.models.served())
        for name in TOP_LEVEL_MODELS:
            model = getattr(self, name)
            if model is not None:
                served[name] = model
        return served

    def search_engine(self) -> str | None:
        """The search engine in use: the one named, else ``embedded`` beside the SQLite store;
        None (search off) with the Redis store and no engine named."""
        if self.search.engine is not None:
            return self.search.engine
        return "embedded" if self.store.backend == "sqlite" else None

    def searches(self) -> bool:
        """Whether stored images are indexed and searched: search is enabled, its image
        encoder is served and an engine is chosen."""
        return (
            self.search.enabled
            and self.search.image_encoder in self.served_models()
            and self.search_engine() is not None
        )

    def serves_generation(self) -> bool:
        """Whether an image generator is served (and with it the similar-image pipeline)."""
        return self.sd is not None or self.sdxl is not None

    def called_deployments(self) -> dict[str, DeploymentOptions]:
        """The options of every deployment the ingress calls, by the name it calls it: each
        served model, and the similar-image pipeline when a generator is served."""
        called = {name: model.deployment for name, model in self.served_models().items()}
        if self.serves_generation():
            called["similar_image"] = self.similar_image.deployment
        return called

    def random_weight_models(self) -> list[str]:
        """Served models that are tiny checkpoints the factory leaves random (``tiny:`` sources
        of untrained families, such as SDXL): what they answer is noise."""
        return [
            name
            for name, model in self.served_models().items()
            if model.source.startswith(TINY_PREFIX)
            and not trained_on_world(model.source.removeprefix(TINY_PREFIX))
        ]

    def resolved_cache_dir(self) -> Path:
        """The absolute checkpoint cache folder."""
        return resolve_checkpoint_cache_dir(self.checkpoint_cache_dir)
