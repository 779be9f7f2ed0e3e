"""The BLIP question answerer in-process: batches equal singles because questions are grouped
by token length; images and questions change answers; a bad image fails alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments.blip_vqa import BlipQuestionAnswerer
from tests.support.common import jpeg_bytes, noise_image, world_image
from vlgraph.config import BlipVqaConfig
from vlgraph.messages import QuestionRequest

QUESTIONS = [
    "what is this",
    "is it a dog",
    "what colour is the car near the tree",
    "is this red",
    "what",
    "how many people are in the room",
]


@pytest.fixture(scope="module")
def answerer(checkpoint_cache: Path) -> BlipQuestionAnswerer:
    config = BlipVqaConfig(source="tiny:blip-vqa", device="cpu", generation={"max_new_tokens": 6})
    return BlipQuestionAnswerer(config, str(checkpoint_cache))


def test_mixed_questions_batch_to_the_single_answers(answerer: BlipQuestionAnswerer) -> None:
    requests = [
        QuestionRequest(image=jpeg_bytes(noise_image(seed)), question=question)
        for seed, question in enumerate(QUESTIONS)
    ]
    lengths = {answerer.question_length(question) for question in QUESTIONS}
    assert len(lengths) >= 3, "the batch must mix question lengths to test the grouping"
    batched = answerer.answer_now(requests)
    singles = [answerer.answer_now([request])[0] for request in requests]
    assert batched == singles
    assert all(result.answer for result in batched)


def test_images_and_questions_change_the_answer(answerer: BlipQuestionAnswerer) -> None:
    image = jpeg_bytes(noise_image(3))
    by_image = answerer.answer_now(
        [
            QuestionRequest(image=jpeg_bytes(world_image(seed)), question="what color is it?")
            for seed in range(4)
        ]
    )
    assert len({result.answer for result in by_image}) > 1
    by_question = answerer.answer_now(
        [QuestionRequest(image=image, question=question) for question in QUESTIONS]
    )
    assert len({result.answer for result in by_question}) > 1


def test_a_bad_image_fails_alone(answerer: BlipQuestionAnswerer) -> None:
    good = jpeg_bytes(noise_image(1))
    truncated = jpeg_bytes(noise_image(2, (300, 200)))[:400]
    results = answerer.answer_now(
        [
            QuestionRequest(image=good, question="is it red"),
            QuestionRequest(image=truncated, question="is it red"),
        ]
    )
    assert results[0].answer and results[1].answer is None
    assert results[1].error.status == 422 and results[1].error.code == "undecodable_image"


def test_reconfigure_applies_batch_settings(answerer: BlipQuestionAnswerer) -> None:
    answerer.reconfigure({"batching": {"max_batch_size": 5, "batch_wait_timeout_s": 0.3}})
    assert answerer._answer_batch._get_max_batch_size() == 5
    assert answerer._answer_batch._get_batch_wait_timeout_s() == 0.3


def test_a_question_past_the_context_length_fails_alone_with_both_numbers(
    answerer: BlipQuestionAnswerer,
) -> None:
    """BLIP's text encoder reads the question ([CLS] ... [SEP]) within its positions (64 in
    the tiny model); the answer is decoded in its own sequence, so it does not count."""
    positions = answerer._model.config.text_config.max_position_embeddings
    fitting = "a " * (positions - 2)
    assert answerer.question_length(fitting) == positions
    image = jpeg_bytes(noise_image(1))
    within, too_long, short = answerer.answer_now(
        [
            QuestionRequest(image=image, question=fitting),
            QuestionRequest(image=image, question=fitting + "a"),
            QuestionRequest(image=image, question="is it red"),
        ]
    )
    assert within.error is None and within.answer
    assert short.error is None and short.answer
    assert too_long.answer is None
    assert (too_long.error.status, too_long.error.code) == (422, "prompt_too_long_for_model")
    assert too_long.error.message == (
        f"the question takes {positions + 1} tokens; vqa reads at most {positions}; shorten it"
    )
