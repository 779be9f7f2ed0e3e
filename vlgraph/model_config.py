"""Typed settings of one model deployment: Ray's deployment options, batching, and one
pydantic model per model family (BLIP, BLIP VQA, GIT, the CLIP encoders, the diffusion
pipelines, the instruction-following vision-language models). :mod:`vlgraph.config` ties them
into the application's profile. Every model forbids unknown fields, so a typo in a profile
fails at build time with the field's dotted name instead of being ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vlgraph.cpu_allocator import CPU_ALLOCATOR_ENV
from vlgraph.limits import MIN_SIZE, SIZE_MULTIPLE

#: Sources of this form name a tiny random checkpoint the project writes itself.
TINY_PREFIX = "tiny:"


class StrictModel(BaseModel):
    """Base of every config model: unknown fields are errors, and defaults are validated too
    (several come from environment variables)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class RayActorOptions(StrictModel):
    """Resources of one replica (Ray's ``ray_actor_options``)."""

    num_cpus: float = Field(1.0, ge=0, description="Logical CPUs reserved per replica.")
    num_gpus: float = Field(
        0.0,
        ge=0,
        description="GPUs per replica; fractions (0.25) pack several models on one GPU. "
        "Scheduling only: each model must fit in its share of GPU memory.",
    )
    memory: int | None = Field(None, ge=0, description="Bytes of memory reserved per replica.")
    resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources, e.g. a node label."
    )
    runtime_env: dict[str, Any] = Field(
        default_factory=dict,
        description="Ray runtime_env of the replicas (env_vars, pip, remote working_dir).",
    )


class AutoscalingConfig(StrictModel):
    """Ray Serve autoscaling of one deployment."""

    min_replicas: int = Field(1, ge=0, description="0 lets the deployment scale to zero.")
    max_replicas: int = Field(1, ge=1)
    initial_replicas: int | None = Field(None, ge=0)
    target_ongoing_requests: float = Field(
        2.0, gt=0, description="Ongoing requests per replica the autoscaler aims for."
    )
    upscale_delay_s: float = Field(30.0, ge=0)
    downscale_delay_s: float = Field(600.0, ge=0)
    downscale_to_zero_delay_s: float | None = Field(None, ge=0)
    look_back_period_s: float | None = Field(
        None,
        gt=10,
        description="Window the load is averaged over (Ray's default: 30 s); more than Ray's "
        "10 s metrics interval.",
    )

    @model_validator(mode="after")
    def _bounds_are_ordered(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


class BackpressureOptions(StrictModel):
    """HTTP answer when a deployment's queue is full (Ray's ``backpressure_config``)."""

    status_code: Literal[503, 429] = Field(503, description="503 or 429.")
    retry_after_s: int = Field(1, ge=1, le=3600, description="Retry-After header, seconds.")


#: Default deadline of one call to a deployment (seconds); profiles set their own.
DEFAULT_REQUEST_TIMEOUT_S = 60.0


class DeploymentOptions(StrictModel):
    """Ray Serve options of one deployment, applied with ``.options(...)`` by the builder."""

    num_replicas: int | None = Field(
        1, ge=1, description="Fixed replica count; leave unset when autoscaling_config is set."
    )
    autoscaling_config: AutoscalingConfig | None = None
    max_ongoing_requests: int = Field(
        64,
        ge=1,
        description="Requests sent to one replica at once; caps the batch size. Keep it "
        "several batches deep: requests past it wait in the caller's router, which probes "
        "the busy replica and slows it (docs/benchmarks.md).",
    )
    max_queued_requests: int = Field(
        256,
        ge=1,
        description="Requests each caller may queue for this deployment before the excess is "
        "refused at once with backpressure_config's status and Retry-After. Always bounded: a "
        "queue without a bound turns overload into a hang.",
    )
    request_timeout_s: float = Field(
        DEFAULT_REQUEST_TIMEOUT_S,
        gt=0,
        le=3600,
        description="Longest wait for one call to this deployment, queueing included; past it "
        "the call is cancelled and the client gets 503 with Retry-After (code model_timeout; "
        "request_timeout for the ingress, whose deadline covers the whole request until its "
        "response starts). Enforced by the caller, not passed to Serve.",
    )
    backpressure_config: BackpressureOptions = Field(default_factory=BackpressureOptions)
    ray_actor_options: RayActorOptions = Field(default_factory=RayActorOptions)
    health_check_period_s: float = Field(10.0, gt=0)
    health_check_timeout_s: float = Field(30.0, gt=0)
    graceful_shutdown_timeout_s: float = Field(20.0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _autoscaling_replaces_replica_count(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("autoscaling_config") is not None:
            if data.get("num_replicas") is not None:
                raise ValueError("set either num_replicas or autoscaling_config, not both")
            data = {**data, "num_replicas": None}
        return data

    def serve_options(self, user_config: dict[str, Any] | None = None) -> dict[str, Any]:
        """The keyword arguments of ``Deployment.options`` (the request timeout is vlgraph's,
        enforced by callers, so it is left out)."""
        options = self.model_dump(exclude_none=True, exclude={"request_timeout_s"})
        if user_config is not None:
            options["user_config"] = user_config
        return options


class BatchingConfig(StrictModel):
    """``@serve.batch`` settings; applied live through ``user_config`` / ``reconfigure``."""

    max_batch_size: int = Field(8, ge=1, le=256, description="Largest batch handed to the model.")
    batch_wait_timeout_s: float = Field(
        0.01, ge=0, le=10, description="How long a partial batch waits for more requests."
    )

    def apply(self, *batched_methods: Any) -> None:
        """Set these values on ``@serve.batch`` methods of a live replica."""
        for method in batched_methods:
            method.set_max_batch_size(self.max_batch_size)
            method.set_batch_wait_timeout_s(self.batch_wait_timeout_s)


class ModelFamilyConfig(StrictModel):
    """Fields shared by every model family."""

    source: str = Field(
        description="Hugging Face Hub id, local checkpoint folder, or 'tiny:<family>' for a "
        "random checkpoint built by vlgraph's factory (offline profile and tests)."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto: float16 on CUDA, float32 on CPU."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when visible.")
    torch_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads per replica (default: torch's choice)."
    )
    tune_cpu_allocator: bool = Field(
        True,
        description="Start replicas with glibc malloc settings that stop page-fault churn of "
        "torch's activation buffers (vlgraph.cpu_allocator.CPU_ALLOCATOR_ENV).",
    )
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    deployment: DeploymentOptions = Field(default_factory=DeploymentOptions)

    @model_validator(mode="after")
    def _ongoing_requests_fit_a_batch(self) -> ModelFamilyConfig:
        if self.deployment.max_ongoing_requests < self.batching.max_batch_size:
            raise ValueError(
                "deployment.max_ongoing_requests "
                f"({self.deployment.max_ongoing_requests}) must be at least "
                f"batching.max_batch_size ({self.batching.max_batch_size}); "
                "Ray Serve would silently cap every batch at max_ongoing_requests"
            )
        return self

    def user_config(self) -> dict[str, Any]:
        """What ``reconfigure`` receives: the settings that may change without a restart."""
        return {"batching": self.batching.model_dump()}

    def serve_options(self) -> dict[str, Any]:
        """``Deployment.options`` of this model: deployment options, user_config, env vars."""
        options = self.deployment.serve_options(self.user_config())
        if self.tune_cpu_allocator:
            actor = options["ray_actor_options"]
            runtime_env = dict(actor.get("runtime_env") or {})
            # Explicit env_vars in the config win over the defaults.
            runtime_env["env_vars"] = {**CPU_ALLOCATOR_ENV, **runtime_env.get("env_vars", {})}
            actor["runtime_env"] = runtime_env
        return options


class CaptionGenerationConfig(StrictModel):
    """Decoding settings of a captioning model. Greedy by default, hence deterministic."""

    max_new_tokens: int = Field(30, ge=1, le=512)
    min_new_tokens: int = Field(0, ge=0, le=512, description="Benchmarks fix the token count.")
    num_beams: int = Field(1, ge=1, le=8)
    repetition_penalty: float = Field(1.0, gt=0)

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``generate``: these settings, greedy (``do_sample=False``)."""
        return {**self.model_dump(), "do_sample": False}

    @model_validator(mode="after")
    def _min_not_above_max(self) -> CaptionGenerationConfig:
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError("min_new_tokens must not exceed max_new_tokens")
        return self


class BlipCaptionConfig(ModelFamilyConfig):
    """BLIP image captioning; base and large are the same class, chosen by ``source``."""

    source: str = "Salesforce/blip-image-captioning-base"
    generation: CaptionGenerationConfig = Field(default_factory=CaptionGenerationConfig)


class GitCaptionConfig(ModelFamilyConfig):
    """GIT image captioning (``GitForCausalLM``): captions only, no yes/no flags."""

    source: str = "microsoft/git-base-coco"
    generation: CaptionGenerationConfig = Field(default_factory=CaptionGenerationConfig)


class AnswerGenerationConfig(CaptionGenerationConfig):
    """Decoding settings of a question-answering model: short answers, greedy."""

    max_new_tokens: int = Field(10, ge=1, le=512)


class BlipVqaConfig(ModelFamilyConfig):
    """BLIP for visual question answering with uploads (``BlipForQuestionAnswering``)."""

    source: str = "Salesforce/blip-vqa-base"
    generation: AnswerGenerationConfig = Field(default_factory=AnswerGenerationConfig)


class EncoderConfig(ModelFamilyConfig):
    """A sentence-transformers encoder of the CLIP embeddings: CLIP's image side or the
    multilingual text model aligned with it, both 512-dimensional in one space."""

    source: str = Field(
        description="Hub id, local folder or 'tiny:clip' / 'tiny:clip-multilingual'."
    )


DiffusionFamilyName = Literal["sd", "sdxl"]


class DiffusionConfig(ModelFamilyConfig):
    """A text-to-image pipeline of diffusers (image generation, similar image generation):
    Stable Diffusion (``StableDiffusionPipeline``) or SDXL (``StableDiffusionXLPipeline``),
    with the bounds that keep one request from taking the machine."""

    family: DiffusionFamilyName = Field(description="sd: Stable Diffusion 1.x; sdxl: SDXL.")
    default_steps: int = Field(25, ge=1, le=500, description="Denoising steps when not asked.")
    max_steps: int = Field(50, ge=1, le=500, description="Most steps a request may ask for.")
    default_size: int = Field(
        512,
        ge=MIN_SIZE,
        le=4096,
        multiple_of=SIZE_MULTIPLE,
        description="Height and width when not asked.",
    )
    max_height: int = Field(768, ge=MIN_SIZE, le=4096, multiple_of=SIZE_MULTIPLE)
    max_width: int = Field(768, ge=MIN_SIZE, le=4096, multiple_of=SIZE_MULTIPLE)
    size_multiple: int = Field(
        SIZE_MULTIPLE,
        ge=SIZE_MULTIPLE,
        le=128,
        multiple_of=SIZE_MULTIPLE,
        description="Heights and widths are multiples of this (8 for Stable Diffusion and "
        "SDXL: their VAE downsamples by 8; 16 for transformers on 2x2 latent patches).",
    )
    guidance_scale: float = Field(7.5, ge=0, le=50, description="Default classifier-free guidance.")
    max_guidance_scale: float = Field(20.0, ge=0, le=50)
    safety_checker: bool = Field(
        True,
        description="Run the pipeline's safety checker (Stable Diffusion): flagged images are "
        "blacked out and reported. SDXL ships without one.",
    )

    @model_validator(mode="after")
    def _defaults_within_bounds(self) -> DiffusionConfig:
        # A named model's unset fields (None) are read from its pipeline when the profile is
        # built (vlgraph.pipeline_limits), and checked again then.
        def known(*values: object) -> bool:
            return all(value is not None for value in values)

        if known(self.default_steps, self.max_steps) and self.default_steps > self.max_steps:
            raise ValueError("default_steps must not exceed max_steps")
        if known(self.default_size, self.max_height, self.max_width) and self.default_size > min(
            self.max_height, self.max_width
        ):
            raise ValueError("default_size must fit max_height and max_width")
        if (
            known(self.guidance_scale, self.max_guidance_scale)
            and self.guidance_scale > self.max_guidance_scale
        ):
            raise ValueError("guidance_scale must not exceed max_guidance_scale")
        if known(self.size_multiple):
            for field in ("default_size", "max_height", "max_width"):
                value = getattr(self, field)
                if value is not None and value % self.size_multiple:
                    raise ValueError(
                        f"{field} ({value}) must be a multiple of size_multiple "
                        f"({self.size_multiple})"
                    )
        return self


def default_sdxl() -> DiffusionConfig:
    """SDXL base 1.0 as it is meant to run: 1024 px, 30 steps, guidance 5."""
    return DiffusionConfig(
        family="sdxl",
        source="stabilityai/stable-diffusion-xl-base-1.0",
        default_size=1024,
        max_height=1024,
        max_width=1024,
        default_steps=30,
        guidance_scale=5.0,
    )


VisionLanguageFamilyName = Literal["auto", "blip2", "gemma3", "internvl"]


class VisionLanguageConfig(ModelFamilyConfig):
    """An instruction-following vision-language model (BLIP-2, Gemma 3, InternVL, or any
    image-text-to-text checkpoint with a chat template) that captions, answers yes/no flag
    questions, chats and, for multi-image families, captions a set of images."""

    family: VisionLanguageFamilyName = Field(
        "auto",
        description="auto: derived from the checkpoint (its config's model_type and chat "
        "template). A family name is checked against the checkpoint.",
    )
    caption_instruction: str | None = Field(
        "Describe this image in one sentence.",
        max_length=2000,
        description="Instruction used when a request gives no caption_prompt (None: the model's "
        "plain captioning prompt, BLIP-2 style).",
    )
    collection_instruction: str = Field(
        "Describe this set of images in one sentence.",
        max_length=2000,
        description="Instruction for one caption of several images.",
    )
    generation: CaptionGenerationConfig = Field(default_factory=CaptionGenerationConfig)


def vision_language_section(family: VisionLanguageFamilyName, source: str, **fields: Any) -> Any:
    """A profile section that defaults to ``family`` served from ``source``."""
    return Field(
        default_factory=lambda: VisionLanguageConfig(family=family, source=source, **fields)
    )
