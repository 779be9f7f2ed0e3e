"""Text-to-image deployment of image generation and similar image generation: Stable
Diffusion 1.x, SDXL, or any text-to-image pipeline of diffusers a profile names (family
``auto``: Stable Diffusion 3, PixArt, Sana, FLUX, ...) through diffusers.

On the replica skeleton (:mod:`deployments.replica`), which owns the model thread, device,
loading and batching: this module loads ``StableDiffusionPipeline``,
``StableDiffusionXLPipeline`` or, for family ``auto``, whatever ``AutoPipelineForText2Image``
finds in the checkpoint, with the ordinary ``from_pretrained``, and runs the pipeline. Where a
pipeline's ``__call__`` differs it is met where it is called: a pipeline with only the legacy
``callback`` (PixArt) reports its steps through it, and one that bins sizes to its trained
aspect ratios (PixArt) is asked for the size requested.
Requests arrive fully resolved (the ingress fills in defaults and checks bounds, and the replica
checks them again with the same constants, from :mod:`vlgraph.generation_params`); each gets a
:class:`GenerationResult` with a PNG or a typed error, so one bad request never fails its batch.

Batches: one pipeline call takes one height, width, step count and guidance scale, and either
negative prompts for every row or for none (SDXL encodes a missing negative prompt as zeros, not
as ``""``), so a batch is split into groups by those and each group is one call. Every row gets
its own ``torch.Generator`` seeded with its request's seed: its latents, hence its image, depend
only on its own seed and prompt.

Streaming: :meth:`DiffusionGenerator.generate_stream` reports each denoising step and then the
image. A request may ask for partial images too: at evenly spaced steps before the last, the
current latents are decoded by the VAE (as the pipeline decodes the final ones, through the
safety checker where one runs) and sent as PNGs; decoding leaves the latents, hence the final
image, unchanged. A consumer that goes away stops the pipeline at the next step, freeing the
model thread.

Deadlines: a caller gives up ``request_timeout_s`` after sending a request (the ingress answers
503 ``model_timeout``). A batch group whose callers have all given up is skipped, or stopped at
its next step, so the requests queued behind it are not held up by work nobody waits for.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass
from typing import Any

from ray import serve

from deployments.replica import ModelReplica, logger
from vlgraph.config import DiffusionConfig
from vlgraph.errors import ItemError, ServiceError, ServiceUnavailableError
from vlgraph.generation_params import MIN_SIZE, generation_problems
from vlgraph.messages import GenerationEvent, GenerationRequest, GenerationResult
from vlgraph.service_metrics import service_metrics


class GenerationCancelled(Exception):
    """Raised inside the pipeline's step callback when a stream's consumer has gone away.

    Raising ends the call at once. diffusers' own ``pipe._interrupt = True`` only skips the
    remaining steps: the VAE decode and the safety checker would still run on the half-denoised
    latents, for an image nobody reads.
    """


class GenerationTimedOut(Exception):
    """Raised inside the pipeline's step callback when every caller of a batch group has given
    up (each request past the deployment's ``request_timeout_s``): nobody waits for the images,
    so the model stops at once instead of holding the requests queued behind it."""


@dataclass(frozen=True)
class _Arrived:
    """A request and when this replica received it (its caller gives up request_timeout_s
    after sending it, a little earlier)."""

    request: GenerationRequest
    at: float


#: The pipeline's per-step callback: ``(pipeline, step index, timestep, tensors) -> tensors``.
StepCallback = Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]


class DiffusionGenerator(ModelReplica):
    """Generates images with a diffusers text-to-image pipeline (``config.family``: ``sd`` for
    Stable Diffusion 1.x, ``sdxl`` for SDXL, ``auto`` for the pipeline the checkpoint names)."""

    batched_methods = ("_generate_batch",)
    failure_message = "the image generation model failed on this request"

    def __init__(self, config: DiffusionConfig, checkpoint_cache_dir: str, name: str):
        self.family = config.family
        self._timeout_s = config.deployment.request_timeout_s
        super().__init__(config, checkpoint_cache_dir, name)

    def load(self, path: str) -> None:
        """The family's pipeline, without the safety checker when the config turns it off."""
        from diffusers import (
            AutoPipelineForText2Image,
            DiffusionPipeline,
            StableDiffusionPipeline,
            StableDiffusionXLPipeline,
        )

        pipeline_class: Any = {
            "sd": StableDiffusionPipeline,
            "sdxl": StableDiffusionXLPipeline,
        }.get(self.family, AutoPipelineForText2Image)
        extra: dict[str, Any] = {}
        components = DiffusionPipeline.load_config(path)
        if not self._config.safety_checker and "safety_checker" in components:
            # Otherwise the checker in the checkpoint loads and runs whatever the config says.
            extra = {"safety_checker": None, "requires_safety_checker": False}
        pipe = pipeline_class.from_pretrained(path, dtype=self._dtype, **extra)
        pipe.set_progress_bar_config(disable=True)
        self._pipe = pipe.to(self._device)
        self._takes = frozenset(inspect.signature(pipe.__call__).parameters)

    def warm_up(self) -> None:
        """One step at the smallest size."""
        multiple = self._config.size_multiple
        side = -(-MIN_SIZE // multiple) * multiple
        request = GenerationRequest(
            prompt="warm-up",
            negative_prompt=None,
            height=side,
            width=side,
            steps=1,
            guidance_scale=self._config.guidance_scale,
            seed=0,
        )
        self._run([request])

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Generate one image; concurrent calls are batched together. A request whose caller
        has given up (``request_timeout_s`` after it arrived) is not generated, or is stopped
        at its next step, once every request of its group is in that state."""
        return await self._generate_batch(_Arrived(request, time.monotonic()))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _generate_batch(self, arrivals: list[_Arrived]) -> list[GenerationResult]:
        requests = [arrival.request for arrival in arrivals]
        arrived = [arrival.at for arrival in arrivals]
        return await self.run_batch(GenerationResult, self._generate_in_groups, requests, arrived)

    def generate_now(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Generate a list of requests as one batch, waiting for the model thread."""
        return self.run_now(GenerationResult, self._generate_in_groups, requests)

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Generate one image, yielding a ``step`` event after each denoising step (followed by
        a ``partial_image`` event at the steps :func:`partial_image_steps` picks for
        ``request.partial_images``) and then an ``image`` event (or one ``error`` event).
        Closing or cancelling the iterator stops the pipeline at its next step."""
        refusal = self._refusal(request)
        if refusal is not None:
            yield GenerationEvent(kind="error", result=GenerationResult(error=refusal))
            return
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[GenerationEvent | None] = asyncio.Queue()
        cancelled = threading.Event()

        def publish(event: GenerationEvent | None) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                cancelled.set()

        work = asyncio.ensure_future(
            self._model_thread.run(self._stream_one, request, publish, cancelled)
        )
        try:
            while (event := await events.get()) is not None:
                yield event
            try:
                result = await work
            except GenerationCancelled:
                return
            except Exception:
                logger.exception("%s failed on a streamed request", self._name)
                result = GenerationResult(error=self.failure())
            yield GenerationEvent(kind="image" if result.error is None else "error", result=result)
        finally:
            # GeneratorExit (closed) or CancelledError (task cancelled) land here while the
            # model thread may still be working: stop it at its next step, or before it starts.
            cancelled.set()
            work.cancel()

    def _stream_one(
        self,
        request: GenerationRequest,
        publish: Callable[[GenerationEvent | None], None],
        cancelled: threading.Event,
    ) -> GenerationResult:
        """Run one streamed request on the model thread; ``None`` is published at the end."""
        try:
            if cancelled.is_set():
                raise GenerationCancelled
            total = request.steps
            partial_steps = partial_image_steps(total, request.partial_images)
            reported = 0
            partials_sent = 0

            def on_step_end(pipe: Any, index: int, _timestep: Any, tensors: dict) -> dict:
                nonlocal reported, partials_sent
                if cancelled.is_set():
                    raise GenerationCancelled
                # Some schedulers run more iterations than steps (PNDM: one more): spread the
                # pipeline's iterations over the requested steps, never reporting ahead.
                iterations = getattr(pipe, "num_timesteps", None) or total
                step = min(total, (index + 1) * total // iterations)
                if step <= reported:
                    return {}
                passed = partial_steps.intersection(range(reported + 1, step + 1))
                reported = step
                publish(GenerationEvent(kind="step", step=step, total_steps=total))
                if passed:
                    publish(
                        GenerationEvent(
                            kind="partial_image",
                            step=step,
                            total_steps=total,
                            partial_image_index=partials_sent,
                            image_png=_png(self._decoded(pipe, tensors["latents"])),
                        )
                    )
                    partials_sent += 1
                return {}

            return self._run([request], on_step_end)[0]
        finally:
            publish(None)

    def _generate_in_groups(
        self, requests: list[GenerationRequest], arrived: list[float] | None = None
    ) -> list[GenerationResult]:
        """Refuse out-of-bounds requests, then one pipeline call per group of requests that
        share their settings; a call that fails fails its group alone, and a group whose
        requests all passed their deadline (``arrived`` + request timeout) stops."""
        results: list[GenerationResult | None] = [None] * len(requests)
        groups: dict[Hashable, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            refusal = self._refusal(request)
            if refusal is not None:
                results[index] = GenerationResult(error=refusal)
                continue
            key = (
                request.height,
                request.width,
                request.steps,
                request.guidance_scale,
                request.negative_prompt is not None,
            )
            groups[key].append(index)
        for members in groups.values():
            try:
                deadline = None
                if arrived is not None:
                    deadline = max(arrived[index] for index in members) + self._timeout_s
                outcomes = self._run([requests[index] for index in members], deadline=deadline)
            except GenerationTimedOut:
                outcomes = [GenerationResult(error=self._timed_out())] * len(members)
            except Exception:
                logger.exception("%s failed on a group of %d", self._name, len(members))
                outcomes = [GenerationResult(error=self.failure())] * len(members)
            for index, outcome in zip(members, outcomes, strict=True):
                results[index] = outcome
        return [result for result in results if result is not None]

    def _run(
        self,
        requests: list[GenerationRequest],
        on_step_end: StepCallback | None = None,
        deadline: float | None = None,
    ) -> list[GenerationResult]:
        """One pipeline call for requests that share size, steps, guidance and whether they
        have a negative prompt; :class:`GenerationTimedOut` once ``deadline`` (monotonic) has
        passed, before the call or at a step."""
        if deadline is not None and time.monotonic() > deadline:
            raise GenerationTimedOut
        first = requests[0]
        generators = [
            self._torch.Generator(device=self._device).manual_seed(request.seed)
            for request in requests
        ]
        arguments: dict[str, Any] = {
            "prompt": [request.prompt for request in requests],
            "height": first.height,
            "width": first.width,
            "num_inference_steps": first.steps,
            "guidance_scale": first.guidance_scale,
            "generator": generators,
            "output_type": "pil",
        }
        if first.negative_prompt is not None:
            arguments["negative_prompt"] = [request.negative_prompt for request in requests]
        metrics = service_metrics()

        def count_step(pipe: Any, index: int, timestep: Any, tensors: dict) -> dict:
            metrics.count_generation_steps(self._name)
            changed = on_step_end(pipe, index, timestep, tensors) if on_step_end else {}
            if deadline is not None and time.monotonic() > deadline:
                raise GenerationTimedOut
            return changed

        if "callback_on_step_end" in self._takes:
            arguments["callback_on_step_end"] = count_step
        elif "callback" in self._takes:  # the legacy per-step callback (PixArt)
            pipe = self._pipe
            arguments["callback"] = lambda index, timestep, latents: count_step(
                pipe, index, timestep, {"latents": latents}
            )
            arguments["callback_steps"] = 1
        if "clean_caption" in self._takes:
            # PixArt's caption cleaning needs beautifulsoup4 and ftfy, and warns on every call
            # without them; the prompt is drawn as sent.
            arguments["clean_caption"] = False
        if "use_resolution_binning" in self._takes:
            # Binning draws the nearest trained aspect ratio, then resizes: not the size asked.
            arguments["use_resolution_binning"] = False
        output = self._pipe(**arguments)
        flags = getattr(output, "nsfw_content_detected", None)
        return [
            GenerationResult(
                image_png=_png(image),
                seed=request.seed,
                nsfw=None if flags is None else bool(flags[position]),
            )
            for position, (image, request) in enumerate(zip(output.images, requests, strict=True))
        ]

    def _decoded(self, pipe: Any, latents: Any) -> Any:
        """The image ``latents`` (one row) stand for, decoded as the pipeline decodes its final
        latents: unscaled (denormalized where the VAE keeps latent statistics, as SDXL's
        may; unshifted where it shifts them, as SD 3's does), in float32 where a float16 VAE
        needs it, through the safety checker where one runs (a flagged image comes out black).
        ``latents`` are left as they are."""
        torch = self._torch
        vae = pipe.vae
        config = vae.config
        mean = getattr(config, "latents_mean", None)
        std = getattr(config, "latents_std", None)
        if mean is not None and std is not None:
            shape = (1, -1, 1, 1)
            mean = torch.tensor(mean).view(shape).to(latents.device, latents.dtype)
            std = torch.tensor(std).view(shape).to(latents.device, latents.dtype)
            latents = latents * std / config.scaling_factor + mean
        else:
            latents = latents / config.scaling_factor
        shift = getattr(config, "shift_factor", None)
        if shift is not None:  # SD 3's and FLUX's VAEs shift their latents, then scale them
            latents = latents + shift
        upcast = vae.dtype == torch.float16 and getattr(config, "force_upcast", False)
        if upcast:  # SDXL's VAE overflows in float16; the pipeline upcasts it the same way
            vae.to(dtype=torch.float32)
        try:
            with torch.no_grad():  # as inside the pipeline, whose step callback calls this
                image = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
                flagged = None
                if getattr(pipe, "safety_checker", None) is not None:
                    image, flagged = pipe.run_safety_checker(image, image.device, latents.dtype)
        finally:
            if upcast:
                vae.to(dtype=torch.float16)
        denormalize = None if flagged is None else [not flag for flag in flagged]
        return pipe.image_processor.postprocess(
            image, output_type="pil", do_denormalize=denormalize
        )[0]

    def _refusal(self, request: GenerationRequest) -> ItemError | None:
        """The bounds the ingress enforces, checked again: a 422 instead of a runaway job."""
        problems = generation_problems(request, self._config)
        if not problems:
            return None
        message = f"{self._name}: " + "; ".join(problems)
        return ServiceError(message, code="generation_out_of_bounds", status=422).as_item_error()

    def _timed_out(self) -> ItemError:
        return ServiceUnavailableError(
            f"{self._name} stopped this generation: it passed its {self._timeout_s:g} s request "
            "timeout; retry later",
            code="model_timeout",
        ).as_item_error()


def partial_image_steps(steps: int, count: int) -> set[int]:
    """The steps (1 to ``steps``) after which a stream asking for ``count`` partial images
    sends one: evenly spaced, before the last step (the final image follows it at once), so
    fewer than ``count`` when there are too few steps."""
    spaced = {max(1, (index + 1) * steps // (count + 1)) for index in range(count)}
    return {step for step in spaced if step < steps}


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


DiffusionDeployment = serve.deployment(DiffusionGenerator, name="diffusion")
