"""The model paths the benchmarks measure, one :class:`BenchPath` each.

A path names its checkpoint family, the profile block its served app copies (from
``configs/local.yaml``, the CPU profile, so the figures measure the defaults users get), its
inputs, the HTTP request that carries one input (the same for the served app and the naive
server), and its raw in-process batched model call: the model replica's own core, built in
process without Ray (``ModelReplica.in_process``), so no inference code is written twice.
Where the profile's defaults would make the three do different work, its ``overrides`` fix it
(fixed-length generation, a replica up before timing), and the raw model and the naive
server copy the served settings (:func:`served_model`). Stateful routes get their ids from a
``prepare`` step (uploads), and a path with a target of its own measures it in ``extra`` (the
pipeline against its stages).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml
from PIL import Image

from bench.harness import REPO_ROOT, Request

PROFILE = REPO_ROOT / "configs" / "local.yaml"

#: Every generated image: side in pixels and denoising steps.
IMAGE_SIDE = 256
IMAGE_STEPS = 10


@dataclass(frozen=True)
class BenchInputs:
    """What a path's requests and raw call draw from, in request order (cycled)."""

    items: list[Any]
    folder: Path
    #: Side in pixels and denoising steps of every image generated from these inputs (the
    #: raw model, the naive server and the served app alike).
    image_side: int = IMAGE_SIDE
    image_steps: int = IMAGE_STEPS


@dataclass(frozen=True)
class BenchPath:
    """One model path: how to serve it, load it, and call the raw model."""

    name: str
    #: Checkpoint families to build (``vlgraph.tiny``), by the profile key they
    #: replace the source of (``models.blip``, ``clip_image``, ...).
    checkpoints: dict[str, str]
    #: Make ``count`` inputs under ``folder``.
    make_inputs: Callable[[int, Path], list[Any]]
    #: The request that carries input ``index``.
    request: Callable[[BenchInputs, int], Request]
    #: Raw in-process throughput: (checkpoints, inputs, batch) -> {"items_per_s", ...}.
    raw: Callable[[dict[str, Path], BenchInputs, int], dict[str, Any]] | None
    #: The profile block whose ``batching.max_batch_size`` is the raw batch.
    batch_from: str
    #: Result cache of the served app: "none" (every request reaches the model) or "memory".
    cache: str = "none"
    #: Concurrency levels when none are given (slow paths stop earlier).
    default_levels: tuple[int, ...] = (1, 4, 16, 64)
    #: Requests per level: ``max(minimum, factor x concurrency)``.
    requests_factor: int = 4
    requests_minimum: int = 16
    #: Settings merged into the kept profile blocks, by profile key (nested dicts key by key;
    #: ``None`` replaces): fixed-length generation, one replica up before timing.
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Before a sweep: (base URL, inputs) -> the inputs its requests carry (uploaded ids).
    prepare: Callable[[str, BenchInputs], BenchInputs] | None = None
    #: After the served sweep: (served URL, inputs) -> figures kept under ``report["extra"]``.
    extra: Callable[[str, BenchInputs], dict[str, Any]] | None = None


# ---- fixed work: the raw model, the naive server and the served app do the same

#: Fixed-length outputs: random weights stop at random lengths, the min equal to the max
#: makes every row of every call generate exactly this many tokens.
BLIP_CAPTION_TOKENS = {"max_new_tokens": 20, "min_new_tokens": 20}
VQA_TOKENS = {"max_new_tokens": 10, "min_new_tokens": 10}
VLM_TOKENS = {"max_new_tokens": 16, "min_new_tokens": 16}
#: One replica from the start instead of autoscaling from zero: it is up before timing.
ONE_REPLICA = {"deployment": {"num_replicas": 1, "autoscaling_config": None}}
#: One question for every image: one token length, so every batch is one group.
QUESTION = "what is in the picture?"
#: The pipeline's stages are timed on this many images (at concurrency 1).
STAGE_SAMPLES = 4
#: The issue's target: pipeline latency at most this times the sum of its stages alone.
PIPELINE_TARGET = 1.05


@dataclass(frozen=True)
class ImageQuestion:
    """A question about an image; ``image_id`` once the image is uploaded to a server."""

    image: bytes
    question: str
    image_id: str | None = None


# ---- inputs


def photo_jpegs(count: int, folder: Path) -> list[bytes]:
    """``count`` distinct 640x480 JPEGs of noise (photo-sized, decoded as photos are)."""
    rng = np.random.default_rng(0)
    images = []
    for index in range(count):
        pixels = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        (folder / f"bench{index}.jpg").write_bytes(buffer.getvalue())
        images.append(buffer.getvalue())
    return images


SENTENCES = [
    "a dog running on the beach at sunset",
    "un chat qui dort sur un canapé rouge",
    "ein Fahrrad lehnt an einer alten Mauer",
    "a bowl of ramen with an egg and green onions",
    "una ciudad iluminada de noche vista desde un avión",
    "two children flying a kite in a green park",
    "a lighthouse on a rocky coast under a stormy sky",
    "東京の夜の交差点を歩く人々",
]


def sentences(count: int, folder: Path) -> list[str]:
    """``count`` distinct sentences in several languages (the text encoder is multilingual)."""
    return [f"{SENTENCES[index % len(SENTENCES)]} ({index})" for index in range(count)]


def image_questions(count: int, folder: Path) -> list[ImageQuestion]:
    """``count`` photo-sized JPEGs, each with the same question."""
    return [ImageQuestion(data, QUESTION) for data in photo_jpegs(count, folder)]


# ---- raw in-process models


def _timed_batches(items: list[Any], batch: int, call: Callable[[list[Any]], Any]) -> dict:
    """Warm up with one full batch, then time ``call`` over every batch of ``items``."""
    call(items[:batch])
    started = time.perf_counter()
    for start in range(0, len(items), batch):
        call(items[start : start + batch])
    elapsed = time.perf_counter() - started
    return {
        "items": len(items),
        "batch": batch,
        "seconds": elapsed,
        "items_per_s": len(items) / elapsed,
    }


def raw_clip_image(checkpoints: dict[str, Path], inputs: BenchInputs, batch: int) -> dict:
    """Decode the JPEGs and encode them as the image encoder's replica does, in batches."""
    settings = served_model("clip_image", "clip_image", checkpoints)
    return _timed_batches(inputs.items, batch, clip_encode_call(settings, "image", "clip_image"))


def raw_clip_text(checkpoints: dict[str, Path], inputs: BenchInputs, batch: int) -> dict:
    """Encode the sentences as the text encoder's replica does, in batches."""
    settings = served_model("clip_text", "clip_text", checkpoints)
    return _timed_batches(inputs.items, batch, clip_encode_call(settings, "text", "clip_text"))


def raw_cache_lookup(checkpoints: dict[str, Path], inputs: BenchInputs, batch: int) -> dict:
    """The cache's own cost: key (sha256 of the image) and a hit in the in-process backend."""
    from vlgraph.cache import make_result_cache
    from vlgraph.config import CacheConfig

    cache = make_result_cache(CacheConfig(backend="memory"))
    assert cache is not None
    keys = [cache.image_key(data, "blip", {}) for data in inputs.items]
    for key in keys:
        asyncio.run(cache.put(key, {"caption": "cached", "flagged": False}))

    async def lookups(jpegs: list[bytes]) -> None:
        for data in jpegs:
            assert await cache.get(cache.image_key(data, "blip", {})) is not None

    return _timed_batches(inputs.items, batch, lambda jpegs: asyncio.run(lookups(jpegs)))


def raw_blip_caption(checkpoints: dict[str, Path], inputs: BenchInputs, batch: int) -> dict:
    """Decode the JPEGs and caption them with BLIP's ``generate`` as served, in batches."""
    caption = blip_caption_call(served_model("blip_caption", "models.blip", checkpoints))
    return _timed_batches(inputs.items, batch, caption)


def raw_blip_vqa(checkpoints: dict[str, Path], inputs: BenchInputs, batch: int) -> dict:
    """Decode the JPEGs and answer their questions with BLIP VQA as served, in batches."""
    answer = blip_vqa_call(served_model("blip_vqa", "vqa", checkpoints))
    return _timed_batches(inputs.items, batch, answer)


def raw_vlm(checkpoints: dict[str, Path], inputs: BenchInputs, batch: int) -> dict:
    """Decode the JPEGs and caption them with InternVL's family prompt as served, in batches."""
    caption = vlm_caption_call(served_model("vlm", "models.intern_vlm", checkpoints))
    return _timed_batches(inputs.items, batch, caption)


def raw_diffusion(checkpoints: dict[str, Path], inputs: BenchInputs, batch: int) -> dict:
    """Generate an image per description (seed: its index) as served, in batches, PNGs out."""
    generate = diffusion_call(served_model("diffusion", "sd", checkpoints))
    seeded = list(enumerate(inputs.items))

    def run(rows: list[tuple[int, str]]) -> list[bytes]:
        seeds, prompts = zip(*rows, strict=True)
        side = inputs.image_side
        return generate(list(prompts), list(seeds), side, side, inputs.image_steps)

    return _timed_batches(seeded, batch, run)


# ---- model calls: the replicas' own core, in process (raw: a batch per call; naive: one item)

#: The replicas built in process read their checkpoint from ``settings.source`` (a folder);
#: the checkpoint cache is never used.
_NO_CACHE = "bench-unused"


def served_model(path_name: str, key: str, checkpoints: dict[str, Path]) -> Any:
    """The validated settings the benchmark's served app gives model ``key`` on path
    ``path_name`` (profile block, the path's overrides, its checkpoint): what the raw model
    and the naive server copy, so that all three do the same work."""
    config = bench_app_config(PATHS[path_name], checkpoints, Path("bench-unused"))
    return model_config(config, key)


def _values(results: list[Any], field: str) -> list[Any]:
    """Each result's ``field``; a benchmark stops at the first per-item error."""
    for result in results:
        if result.error is not None:
            raise RuntimeError(f"{result.error.code}: {result.error.message}")
    return [getattr(result, field) for result in results]


def blip_caption_call(settings: Any, name: str = "blip") -> Callable[[list[bytes]], list[str]]:
    """BLIP captioning as its replica runs it (``BlipCaptioner.caption_now``, built in process,
    on the caller's thread): decode, processor, ``generate`` with the served settings; one
    call captions a list of JPEGs together."""
    from deployments.blip_caption import BlipCaptioner
    from vlgraph.messages import CaptionRequest

    captioner = BlipCaptioner.in_process(settings, _NO_CACHE, name)

    def caption(jpegs: list[bytes]) -> list[str]:
        requests = [CaptionRequest(image=data) for data in jpegs]
        return _values(captioner.caption_now(requests), "caption")

    return caption


def blip_vqa_call(settings: Any) -> Callable[[list[ImageQuestion]], list[str]]:
    """BLIP question answering as its replica runs it (``BlipQuestionAnswerer.answer_now``,
    in process): decode, questions grouped by token length, ``generate``; one call answers a
    list."""
    from deployments.blip_vqa import BlipQuestionAnswerer
    from vlgraph.messages import QuestionRequest

    answerer = BlipQuestionAnswerer.in_process(settings, _NO_CACHE, "vqa")

    def answer(items: list[ImageQuestion]) -> list[str]:
        requests = [QuestionRequest(image=item.image, question=item.question) for item in items]
        return _values(answerer.answer_now(requests), "answer")

    return answer


def vlm_caption_call(settings: Any, name: str = "vlm") -> Callable[[list[bytes]], list[str]]:
    """A vision-language captioner as its replica runs it (``VisionLanguageCaptioner
    .caption_now``, in process): the family's loader, prompt (the profile's caption
    instruction) and decoding; one call captions a list."""
    from deployments.vlm_caption import VisionLanguageCaptioner
    from vlgraph.messages import CaptionRequest

    captioner = VisionLanguageCaptioner.in_process(settings, _NO_CACHE, name)

    def caption(jpegs: list[bytes]) -> list[str]:
        requests = [CaptionRequest(image=data) for data in jpegs]
        return _values(captioner.caption_now(requests), "caption")

    return caption


DiffusionCall = Callable[[list[str], list[int], int, int, int], list[bytes]]


def diffusion_call(settings: Any, name: str = "sd") -> DiffusionCall:
    """Stable Diffusion as its replica runs it (``DiffusionGenerator.generate_now``, in
    process: safety checker as configured, a generator per seed), called on (prompts, seeds,
    width, height, steps) with the configured guidance; PNG bytes out."""
    from deployments.diffusion import DiffusionGenerator
    from vlgraph.messages import GenerationRequest

    generator = DiffusionGenerator.in_process(settings, _NO_CACHE, name)

    def generate(
        prompts: list[str], seeds: list[int], width: int, height: int, steps: int
    ) -> list[bytes]:
        requests = [
            GenerationRequest(
                prompt=prompt,
                negative_prompt=None,
                height=height,
                width=width,
                steps=steps,
                guidance_scale=settings.guidance_scale,
                seed=seed,
            )
            for prompt, seed in zip(prompts, seeds, strict=True)
        ]
        return _values(generator.generate_now(requests), "image_png")

    return generate


def clip_encode_call(settings: Any, modality: str, name: str) -> Callable[[list[Any]], Any]:
    """A CLIP encoder as its replica runs it (``SentenceEncoder.encode_now``, in process):
    JPEG bytes (decoded there) or texts in, one vector per item out."""
    from deployments.clip_encoder import SentenceEncoder
    from vlgraph.messages import EncodeRequest

    encoder = SentenceEncoder.in_process(settings, _NO_CACHE, name, modality)

    def encode(items: list[Any]) -> list[tuple[float, ...]]:
        requests = [EncodeRequest(item=item) for item in items]
        return _values(encoder.encode_now(requests), "embedding")

    return encode


# ---- requests


def encode_image_request(inputs: BenchInputs, index: int) -> Request:
    data = inputs.items[index % len(inputs.items)]
    body = {"image_b64": base64.b64encode(data).decode()}
    return Request("POST", "/encode_image", {"json": body})


def encode_text_request(inputs: BenchInputs, index: int) -> Request:
    body = {"text": inputs.items[index % len(inputs.items)]}
    return Request("POST", "/encode_text", {"json": body})


def caption_upload_request(inputs: BenchInputs, index: int, model: str = "blip") -> Request:
    data = inputs.items[index % len(inputs.items)]
    return Request(
        "POST",
        "/api/caption-images",
        {"params": {"model": model}, "files": [("images", (f"{index}.jpg", data, "image/jpeg"))]},
    )


def vlm_caption_request(inputs: BenchInputs, index: int) -> Request:
    return caption_upload_request(inputs, index, "intern_vlm")


def upload_images(url: str, inputs: BenchInputs) -> BenchInputs:
    """``POST /upload`` each image once (visual question answering): inputs with ``image_id``."""
    uploaded = []
    with httpx.Client(base_url=url, timeout=1800) as client:
        for index, item in enumerate(inputs.items):
            files = {"image": (f"{index}.jpg", item.image, "image/jpeg")}
            answer = client.post("/upload", files=files).raise_for_status().json()
            uploaded.append(dataclasses.replace(item, image_id=answer["image_id"]))
    return dataclasses.replace(inputs, items=uploaded)


def question_request(inputs: BenchInputs, index: int) -> Request:
    item = inputs.items[index % len(inputs.items)]
    return Request(
        "POST", "/question", {"json": {"image_id": item.image_id, "question": item.question}}
    )


def generation_fields(inputs: BenchInputs, seed: int) -> dict[str, Any]:
    """The generation settings every diffusion request sends (the model's defaults else)."""
    return {
        "model": "sd",
        "width": inputs.image_side,
        "height": inputs.image_side,
        "num_inference_steps": inputs.image_steps,
        "seed": seed,
    }


def generate_request(inputs: BenchInputs, index: int) -> Request:
    description = inputs.items[index % len(inputs.items)]
    return Request(
        "POST",
        "/generate",
        {"json": {"description": description, **generation_fields(inputs, index)}},
    )


def similar_image_request(inputs: BenchInputs, index: int) -> Request:
    data = inputs.items[index % len(inputs.items)]
    fields = {key: str(value) for key, value in generation_fields(inputs, index).items()}
    return Request(
        "POST",
        "/api/similar-image",
        {"data": fields, "files": [("image", (f"{index}.jpg", data, "image/jpeg"))]},
    )


def caption_prompt(caption: str) -> str:
    """The prompt the pipeline makes of a caption (``graphs/similar_image.py``)."""
    from vlgraph.config import IngressConfig

    return caption.strip()[: IngressConfig().max_prompt_chars] or "an image"


def pipeline_stages(url: str, inputs: BenchInputs) -> dict[str, Any]:
    """The pipeline's target: its latency at most 1.05 x the sum of its two stages alone.

    On the same served app, at concurrency 1, for each of the first images in turn: the
    caption alone (``POST /api/caption-images?model=blip``), the generation alone from that
    caption (``POST /generate``, same size, steps and seed), then the whole pipeline
    (``POST /api/similar-image``); the p50 of each."""
    timings: dict[str, list[float]] = {"caption": [], "generate": [], "pipeline": []}
    with httpx.Client(base_url=url, timeout=1800) as client:
        for index in range(min(STAGE_SAMPLES, len(inputs.items))):
            answer = _timed(client, caption_upload_request(inputs, index), timings["caption"])
            body = {"description": caption_prompt(answer["results"][0]["caption"])}
            generation = Request(
                "POST", "/generate", {"json": {**body, **generation_fields(inputs, index)}}
            )
            _timed(client, generation, timings["generate"])
            _timed(client, similar_image_request(inputs, index), timings["pipeline"])
    p50 = {stage: statistics.median(seconds) for stage, seconds in timings.items()}
    stages_sum = p50["caption"] + p50["generate"]
    return {
        "stages": {
            "concurrency": 1,
            "samples": len(timings["pipeline"]),
            "caption_p50_s": round(p50["caption"], 4),
            "generate_p50_s": round(p50["generate"], 4),
            "stages_sum_p50_s": round(stages_sum, 4),
            "pipeline_p50_s": round(p50["pipeline"], 4),
            "pipeline_over_sum": round(p50["pipeline"] / stages_sum, 3),
            "target": PIPELINE_TARGET,
            "met": p50["pipeline"] <= PIPELINE_TARGET * stages_sum,
        }
    }


def _timed(client: httpx.Client, request: Request, seconds: list[float]) -> Any:
    """Send ``request``, append its latency to ``seconds``; the JSON answer (2xx only)."""
    started = time.perf_counter()
    response = client.request(request.method, request.path, **request.options)
    seconds.append(time.perf_counter() - started)
    return response.raise_for_status().json()


PATHS: dict[str, BenchPath] = {
    path.name: path
    for path in (
        BenchPath(
            name="clip_image",
            checkpoints={"clip_image": "clip"},
            make_inputs=photo_jpegs,
            request=encode_image_request,
            raw=raw_clip_image,
            batch_from="clip_image",
        ),
        BenchPath(
            name="clip_text",
            checkpoints={"clip_text": "clip-multilingual"},
            make_inputs=sentences,
            request=encode_text_request,
            raw=raw_clip_text,
            batch_from="clip_text",
        ),
        BenchPath(
            # Multi-model captioning's cached captions: every timed request is a hit (the
            # warm-up captioned each image once); naive: the original multi-model captioning
            # service's handler, an in-process dict.
            name="cache_hit",
            checkpoints={"models.blip": "blip-caption"},
            make_inputs=photo_jpegs,
            request=caption_upload_request,
            raw=raw_cache_lookup,
            batch_from="models.blip",
            cache="memory",
            default_levels=(1, 4, 16),
            requests_factor=16,
            requests_minimum=64,
        ),
        BenchPath(
            # BLIP captioning by path and multi-model captioning: every request reaches BLIP
            # (no cache), fixed-length.
            name="blip_caption",
            checkpoints={"models.blip": "blip-caption"},
            make_inputs=photo_jpegs,
            request=caption_upload_request,
            raw=raw_blip_caption,
            batch_from="models.blip",
            requests_factor=2,
            requests_minimum=8,
            overrides={"models.blip": {"generation": BLIP_CAPTION_TOKENS}},
        ),
        BenchPath(
            # Visual question answering: POST /question about images uploaded once before
            # the sweep.
            name="blip_vqa",
            checkpoints={"vqa": "blip-vqa"},
            make_inputs=image_questions,
            request=question_request,
            raw=raw_blip_vqa,
            batch_from="vqa",
            requests_factor=2,
            requests_minimum=8,
            overrides={"vqa": {"generation": VQA_TOKENS}},
            prepare=upload_images,
        ),
        BenchPath(
            # Multi-model captioning's VLM captions: InternVL3-1B size, its replica up from
            # the start.
            name="vlm",
            checkpoints={"models.intern_vlm": "internvl"},
            make_inputs=photo_jpegs,
            request=vlm_caption_request,
            raw=raw_vlm,
            batch_from="models.intern_vlm",
            default_levels=(1, 4, 16),
            requests_factor=2,
            requests_minimum=4,
            overrides={"models.intern_vlm": {"generation": VLM_TOKENS, **ONE_REPLICA}},
        ),
        BenchPath(
            # Image generation, POST /generate: Stable Diffusion 1.5 size, 256 px, 10 steps.
            name="diffusion",
            checkpoints={"sd": "sd"},
            make_inputs=sentences,
            request=generate_request,
            raw=raw_diffusion,
            batch_from="sd",
            default_levels=(1, 4, 16),
            requests_factor=2,
            requests_minimum=4,
            overrides={"sd": ONE_REPLICA},
        ),
        BenchPath(
            # Similar image generation's chain, BLIP caption -> Stable Diffusion: its target
            # is against its own stages (``extra``), no raw model.
            name="pipeline",
            checkpoints={"models.blip": "blip-caption", "sd": "sd"},
            make_inputs=photo_jpegs,
            request=similar_image_request,
            raw=None,
            batch_from="sd",
            default_levels=(1, 4, 16),
            requests_factor=2,
            requests_minimum=4,
            overrides={"models.blip": {"generation": BLIP_CAPTION_TOKENS}, "sd": ONE_REPLICA},
            extra=pipeline_stages,
        ),
    )
}


# ---- the served app


def profile_block(args: dict[str, Any], key: str) -> dict[str, Any]:
    """The block at dotted ``key`` of the profile's ``args``."""
    block = args
    for part in key.split("."):
        block = block[part]
    return block


def local_profile_args() -> dict[str, Any]:
    """``configs/local.yaml``'s application args."""
    (application,) = yaml.safe_load(PROFILE.read_text())["applications"]
    return application["args"]


def merged(block: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``block`` with ``override`` merged in, nested dicts key by key; neither is changed."""
    result = dict(block)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def bench_app_config(
    path: BenchPath, checkpoints: dict[str, Path], folder: Path, threads: int | None = None
) -> Any:
    """The local profile with only this path's models, each on its benchmark checkpoint with
    the path's overrides and ``threads`` torch threads (``None``: torch's choice); the other
    models off; the path's cache setting."""
    return shared_app_config([path], checkpoints, folder, threads)


def can_share_app(first: BenchPath, second: BenchPath) -> bool:
    """Whether one served app can carry both paths as each alone would: the same cache, and
    every model both serve on the same checkpoint family with the same overrides."""
    return first.cache == second.cache and all(
        first.checkpoints[key] == second.checkpoints[key]
        and first.overrides.get(key) == second.overrides.get(key)
        for key in first.checkpoints.keys() & second.checkpoints.keys()
    )


def shared_apps(paths: list[BenchPath]) -> list[list[BenchPath]]:
    """``paths`` in groups that can each be one served app (:func:`can_share_app` for every
    pair), in order: each path joins the first group it fits."""
    groups: list[list[BenchPath]] = []
    for path in paths:
        group = next((g for g in groups if all(can_share_app(path, p) for p in g)), None)
        if group is None:
            groups.append([path])
        else:
            group.append(path)
    return groups


def shared_app_config(
    paths: list[BenchPath],
    checkpoints: dict[str, Path],
    folder: Path,
    threads: int | None = None,
) -> Any:
    """:func:`bench_app_config` for the models of every path in ``paths`` at once (they must
    share an app, :func:`can_share_app`): the local profile with only their models, each on
    its checkpoint in ``checkpoints`` (by profile key) with its path's overrides."""
    from vlgraph.config import TOP_LEVEL_MODELS, AppConfig

    for index, path in enumerate(paths):
        for other in paths[:index]:
            if not can_share_app(path, other):
                raise ValueError(f"{path.name} and {other.name} cannot share one served app")
        unknown = set(path.overrides) - set(path.checkpoints)
        if unknown:
            raise ValueError(f"{path.name}: overrides of models it does not serve: {unknown}")
    overrides = {key: path.overrides.get(key, {}) for path in paths for key in path.checkpoints}
    args = local_profile_args()
    kept = {key: profile_block(args, key) for key in overrides}
    for name in args["models"]:
        args["models"][name] = None
    for name in TOP_LEVEL_MODELS:
        args[name] = None
    for key, block in kept.items():
        block = {
            **merged(block, overrides[key]),
            "source": str(checkpoints[key]),
            "torch_threads": threads,
        }
        parent, _, leaf = key.rpartition(".")
        (profile_block(args, parent) if parent else args)[leaf] = block
    if args["models"].get("blip") is None:
        # The ingress needs a BLIP captioner; a tiny one costs nothing while idle.
        args["models"]["blip"] = {
            "source": "tiny:blip-caption",
            "device": "cpu",
            "deployment": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.05}},
        }
    args.update(
        profile="bench",
        cache={"backend": paths[0].cache},
        store={"backend": "sqlite", "data_dir": str(folder / "data")},
        ingress={**args["ingress"], "image_root": str(folder)},
    )
    return AppConfig.model_validate(args)


def model_config(config: Any, key: str) -> Any:
    """The validated model settings at dotted ``key`` of an app config."""
    block = config
    for part in key.split("."):
        block = getattr(block, part)
    return block


def raw_batch(path: BenchPath, config: Any) -> int:
    """The served max_batch_size of the path's main model: the raw model's batch too."""
    return model_config(config, path.batch_from).batching.max_batch_size
