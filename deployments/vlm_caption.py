"""Vision-language captioning deployment: BLIP-2, Gemma 3 and InternVL, chosen by config.

One class serves every instruction-following family through its adapter in
:mod:`vlgraph.vlm_families`. Each replica captions (``caption``), answers yes/no flag questions
(``flag``) and, for families that read several images in one prompt, captions a set
(``caption_collection``), and continues conversations about images (``chat``, and
``chat_stream`` token by token: :mod:`deployments.chat_replies`). Single-image calls are
batched with ``@serve.batch`` and grouped by prompt, so a batched answer equals the single
answer. The replica skeleton
(:mod:`deployments.replica`) owns the model thread, loading, batching and per-item errors; a
prompt longer than the model's context (image tokens and the tokens to generate included) gets
a 422 ``prompt_too_long_for_model`` before the model is called.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import serve

from deployments.chat_replies import (
    ChatCall,
    ChatEntryPoints,
    ReplyRows,
    group_calls,
    sampling_key,
    sampling_kwargs,
)
from deployments.replica import CaptionEntryPoints, FlagEntryPoints, ModelReplica
from vlgraph.config import VisionLanguageConfig
from vlgraph.errors import BadRequestError, ItemError, ServiceError
from vlgraph.flags import yes_beats_no
from vlgraph.images import decode_image
from vlgraph.messages import (
    CaptionRequest,
    CaptionResult,
    ChatResult,
    CollectionCaptionRequest,
    FlagRequest,
    FlagResult,
)
from vlgraph.vlm_families import checked_family

_FLAG_SUFFIX = " Answer yes or no."


class VisionLanguageCaptioner(CaptionEntryPoints, FlagEntryPoints, ChatEntryPoints, ModelReplica):
    """Captions, flags, (multi-image families) collective captions and chat with one VLM."""

    batched_methods = ("_caption_batch", "_flag_batch", "_chat_batch")

    def __init__(self, config: VisionLanguageConfig, checkpoint_cache_dir: str, name: str):
        self.failure_message = f"the {name} model failed on this input"
        super().__init__(config, checkpoint_cache_dir, name)

    def load(self, path: str) -> None:
        """The family derived from the checkpoint, its processor and model, yes/no token ids
        and context length."""
        task = getattr(self._config, "task", "chat")
        self._family = checked_family(Path(path), self._config.family, self._name, task)
        self._processor, self._model = self._family.load(path, self._dtype, self._device)
        self._generate_kwargs = self._config.generation.generate_kwargs()
        self._yes_ids, self._no_ids = self._family.answer_token_ids(self._processor)
        self.set_context_length(self._model, self._processor.tokenizer)
        eos = self._model.generation_config.eos_token_id
        self._end_of_turn = set(eos if isinstance(eos, list) else [eos])

    def warm_up(self) -> None:
        """Caption one blank image with the default instruction."""
        from PIL import Image

        self._generate([[Image.new("RGB", (32, 32))]], [self._config.caption_instruction])

    @property
    def multi_image(self) -> bool:
        """Whether this family reads several images in one prompt."""
        return self._family.multi_image

    async def caption_collection(self, request: CollectionCaptionRequest) -> CaptionResult:
        """One caption for several images read together (multi-image families only)."""
        return (await self.run_batch(CaptionResult, self._caption_collections, [request]))[0]

    async def flag(self, request: FlagRequest) -> FlagResult:
        """Answer a yes/no question about one image (batched), or a set on multi-image
        families (on its own)."""
        if len(request.images) == 1:
            return await super().flag(request)
        return (await self.run_batch(FlagResult, self.flag_rows, [request]))[0]

    def caption_rows(self, requests: list[CaptionRequest]) -> list[CaptionResult]:
        """One ``_generate`` per instruction group; ``prompt`` replaces the default one."""
        instructions = [request.prompt or self._config.caption_instruction for request in requests]
        return self._in_groups(
            CaptionResult, "caption", [(r.image,) for r in requests], instructions, self._generate
        )

    def _caption_collections(self, requests: list[CollectionCaptionRequest]) -> list[CaptionResult]:
        if any(len(request.images) > 1 for request in requests) and not self.multi_image:
            error = BadRequestError(f"{self._name} captions one image at a time")
            return [CaptionResult(error=error.as_item_error())] * len(requests)
        instructions = [
            request.prompt or self._config.collection_instruction for request in requests
        ]
        return self._in_groups(
            CaptionResult, "caption", [r.images for r in requests], instructions, self._generate
        )

    def flag_rows(self, requests: list[FlagRequest]) -> list[FlagResult]:
        """One yes/no scoring per question group."""
        return self._in_groups(
            FlagResult,
            "flagged",
            [request.images for request in requests],
            [request.question.strip() + _FLAG_SUFFIX for request in requests],
            self._score_yes_no,
        )

    def _in_groups(self, result_type: Any, field: str, *rows: Any) -> list[Any]:
        return self.in_groups(result_type, field, *rows, multi_image=self.multi_image)

    def _model_inputs(self, images: list[list[Any]], instructions: list[str | None]) -> Any:
        inputs = self._family.inputs(self._processor, images, instructions).to(self._device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self._dtype)
        return inputs

    def _generate(self, images: list[list[Any]], instructions: list[str | None]) -> list[Any]:
        inputs = self._model_inputs(images, instructions)
        new = self._generate_kwargs["max_new_tokens"]
        refusals = self.context_refusals(self._family.prompt_tokens(inputs), new)
        if any(refusals):
            return self.fitting_rows(refusals, self._generate, images, instructions)
        with self._torch.inference_mode():
            output = self._model.generate(**inputs, **self._generate_kwargs)
        return self._family.decode(self._processor, output, inputs)

    def chat_rows(self, calls: list[ChatCall]) -> list[ChatResult]:
        """Replies to conversations: one ``generate`` per group of calls that may share one
        (with images or without, and the same sampling settings)."""
        results: list[ChatResult] = [ChatResult()] * len(calls)
        for group in group_calls(
            calls, lambda call: (bool(call.request.images), sampling_key(call))
        ):
            replies = self._replies([calls[index] for index in group])
            for index, result in zip(group, replies, strict=True):
                results[index] = result
        return results

    def _replies(self, calls: list[ChatCall]) -> list[ChatResult]:
        """Replies to calls that share one ``generate``; a call whose image does not decode
        fails alone."""
        decoded: list[list[Any] | ItemError] = []
        for call in calls:
            try:
                decoded.append([decode_image(image) for image in call.request.images])
            except ServiceError as error:
                decoded.append(error.as_item_error())
        kept = [index for index, images in enumerate(decoded) if not isinstance(images, ItemError)]
        replies = (
            self._generate_replies(
                [calls[index] for index in kept],
                [(calls[index].request.turns, decoded[index]) for index in kept],
            )
            if kept
            else []
        )
        results = [
            ChatResult(error=images) if isinstance(images, ItemError) else None
            for images in decoded
        ]
        for index, reply in zip(kept, replies, strict=True):
            results[index] = reply
        return results  # type: ignore[return-value]

    def _generate_replies(
        self, calls: list[ChatCall], conversations: list[Any]
    ) -> list[ChatResult]:
        inputs = self._family.chat_inputs(self._processor, conversations).to(self._device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self._dtype)
        prompt_tokens = self._family.prompt_tokens(inputs)
        default = self._generate_kwargs["max_new_tokens"]
        limits = [call.request.max_tokens or default for call in calls]
        refusals = [
            self.context_refusals([tokens], limit, what="the conversation")[0]
            for tokens, limit in zip(prompt_tokens, limits, strict=True)
        ]
        if any(refusals):
            fitting = self.fitting_rows(refusals, self._generate_replies, calls, conversations)
            return [
                row if isinstance(row, ChatResult) else ChatResult(error=row) for row in fitting
            ]
        tokenizer = self._processor.tokenizer
        rows = ReplyRows(
            calls,
            limits,
            self._end_of_turn,
            lambda tokens: tokenizer.decode(tokens, skip_special_tokens=True),
        )
        request = calls[0].request
        if request.seed is not None:
            self._torch.manual_seed(request.seed)
        with self._torch.inference_mode():
            self._model.generate(
                **inputs,
                max_new_tokens=max(limits),
                repetition_penalty=self._generate_kwargs["repetition_penalty"],
                stopping_criteria=rows.criteria(),
                **sampling_kwargs(request),
            )
        return rows.results(prompt_tokens)

    def _score_yes_no(self, images: list[list[Any]], instructions: list[str | None]) -> list[Any]:
        inputs = self._model_inputs(images, instructions)
        refusals = self.context_refusals(self._family.prompt_tokens(inputs), 0)
        if any(refusals):
            return self.fitting_rows(refusals, self._score_yes_no, images, instructions)
        with self._torch.inference_mode():
            logits = self._model(**inputs).logits
        return yes_beats_no(logits[:, -1].float(), self._yes_ids, self._no_ids)


VisionLanguageDeployment = serve.deployment(VisionLanguageCaptioner, name="vlm_caption")
