"""The text-to-image generator class in-process (no Ray), on tiny SD and SDXL pipelines and on
the pipelines profiles name themselves (family ``auto``: tiny SD 3 and PixArt-Sigma):
seeds reproduce images, the service gives the pipeline's own pixels, batches equal single calls,
streams report every step and stop when their consumer leaves, bounds are enforced per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    AutoPipelineForText2Image,
    PixArtSigmaPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from PIL import Image

from deployments.diffusion import (
    DiffusionGenerator,
    GenerationEvent,
    GenerationRequest,
    GenerationResult,
    GenerationTimedOut,
    partial_image_steps,
)
from vlgraph.config import DiffusionConfig, GenerationModelConfig
from vlgraph.pipeline_limits import read_pipeline_limits, with_pipeline_limits
from vlgraph.tiny import ensure_checkpoint

#: The built-in families, then tiny checkpoints served as named generators (family auto).
PIPELINES = {
    "sd": StableDiffusionPipeline,
    "sdxl": StableDiffusionXLPipeline,
    "sd3": StableDiffusion3Pipeline,
    "pixart": PixArtSigmaPipeline,
}
FAMILIES = list(PIPELINES)
NAMED = {"sd3", "pixart"}
SCHEDULERS = {
    "sd": "PNDMScheduler",
    "sdxl": "EulerDiscreteScheduler",
    "sd3": "FlowMatchEulerDiscreteScheduler",
    "pixart": "DPMSolverMultistepScheduler",
}
#: What the server passes a PixArt pipeline so that it draws the prompt as sent at the size
#: asked (no caption cleaning, no binning to its trained aspect ratios).
PIPELINE_OPTIONS = {"pixart": {"clean_caption": False, "use_resolution_binning": False}}
MAX_STEPS = 50


def _config(family: str, checkpoint_cache: Path, **fields: Any) -> DiffusionConfig:
    bounds = {
        "source": f"tiny:{family}",
        "device": "cpu",
        "default_steps": 2,
        "max_steps": MAX_STEPS,
        "default_size": 64,
        "max_height": 128,
        "max_width": 128,
        **fields,
    }
    if family not in NAMED:
        return DiffusionConfig(family=family, **bounds)
    named = GenerationModelConfig(task="generate", **bounds)
    limits = read_pipeline_limits(ensure_checkpoint(family, checkpoint_cache), family)
    return with_pipeline_limits(named, limits, family)


def _family(generator: DiffusionGenerator) -> str:
    return generator._name.removesuffix("-test")


def _request(prompt: str = "a red car on the street", **fields: Any) -> GenerationRequest:
    values: dict[str, Any] = {
        "negative_prompt": None,
        "height": 64,
        "width": 64,
        "steps": 2,
        "guidance_scale": 7.5,
        "seed": 1,
    }
    return GenerationRequest(prompt=prompt, **(values | fields))


def _pixels(result: GenerationResult) -> np.ndarray:
    assert result.error is None, result.error
    return np.asarray(Image.open(io.BytesIO(result.image_png)).convert("RGB")).astype(int)


def _assert_same_image_up_to_batching(batched: GenerationResult, single: GenerationResult) -> None:
    """A row of a batched call against the same request alone: equal up to one level.

    CPU float32 kernels (oneDNN convolutions, GEMM, attention) pick their blocking by batch
    size, so one row's activations differ in the last bits between batch sizes (measured on
    the tiny pipelines: text encoder 5e-7, UNet 1e-6, VAE 1e-5); a few pixels then round to the
    neighbouring 8-bit value. Calls with the same batch composition are bit-exact.
    """
    assert batched.seed == single.seed and batched.nsfw == single.nsfw
    assert np.abs(_pixels(batched) - _pixels(single)).max() <= 1


@pytest.fixture(scope="module", params=FAMILIES)
def generator(request: pytest.FixtureRequest, checkpoint_cache: Path) -> DiffusionGenerator:
    family = request.param
    config = _config(family, checkpoint_cache)
    return DiffusionGenerator(config, str(checkpoint_cache), f"{family}-test")


def test_tiny_checkpoints_are_small_and_load_through_the_auto_pipeline(
    checkpoint_cache: Path,
) -> None:
    for family, pipeline_class in PIPELINES.items():
        folder = ensure_checkpoint(family, checkpoint_cache)
        size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
        assert size < 2_000_000
        AutoPipelineForText2Image.from_pretrained(folder)  # imports the model code once
        started = time.perf_counter()
        pipe = AutoPipelineForText2Image.from_pretrained(folder)
        assert time.perf_counter() - started < 2
        assert type(pipe) is pipeline_class
        assert type(pipe.scheduler).__name__ == SCHEDULERS[family]
        if family == "sd":
            assert type(pipe.safety_checker).__name__ == "StableDiffusionSafetyChecker"
        if family == "sdxl":
            assert pipe.unet.config.addition_embed_type == "text_time"


def test_seed_and_prompt_decide_the_image(generator: DiffusionGenerator) -> None:
    first, again, other_seed, other_prompt = (
        generator.generate_now([request])[0]
        for request in (
            _request(),
            _request(),
            _request(seed=2),
            _request("two dogs in a green field"),
        )
    )
    assert first.seed == 1 and other_seed.seed == 2
    assert np.array_equal(_pixels(first), _pixels(again))
    assert not np.array_equal(_pixels(first), _pixels(other_seed))
    assert not np.array_equal(_pixels(first), _pixels(other_prompt))
    assert _pixels(first).shape == (64, 64, 3)


@pytest.mark.parametrize("negative_prompt", [None, "blurry"])
def test_served_image_is_the_pipelines_own(
    generator: DiffusionGenerator, checkpoint_cache: Path, negative_prompt: str | None
) -> None:
    request = _request(negative_prompt=negative_prompt, width=96, steps=3, seed=7)
    served = generator.generate_now([request])[0]

    family = _family(generator)
    folder = ensure_checkpoint(family, checkpoint_cache)
    pipe = PIPELINES[family].from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)

    def reference():
        return pipe(
            prompt=request.prompt,
            # as the server calls it: PixArt's default negative prompt is "", not None
            **({} if negative_prompt is None else {"negative_prompt": negative_prompt}),
            height=request.height,
            width=request.width,
            num_inference_steps=request.steps,
            guidance_scale=request.guidance_scale,
            generator=torch.Generator().manual_seed(request.seed),
            output_type="pil",
            **PIPELINE_OPTIONS.get(family, {}),
        )

    # On the replica's model thread, whose torch thread count the float results depend on
    # (torch sets intra-op threads per calling thread; other tests change the main thread's).
    output = generator._model_thread.call(reference)
    assert np.array_equal(_pixels(served), np.asarray(output.images[0]).astype(int))


def test_batch_equals_single_calls(
    generator: DiffusionGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = [
        _request("a red car on the street", seed=1),
        _request("a cat", seed=2, height=96),
        _request("two dogs in a green field", seed=3),
        _request("a cat", seed=2, negative_prompt="blue"),
        _request("a house near the water", seed=4, height=96),
        _request("a tree", seed=5, negative_prompt="people"),
    ]
    singles = [generator.generate_now([request])[0] for request in requests]

    group_sizes: list[int] = []
    run = generator._run

    def counting_run(
        group: list[GenerationRequest], *args: Any, **kwargs: Any
    ) -> list[GenerationResult]:
        group_sizes.append(len(group))
        return run(group, *args, **kwargs)

    monkeypatch.setattr(generator, "_run", counting_run)
    batched = generator.generate_now(requests)
    # One call per (size, steps, guidance, has negative prompt): 64 px plain, 96 px, negative.
    assert sorted(group_sizes) == [2, 2, 2]
    for one_of_batch, single in zip(batched, singles, strict=True):
        _assert_same_image_up_to_batching(one_of_batch, single)


def test_stream_reports_each_step_then_the_image(generator: DiffusionGenerator) -> None:
    request = _request(steps=3, seed=5)

    async def collect() -> list[GenerationEvent]:
        return [event async for event in generator.generate_stream(request)]

    events = asyncio.run(collect())
    assert [(event.kind, event.step, event.total_steps) for event in events[:-1]] == [
        ("step", 1, 3),
        ("step", 2, 3),
        ("step", 3, 3),
    ]
    assert events[-1].kind == "image"
    assert events[-1].result == generator.generate_now([request])[0]


@pytest.mark.parametrize(
    ("steps", "count", "expected"),
    [(4, 2, {1, 2}), (20, 3, {5, 10, 15}), (20, 2, {6, 13}), (3, 3, {1, 2}), (1, 3, set())],
)
def test_partial_images_are_evenly_spaced_before_the_last_step(
    steps: int, count: int, expected: set[int]
) -> None:
    assert partial_image_steps(steps, count) == expected
    assert partial_image_steps(steps, 0) == set()


def test_stream_sends_partial_images_that_approach_the_unchanged_final_image(
    generator: DiffusionGenerator,
) -> None:
    """At the steps and guidance the tiny models were trained for, each partial image is
    closer to the final one than the one before: they are the denoising under way."""
    request = _request(
        "a red circle on a white background",
        steps=20,
        guidance_scale=2.0,
        width=96,
        seed=3,
        partial_images=3,
    )

    async def collect() -> list[GenerationEvent]:
        return [event async for event in generator.generate_stream(request)]

    events = asyncio.run(collect())
    assert [event.step for event in events if event.kind == "step"] == list(range(1, 21))
    partials = [event for event in events if event.kind == "partial_image"]
    assert [(event.step, event.partial_image_index) for event in partials] == [
        (5, 0),
        (10, 1),
        (15, 2),
    ]
    for partial in partials:  # each right after its step's event
        assert events[events.index(partial) - 1].step == partial.step
    assert events[-1].kind == "image"
    final = events[-1].result
    assert final == generator.generate_now([dataclasses.replace(request, partial_images=0)])[0]
    images = [_pixels(GenerationResult(image_png=event.image_png)) for event in partials]
    assert all(image.shape == (64, 96, 3) for image in images)
    distances = [np.abs(image - _pixels(final)).mean() for image in images]
    assert distances[0] > distances[1] > distances[2] > 0, distances


@pytest.mark.parametrize("how", ["close", "cancel"])
def test_a_stream_left_early_stops_the_pipeline(
    generator: DiffusionGenerator, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    scheduler = generator._pipe.scheduler
    step = scheduler.step
    calls = 0

    def slow_step(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        time.sleep(0.05)  # the whole request would take 2.5 s
        return step(*args, **kwargs)

    monkeypatch.setattr(scheduler, "step", slow_step)
    request = _request(steps=MAX_STEPS)

    async def leave_after_two_steps() -> list[GenerationEvent]:
        seen: list[GenerationEvent] = []
        if how == "close":
            stream = generator.generate_stream(request)
            seen += [await anext(stream), await anext(stream)]
            await stream.aclose()
            return seen
        two_seen = asyncio.Event()

        async def consume() -> None:
            async for event in generator.generate_stream(request):
                seen.append(event)
                if len(seen) == 2:
                    two_seen.set()

        task = asyncio.create_task(consume())
        await two_seen.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return seen

    seen = asyncio.run(leave_after_two_steps())
    generator._model_thread.call(lambda: None)  # wait until the model thread is idle
    assert [event.step for event in seen] == [1, 2]
    assert 2 <= calls <= 10
    monkeypatch.undo()
    assert generator.generate_now([_request()])[0].error is None


def test_nsfw_is_reported_only_where_a_checker_runs(
    generator: DiffusionGenerator, checkpoint_cache: Path
) -> None:
    result = generator.generate_now([_request()])[0]
    if _family(generator) != "sd":
        assert result.nsfw is None
        return
    assert result.nsfw is False
    unchecked = DiffusionGenerator(
        _config("sd", checkpoint_cache, safety_checker=False), str(checkpoint_cache), "sd-unchecked"
    )
    plain = unchecked.generate_now([_request()])[0]
    assert plain.nsfw is None
    assert np.array_equal(_pixels(plain), _pixels(result))


def test_the_tiny_safety_checker_can_flag(generator: DiffusionGenerator) -> None:
    if _family(generator) != "sd":
        pytest.skip("only Stable Diffusion ships a safety checker")
    thresholds = generator._pipe.safety_checker.concept_embeds_weights
    saved = thresholds.clone()
    try:
        with torch.no_grad():
            thresholds.fill_(-1.0)  # every cosine similarity is above -1
        flagged = generator.generate_now([_request()])[0]
    finally:
        with torch.no_grad():
            thresholds.copy_(saved)
    assert flagged.nsfw is True
    assert not _pixels(flagged).any()  # the pipeline blacks flagged images out


def test_out_of_bounds_requests_fail_alone(generator: DiffusionGenerator) -> None:
    requests = [
        _request(seed=1),
        _request(steps=MAX_STEPS + 1),
        _request(height=136),
        _request(width=60),
        _request(guidance_scale=25.0),
        _request(seed=2),
    ]
    results = generator.generate_now(requests)
    for refused in results[1:5]:
        assert refused.image_png is None and refused.error is not None
        assert refused.error.status == 422 and refused.error.code == "generation_out_of_bounds"
    assert "steps 51" in results[1].error.message
    _assert_same_image_up_to_batching(results[0], generator.generate_now([requests[0]])[0])
    _assert_same_image_up_to_batching(results[5], generator.generate_now([requests[5]])[0])


def test_a_failing_group_fails_alone(
    generator: DiffusionGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = generator._run

    def fail_tall_images(
        group: list[GenerationRequest], *args: Any, **kwargs: Any
    ) -> list[GenerationResult]:
        if group[0].height == 96:
            raise RuntimeError("out of memory")
        return run(group, *args, **kwargs)

    monkeypatch.setattr(generator, "_run", fail_tall_images)
    results = generator.generate_now([_request(), _request(height=96), _request(seed=3)])
    assert results[1].error is not None and results[1].error.status == 500
    assert results[1].error.code == "inference_failed"
    assert results[0].error is None and results[2].error is None


@pytest.mark.parametrize("fields", [{"steps": 0}, {"partial_images": 4}])
def test_stream_refuses_out_of_bounds_requests(
    generator: DiffusionGenerator, fields: dict[str, int]
) -> None:
    async def collect() -> list[GenerationEvent]:
        return [event async for event in generator.generate_stream(_request(**fields))]

    [event] = asyncio.run(collect())
    assert event.kind == "error" and event.result.error.status == 422
    assert next(iter(fields)) in event.result.error.message


def test_reconfigure_applies_batch_settings(generator: DiffusionGenerator) -> None:
    generator.reconfigure({"batching": {"max_batch_size": 3, "batch_wait_timeout_s": 0.2}})
    assert generator._generate_batch._get_max_batch_size() == 3
    assert generator._generate_batch._get_batch_wait_timeout_s() == 0.2


def test_work_past_every_callers_deadline_is_skipped_or_stopped(
    generator: DiffusionGenerator,
) -> None:
    """The caller gives up request_timeout_s after sending; a group nobody waits for any more
    is not generated, and one whose deadline passes while it runs stops at its next step."""
    timeout = generator._timeout_s
    [stale] = generator._generate_in_groups([_request()], [time.monotonic() - timeout - 1])
    assert stale.error is not None
    assert (stale.error.status, stale.error.code) == (503, "model_timeout")
    steps = []

    def count(pipe: Any, index: int, timestep: Any, tensors: dict) -> dict:
        steps.append(index)
        return {}

    long = _request(steps=MAX_STEPS, height=128, width=128)
    with pytest.raises(GenerationTimedOut):
        generator._model_thread.call(generator._run, [long], count, time.monotonic() + 0.05)
    assert 0 < len(steps) < MAX_STEPS
    # A fresh request in the same batch keeps the group alive: it is generated.
    [given_up, awaited] = generator._generate_in_groups(
        [_request(seed=5), _request(seed=5)], [time.monotonic() - timeout - 1, time.monotonic()]
    )
    assert given_up.error is None and awaited.error is None
