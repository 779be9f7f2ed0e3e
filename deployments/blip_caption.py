"""BLIP image captioning deployment (base or large, chosen by the config's ``source``).

The replica skeleton (:mod:`deployments.replica`) loads, batches and keeps errors per item;
this module writes BLIP's part: ``BlipForConditionalGeneration``, its processor, greedy
``generate`` per prompt group, and yes/no flags from the first answer token. Nothing about
HTTP lives here: every request gets a :class:`CaptionResult` or :class:`FlagResult`, with a
value or a typed error, so one bad image never fails the other requests of its batch.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from deployments.replica import CaptionEntryPoints, FlagEntryPoints, ModelReplica
from vlgraph.config import BlipCaptionConfig
from vlgraph.flags import NO_WORDS, YES_WORDS, answer_token_ids, yes_beats_no
from vlgraph.messages import CaptionRequest, CaptionResult, FlagRequest, FlagResult


class BlipCaptioner(CaptionEntryPoints, FlagEntryPoints, ModelReplica):
    """Captions images with ``BlipForConditionalGeneration``; greedy decoding by default."""

    batched_methods = ("_caption_batch", "_flag_batch")
    failure_message = "the captioning model failed on this image"

    def __init__(self, config: BlipCaptionConfig, checkpoint_cache_dir: str, name: str = "blip"):
        super().__init__(config, checkpoint_cache_dir, name)

    def load(self, path: str) -> None:
        """The processor and model of a BLIP captioning checkpoint, yes/no token ids."""
        from transformers import BlipForConditionalGeneration, BlipProcessor

        self._processor = BlipProcessor.from_pretrained(path)
        model = BlipForConditionalGeneration.from_pretrained(path, dtype=self._dtype)
        self._model = model.to(self._device).eval()
        self._generate_kwargs = self._config.generation.generate_kwargs()
        tokenizer = self._processor.tokenizer
        self._yes_ids = answer_token_ids(tokenizer, YES_WORDS)
        self._no_ids = answer_token_ids(tokenizer, NO_WORDS)
        self.set_context_length(self._model, tokenizer)

    def warm_up(self) -> None:
        """Caption one blank image."""
        from PIL import Image

        self._generate([Image.new("RGB", (32, 32))], None)

    def caption_rows(self, requests: list[CaptionRequest]) -> list[CaptionResult]:
        """Decode each image, then one ``generate`` per prompt, on the model thread.

        BLIP only batches exactly when every sequence has the same text prefix, so requests
        are grouped by prompt; each group is one ``generate`` call.
        """
        return self.in_groups(
            CaptionResult,
            "caption",
            [(request.image,) for request in requests],
            [request.prompt for request in requests],
            lambda images, prompts: self._generate([image for (image,) in images], prompts[0]),
        )

    def flag_rows(self, requests: list[FlagRequest]) -> list[FlagResult]:
        """One ``_score_yes_no`` per question group."""
        return self.in_groups(
            FlagResult,
            "flagged",
            [request.images for request in requests],
            [request.question for request in requests],
            lambda images, questions: self._score_yes_no(
                [image for (image,) in images], questions[0]
            ),
        )

    def _score_yes_no(self, images: list[Any], question: str) -> list[Any]:
        # The question becomes the caption's text prefix, as generate would see it: the
        # trailing [SEP] dropped and the first token replaced by the decoder's start token.
        prefix = f"{question.strip()} answer:"
        inputs = self._processor(images=images, text=[prefix] * len(images), return_tensors="pt")
        input_ids = inputs["input_ids"][:, :-1].clone()
        refusal = self.context_refusals([input_ids.shape[1]], 0, with_image=False)[0]
        if refusal is not None:
            return [refusal] * len(images)
        input_ids[:, 0] = self._model.config.text_config.bos_token_id
        with self._torch.inference_mode():
            logits = self._model(
                pixel_values=inputs["pixel_values"].to(self._device, self._dtype),
                input_ids=input_ids.to(self._device),
                attention_mask=inputs["attention_mask"][:, :-1].to(self._device),
            ).logits
        return yes_beats_no(logits[:, -1].float(), self._yes_ids, self._no_ids)

    def _generate(self, images: list[Any], prompt: str | None) -> list[Any]:
        """One ``generate`` call on images that share ``prompt`` (their caption's prefix)."""
        text = [prompt] * len(images) if prompt else None
        inputs = self._processor(images=images, text=text, return_tensors="pt")
        if prompt:
            # generate drops the prefix's trailing [SEP] and then writes max_new_tokens more.
            tokens = inputs["input_ids"].shape[1] - 1
            new = self._generate_kwargs["max_new_tokens"]
            refusal = self.context_refusals([tokens], new, with_image=False)[0]
            if refusal is not None:
                return [refusal] * len(images)
        inputs = inputs.to(self._device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self._dtype)
        with self._torch.inference_mode():
            output = self._model.generate(**inputs, **self._generate_kwargs)
        captions = self._processor.batch_decode(output, skip_special_tokens=True)
        return [caption.strip() for caption in captions]


BlipCaptionDeployment = serve.deployment(BlipCaptioner, name="blip_caption")
