"""GIT image captioning deployment (``microsoft/git-base-coco`` by default).

On the replica skeleton (:mod:`deployments.replica`): ``GitForCausalLM`` and its processor,
greedy ``generate`` per prompt group (a ``caption_prompt`` is the caption's text prefix, as
for BLIP; GIT reads it after the image tokens). Captions only: GIT answers no yes/no flags,
which the registry states, so the ingress refuses a flag question for it before any call.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from deployments.replica import CaptionEntryPoints, ModelReplica
from vlgraph.config import GitCaptionConfig
from vlgraph.messages import CaptionRequest, CaptionResult


class GitCaptioner(CaptionEntryPoints, ModelReplica):
    """Captions images with ``GitForCausalLM``; greedy decoding by default."""

    batched_methods = ("_caption_batch",)
    failure_message = "the captioning model failed on this image"

    def __init__(self, config: GitCaptionConfig, checkpoint_cache_dir: str, name: str = "git"):
        super().__init__(config, checkpoint_cache_dir, name)

    def load(self, path: str) -> None:
        """The processor and model of a GIT checkpoint."""
        from transformers import AutoProcessor, GitForCausalLM

        self._processor = AutoProcessor.from_pretrained(path)
        model = GitForCausalLM.from_pretrained(path, dtype=self._dtype)
        self._model = model.to(self._device).eval()
        self._generate_kwargs = self._config.generation.generate_kwargs()
        self.set_context_length(self._model, self._processor.tokenizer)

    def warm_up(self) -> None:
        """Caption one blank image."""
        from PIL import Image

        self._generate([Image.new("RGB", (32, 32))], None)

    def caption_rows(self, requests: list[CaptionRequest]) -> list[CaptionResult]:
        """One ``_generate`` per prompt: rows batch exactly when they share their prefix."""
        return self.in_groups(
            CaptionResult,
            "caption",
            [(request.image,) for request in requests],
            [request.prompt for request in requests],
            lambda images, prompts: self._generate([image for (image,) in images], prompts[0]),
        )

    def _generate(self, images: list[Any], prompt: str | None) -> list[Any]:
        """One ``generate`` call on images that share ``prompt``; the caption starts with the
        prompt, as BLIP's does."""
        pixel_values = self._processor(images=images, return_tensors="pt").pixel_values
        kwargs: dict[str, Any] = {"pixel_values": pixel_values.to(self._device, self._dtype)}
        prefix = 0
        if prompt:
            # GIT continues the prefix after [CLS]; the tokenizer's trailing [SEP] would end it.
            ids = self._processor.tokenizer(prompt, return_tensors="pt").input_ids[:, :-1]
            prefix = ids.shape[1]
            kwargs["input_ids"] = ids.repeat(len(images), 1).to(self._device)
        # Image tokens take no text positions: the prefix (at least [CLS]) and the new tokens do.
        new = self._generate_kwargs["max_new_tokens"]
        refusal = self.context_refusals([max(prefix, 1)], new, with_image=False)[0]
        if refusal is not None:
            return [refusal] * len(images)
        with self._torch.inference_mode():
            output = self._model.generate(**kwargs, **self._generate_kwargs)
        captions = self._processor.batch_decode(output, skip_special_tokens=True)
        return [caption.strip() for caption in captions]


GitCaptionDeployment = serve.deployment(GitCaptioner, name="git_caption")
