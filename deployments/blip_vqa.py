"""BLIP visual question answering deployment (``Salesforce/blip-vqa-base`` by default).

Like the captioner: ``from_pretrained`` through the explicit ``BlipForQuestionAnswering`` class
(the auto class builds a wrong model from BLIP checkpoints), ``@serve.batch``, and all torch
work on one model thread. BLIP attends to the padded positions of shorter questions, so a
batch is split by question token length: each group is one ``generate`` call whose answers
equal single calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import serve

from deployments.grouped_batches import run_in_groups
from vlgraph.config import BatchingConfig, BlipVqaConfig
from vlgraph.messages import AnswerResult, QuestionRequest
from vlgraph.model_source import resolve_model_path
from vlgraph.model_thread import ModelThread
from vlgraph.torch_runtime import apply_thread_limit, select_device, select_dtype


class BlipQuestionAnswerer:
    """Answers questions about images with ``BlipForQuestionAnswering``; greedy decoding."""

    def __init__(self, config: BlipVqaConfig, checkpoint_cache_dir: str, name: str = "vqa"):
        self._name = name
        self._model_thread = ModelThread(name)
        self._model_thread.call(self._load, config, checkpoint_cache_dir)
        self.reconfigure(config.user_config())

    def _load(self, config: BlipVqaConfig, checkpoint_cache_dir: str) -> None:
        import torch
        from transformers import BlipForQuestionAnswering, BlipProcessor

        apply_thread_limit(config)
        path = resolve_model_path(
            self._name, config.source, Path(checkpoint_cache_dir), config.revision
        )
        self._torch = torch
        self._device = select_device(config)
        self._dtype = select_dtype(config, self._device)
        self._processor = BlipProcessor.from_pretrained(path)
        model = BlipForQuestionAnswering.from_pretrained(path, dtype=self._dtype)
        self._model = model.to(self._device).eval()
        self._generate_kwargs = config.generation.generate_kwargs()
        self._warm_up()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply batch size and wait time live (``user_config`` in the Serve config)."""
        BatchingConfig.model_validate(user_config.get("batching", {})).apply(self._answer_batch)

    async def answer(self, request: QuestionRequest) -> AnswerResult:
        """Answer one question about one image; concurrent calls are batched together."""
        return await self._answer_batch(request)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _answer_batch(self, requests: list[QuestionRequest]) -> list[AnswerResult]:
        return await self._model_thread.run(self._answer_by_length, requests)

    def answer_now(self, requests: list[QuestionRequest]) -> list[AnswerResult]:
        """Answer a list of questions as one batch, waiting for the model thread."""
        return self._model_thread.call(self._answer_by_length, requests)

    def question_length(self, question: str | None) -> int:
        """Tokens of ``question`` as the model reads it: the key that batches exactly."""
        return len(self._processor.tokenizer(question or "")["input_ids"])

    def _answer_by_length(self, requests: list[QuestionRequest]) -> list[AnswerResult]:
        outcomes = run_in_groups(
            [(request.image,) for request in requests],
            [request.question for request in requests],
            lambda images, questions: self._generate([image for (image,) in images], questions),
            multi_image=False,
            model_name=self._name,
            failure_message="the question-answering model failed on this image",
            group_key=self.question_length,
        )
        return [
            AnswerResult(answer=value) if error is None else AnswerResult(error=error)
            for value, error in outcomes
        ]

    def _generate(self, images: list[Any], questions: list[str | None]) -> list[str]:
        inputs = self._processor(images=images, text=questions, padding=True, return_tensors="pt")
        inputs = inputs.to(self._device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self._dtype)
        with self._torch.inference_mode():
            output = self._model.generate(**inputs, **self._generate_kwargs)
        answers = self._processor.batch_decode(output, skip_special_tokens=True)
        return [answer.strip() for answer in answers]

    def _warm_up(self) -> None:
        from PIL import Image

        self._generate([Image.new("RGB", (32, 32))], ["what is this?"])


BlipVqaDeployment = serve.deployment(BlipQuestionAnswerer, name="blip_vqa")
