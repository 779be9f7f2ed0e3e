"""Vision-language captioning deployment: BLIP-2, Gemma 3 and InternVL, chosen by config.

One class serves every instruction-following family through its adapter in
:mod:`vlgraph.vlm_families`. Each replica captions (``caption``), answers yes/no flag questions
(``flag``) and, for families that read several images in one prompt, captions a set
(``caption_collection``). Single-image calls are batched with ``@serve.batch`` and grouped by
prompt, so a batched answer equals the single answer; all torch work runs on the replica's one
model thread (:mod:`vlgraph.model_thread`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import serve

from deployments.grouped_batches import run_in_groups
from vlgraph.config import BatchingConfig, VisionLanguageConfig
from vlgraph.errors import BadRequestError
from vlgraph.flags import yes_beats_no
from vlgraph.messages import (
    CaptionRequest,
    CaptionResult,
    CollectionCaptionRequest,
    FlagRequest,
    FlagResult,
)
from vlgraph.model_source import resolve_model_path
from vlgraph.model_thread import ModelThread
from vlgraph.torch_runtime import apply_thread_limit, select_device, select_dtype
from vlgraph.vlm_families import FAMILIES

_FLAG_SUFFIX = " Answer yes or no."


class VisionLanguageCaptioner:
    """Captions, flags and (multi-image families) collective captions with one VLM."""

    def __init__(self, config: VisionLanguageConfig, checkpoint_cache_dir: str, name: str):
        self._name = name
        self._config = config
        self._family = FAMILIES[config.family]
        self._groups = {
            "multi_image": self._family.multi_image,
            "model_name": name,
            "failure_message": f"the {name} model failed on this input",
        }
        self._model_thread = ModelThread(name)
        self._model_thread.call(self._load, config, checkpoint_cache_dir, name)
        self.reconfigure(config.user_config())

    def _load(self, config: VisionLanguageConfig, checkpoint_cache_dir: str, name: str) -> None:
        import torch

        apply_thread_limit(config)
        path = resolve_model_path(name, config.source, Path(checkpoint_cache_dir), config.revision)
        self._torch = torch
        self._device = select_device(config)
        self._dtype = select_dtype(config, self._device)
        self._processor, self._model = self._family.load(path, self._dtype, self._device)
        self._generate_kwargs = config.generation.generate_kwargs()
        self._yes_ids, self._no_ids = self._family.answer_token_ids(self._processor)
        from PIL import Image

        self._generate([[Image.new("RGB", (32, 32))]], [self._config.caption_instruction])

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply batch size and wait time live (``user_config`` in the Serve config)."""
        BatchingConfig.model_validate(user_config.get("batching", {})).apply(
            self._caption_batch, self._flag_batch
        )

    @property
    def multi_image(self) -> bool:
        """Whether this family reads several images in one prompt."""
        return self._family.multi_image

    async def caption(self, request: CaptionRequest) -> CaptionResult:
        """Caption one image; ``prompt`` replaces the default instruction. Batched."""
        return await self._caption_batch(request)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _caption_batch(self, requests: list[CaptionRequest]) -> list[CaptionResult]:
        return await self._model_thread.run(self._caption_requests, requests)

    def caption_now(self, requests: list[CaptionRequest]) -> list[CaptionResult]:
        """Caption a list of single images as one batch, waiting for the model thread."""
        return self._model_thread.call(self._caption_requests, requests)

    async def caption_collection(self, request: CollectionCaptionRequest) -> CaptionResult:
        """One caption for several images read together (multi-image families only)."""
        return await self._model_thread.run(self._caption_collection, request)

    async def flag(self, request: FlagRequest) -> FlagResult:
        """Answer a yes/no question about one image, or a set on multi-image families."""
        if len(request.images) == 1:
            return await self._flag_batch(request)
        return (await self._model_thread.run(self._flag_requests, [request]))[0]

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _flag_batch(self, requests: list[FlagRequest]) -> list[FlagResult]:
        return await self._model_thread.run(self._flag_requests, requests)

    def flag_now(self, requests: list[FlagRequest]) -> list[FlagResult]:
        """Answer a list of flag questions as one batch, waiting for the model thread."""
        return self._model_thread.call(self._flag_requests, requests)

    def _caption_requests(self, requests: list[CaptionRequest]) -> list[CaptionResult]:
        instructions = [request.prompt or self._config.caption_instruction for request in requests]
        outcomes = run_in_groups(
            [(request.image,) for request in requests], instructions, self._generate, **self._groups
        )
        return [
            CaptionResult(caption=value) if error is None else CaptionResult(error=error)
            for value, error in outcomes
        ]

    def _caption_collection(self, request: CollectionCaptionRequest) -> CaptionResult:
        if len(request.images) > 1 and not self.multi_image:
            error = BadRequestError(f"{self._name} captions one image at a time")
            return CaptionResult(error=error.as_item_error())
        instruction = request.prompt or self._config.collection_instruction
        value, error = run_in_groups(
            [request.images], [instruction], self._generate, **self._groups
        )[0]
        return CaptionResult(caption=value) if error is None else CaptionResult(error=error)

    def _flag_requests(self, requests: list[FlagRequest]) -> list[FlagResult]:
        outcomes = run_in_groups(
            [request.images for request in requests],
            [request.question.strip() + _FLAG_SUFFIX for request in requests],
            self._score_yes_no,
            **self._groups,
        )
        return [
            FlagResult(flagged=value) if error is None else FlagResult(error=error)
            for value, error in outcomes
        ]

    def _model_inputs(self, images: list[list[Any]], instructions: list[str | None]) -> Any:
        inputs = self._family.inputs(self._processor, images, instructions).to(self._device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self._dtype)
        return inputs

    def _generate(self, images: list[list[Any]], instructions: list[str | None]) -> list[str]:
        inputs = self._model_inputs(images, instructions)
        with self._torch.inference_mode():
            output = self._model.generate(**inputs, **self._generate_kwargs)
        return self._family.decode(self._processor, output, inputs)

    def _score_yes_no(self, images: list[list[Any]], instructions: list[str | None]) -> list[bool]:
        inputs = self._model_inputs(images, instructions)
        with self._torch.inference_mode():
            logits = self._model(**inputs).logits
        return yes_beats_no(logits[:, -1].float(), self._yes_ids, self._no_ids)


VisionLanguageDeployment = serve.deployment(VisionLanguageCaptioner, name="vlm_caption")
