"""BLIP image captioning deployment (base or large, chosen by the config's ``source``).

The replica loads the checkpoint through the ordinary ``from_pretrained`` code, batches
requests with ``@serve.batch`` and runs ``generate`` off the event loop. Nothing about HTTP
lives here: every request gets a :class:`CaptionResult`, with a caption or a typed error, so
one bad image never fails the other requests of its batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import serve

from deployments.grouped_batches import run_in_groups
from vlgraph.config import BatchingConfig, BlipCaptionConfig
from vlgraph.flags import NO_WORDS, YES_WORDS, answer_token_ids, yes_beats_no
from vlgraph.messages import CaptionRequest, CaptionResult, FlagRequest, FlagResult
from vlgraph.model_source import resolve_model_path
from vlgraph.model_thread import ModelThread
from vlgraph.torch_runtime import apply_thread_limit, select_device, select_dtype


class BlipCaptioner:
    """Captions images with ``BlipForConditionalGeneration``; greedy decoding by default."""

    def __init__(self, config: BlipCaptionConfig, checkpoint_cache_dir: str, name: str = "blip"):
        self._groups = {
            "multi_image": False,
            "model_name": name,
            "failure_message": "the captioning model failed on this image",
        }
        self._model_thread = ModelThread(name)
        self._model_thread.call(self._load, config, checkpoint_cache_dir, name)
        self.reconfigure(config.user_config())

    def _load(self, config: BlipCaptionConfig, checkpoint_cache_dir: str, name: str) -> None:
        import torch
        from transformers import BlipForConditionalGeneration, BlipProcessor

        apply_thread_limit(config)
        path = resolve_model_path(name, config.source, Path(checkpoint_cache_dir), config.revision)
        self._torch = torch
        self._device = select_device(config)
        self._dtype = select_dtype(config, self._device)
        self._processor = BlipProcessor.from_pretrained(path)
        model = BlipForConditionalGeneration.from_pretrained(path, dtype=self._dtype)
        self._model = model.to(self._device).eval()
        self._generate_kwargs = config.generation.generate_kwargs()
        tokenizer = self._processor.tokenizer
        self._yes_ids = answer_token_ids(tokenizer, YES_WORDS)
        self._no_ids = answer_token_ids(tokenizer, NO_WORDS)
        self._warm_up()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply batch size and wait time live (``user_config`` in the Serve config)."""
        BatchingConfig.model_validate(user_config.get("batching", {})).apply(
            self._caption_batch, self._flag_batch
        )

    async def caption(self, request: CaptionRequest) -> CaptionResult:
        """Caption one image; concurrent calls are batched together."""
        return await self._caption_batch(request)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _caption_batch(self, requests: list[CaptionRequest]) -> list[CaptionResult]:
        return await self._model_thread.run(self._caption_group_by_prompt, requests)

    def caption_now(self, requests: list[CaptionRequest]) -> list[CaptionResult]:
        """Caption a list of images as one batch, waiting for the model thread."""
        return self._model_thread.call(self._caption_group_by_prompt, requests)

    def _caption_group_by_prompt(self, requests: list[CaptionRequest]) -> list[CaptionResult]:
        """Decode each image, then one ``generate`` per prompt, on the model thread.

        BLIP only batches exactly when every sequence has the same text prefix, so requests
        are grouped by prompt; each group is one ``generate`` call.
        """
        outcomes = run_in_groups(
            [(request.image,) for request in requests],
            [request.prompt for request in requests],
            lambda images, prompts: self._generate([image for (image,) in images], prompts[0]),
            **self._groups,
        )
        return [
            CaptionResult(caption=value) if error is None else CaptionResult(error=error)
            for value, error in outcomes
        ]

    async def flag(self, request: FlagRequest) -> FlagResult:
        """Answer a yes/no question about one image; concurrent calls are batched."""
        return await self._flag_batch(request)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _flag_batch(self, requests: list[FlagRequest]) -> list[FlagResult]:
        return await self._model_thread.run(self._flag_group_by_question, requests)

    def flag_now(self, requests: list[FlagRequest]) -> list[FlagResult]:
        """Answer a list of flag questions as one batch, waiting for the model thread."""
        return self._model_thread.call(self._flag_group_by_question, requests)

    def _flag_group_by_question(self, requests: list[FlagRequest]) -> list[FlagResult]:
        outcomes = run_in_groups(
            [request.images for request in requests],
            [request.question for request in requests],
            lambda images, questions: self._score_yes_no(
                [image for (image,) in images], questions[0]
            ),
            **self._groups,
        )
        return [
            FlagResult(flagged=value) if error is None else FlagResult(error=error)
            for value, error in outcomes
        ]

    def _score_yes_no(self, images: list[Any], question: str) -> list[bool]:
        # The question becomes the caption's text prefix, as generate would see it: the
        # trailing [SEP] dropped and the first token replaced by the decoder's start token.
        prefix = f"{question.strip()} answer:"
        inputs = self._processor(images=images, text=[prefix] * len(images), return_tensors="pt")
        input_ids = inputs["input_ids"][:, :-1].clone()
        input_ids[:, 0] = self._model.config.text_config.bos_token_id
        with self._torch.inference_mode():
            logits = self._model(
                pixel_values=inputs["pixel_values"].to(self._device, self._dtype),
                input_ids=input_ids.to(self._device),
                attention_mask=inputs["attention_mask"][:, :-1].to(self._device),
            ).logits
        return yes_beats_no(logits[:, -1].float(), self._yes_ids, self._no_ids)

    def _generate(self, images: list[Any], prompt: str | None) -> list[str]:
        text = [prompt] * len(images) if prompt else None
        inputs = self._processor(images=images, text=text, return_tensors="pt")
        inputs = inputs.to(self._device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self._dtype)
        with self._torch.inference_mode():
            output = self._model.generate(**inputs, **self._generate_kwargs)
        captions = self._processor.batch_decode(output, skip_special_tokens=True)
        return [caption.strip() for caption in captions]

    def _warm_up(self) -> None:
        from PIL import Image

        with self._torch.inference_mode():
            self._generate([Image.new("RGB", (32, 32))], None)


BlipCaptionDeployment = serve.deployment(BlipCaptioner, name="blip_caption")
