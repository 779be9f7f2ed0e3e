"""BLIP visual question answering deployment (``Salesforce/blip-vqa-base`` by default).

On the replica skeleton (:mod:`deployments.replica`): ``from_pretrained`` through the explicit
``BlipForQuestionAnswering`` class (the auto class builds a wrong model from BLIP checkpoints)
and greedy ``generate``. BLIP attends to the padded positions of shorter questions, so a batch
is split by question token length: each group is one ``generate`` call whose answers equal
single calls. The question is read by BLIP's text encoder, the answer written by its decoder
from its own start token, so a question must fit the text positions by itself.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from deployments.replica import ModelReplica
from vlgraph.config import BlipVqaConfig
from vlgraph.messages import AnswerResult, QuestionRequest


class BlipQuestionAnswerer(ModelReplica):
    """Answers questions about images with ``BlipForQuestionAnswering``; greedy decoding."""

    batched_methods = ("_answer_batch",)
    failure_message = "the question-answering model failed on this image"

    def __init__(self, config: BlipVqaConfig, checkpoint_cache_dir: str, name: str = "vqa"):
        super().__init__(config, checkpoint_cache_dir, name)

    def load(self, path: str) -> None:
        """The processor and model of a BLIP VQA checkpoint."""
        from transformers import BlipForQuestionAnswering, BlipProcessor

        self._processor = BlipProcessor.from_pretrained(path)
        model = BlipForQuestionAnswering.from_pretrained(path, dtype=self._dtype)
        self._model = model.to(self._device).eval()
        self._generate_kwargs = self._config.generation.generate_kwargs()
        self.set_context_length(self._model, self._processor.tokenizer)

    def warm_up(self) -> None:
        """Answer one question about a blank image."""
        from PIL import Image

        self._generate([Image.new("RGB", (32, 32))], ["what is this?"])

    async def answer(self, request: QuestionRequest) -> AnswerResult:
        """Answer one question about one image; concurrent calls are batched together."""
        return await self._answer_batch(request)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _answer_batch(self, requests: list[QuestionRequest]) -> list[AnswerResult]:
        return await self.run_batch(AnswerResult, self._answer_by_length, requests)

    def answer_now(self, requests: list[QuestionRequest]) -> list[AnswerResult]:
        """Answer a list of questions as one batch, waiting for the model thread."""
        return self.run_now(AnswerResult, self._answer_by_length, requests)

    def question_length(self, question: str | None) -> int:
        """Tokens of ``question`` as the model reads it: the key that batches exactly."""
        return len(self._processor.tokenizer(question or "")["input_ids"])

    def _answer_by_length(self, requests: list[QuestionRequest]) -> list[AnswerResult]:
        return self.in_groups(
            AnswerResult,
            "answer",
            [(request.image,) for request in requests],
            [request.question for request in requests],
            lambda images, questions: self._generate([image for (image,) in images], questions),
            group_key=self.question_length,
        )

    def _generate(self, images: list[Any], questions: list[str | None]) -> list[Any]:
        inputs = self._processor(images=images, text=questions, padding=True, return_tensors="pt")
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        refusals = self.context_refusals(lengths, 0, what="the question", with_image=False)
        if any(refusals):
            return self.fitting_rows(refusals, self._generate, images, questions)
        inputs = inputs.to(self._device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self._dtype)
        with self._torch.inference_mode():
            output = self._model.generate(**inputs, **self._generate_kwargs)
        answers = self._processor.batch_decode(output, skip_special_tokens=True)
        return [answer.strip() for answer in answers]


BlipVqaDeployment = serve.deployment(BlipQuestionAnswerer, name="blip_vqa")
