"""The BLIP captioner class in-process: batches equal singles; bad items fail alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments.blip_caption import BlipCaptioner
from tests.support.common import jpeg_bytes, noise_image
from vlgraph.config import BlipCaptionConfig
from vlgraph.messages import CaptionRequest, FlagRequest


@pytest.fixture(scope="module")
def captioner(checkpoint_cache: Path) -> BlipCaptioner:
    config = BlipCaptionConfig(
        source="tiny:blip-caption", device="cpu", generation={"max_new_tokens": 10}
    )
    return BlipCaptioner(config, str(checkpoint_cache))


def test_batch_equals_single_calls(captioner: BlipCaptioner) -> None:
    requests = [CaptionRequest(image=jpeg_bytes(noise_image(seed))) for seed in range(6)]
    batched = captioner.caption_now(requests)
    singles = [captioner.caption_now([request])[0] for request in requests]
    assert batched == singles
    assert all(result.caption for result in batched)


def test_mixed_prompts_are_grouped_so_batches_stay_exact(captioner: BlipCaptioner) -> None:
    images = [jpeg_bytes(noise_image(seed)) for seed in range(4)]
    prompts = [None, "a photo of", None, "a picture of the"]
    requests = [CaptionRequest(image=i, prompt=p) for i, p in zip(images, prompts, strict=True)]
    batched = captioner.caption_now(requests)
    singles = [captioner.caption_now([request])[0] for request in requests]
    assert batched == singles
    assert batched[1].caption.startswith("a photo of")


def test_one_bad_image_does_not_fail_its_neighbours(captioner: BlipCaptioner) -> None:
    good = jpeg_bytes(noise_image(1))
    truncated = jpeg_bytes(noise_image(2, (300, 200)))[:400]
    results = captioner.caption_now(
        [CaptionRequest(image=good), CaptionRequest(image=truncated), CaptionRequest(image=good)]
    )
    assert results[0].caption and results[0] == results[2]
    assert results[1].caption is None
    assert results[1].error.status == 422 and results[1].error.code == "undecodable_image"


def test_reconfigure_applies_batch_settings(captioner: BlipCaptioner) -> None:
    captioner.reconfigure({"batching": {"max_batch_size": 3, "batch_wait_timeout_s": 0.2}})
    assert captioner._caption_batch._get_max_batch_size() == 3
    assert captioner._caption_batch._get_batch_wait_timeout_s() == 0.2


def test_a_prompt_past_the_context_length_fails_alone_with_both_numbers(
    captioner: BlipCaptioner,
) -> None:
    """The limit is the text decoder's ``max_position_embeddings`` (64 in the tiny model),
    less the 10 tokens the fixture generates; a prompt exactly at it still captions."""
    positions = captioner._model.config.text_config.max_position_embeddings
    new_tokens = 10
    fitting = "a " * (positions - new_tokens - 1)
    # generate reads the prefix without its trailing [SEP]: [CLS] and one token per "a".
    tokenizer = captioner._processor.tokenizer
    assert len(tokenizer(fitting)["input_ids"]) - 1 == positions - new_tokens
    image = jpeg_bytes(noise_image(1))
    within, too_long, plain = captioner.caption_now(
        [
            CaptionRequest(image=image, prompt=fitting),
            CaptionRequest(image=image, prompt=fitting + "a"),
            CaptionRequest(image=image),
        ]
    )
    assert within.error is None and within.caption.startswith(fitting.strip())
    assert plain.error is None and plain.caption
    assert too_long.caption is None
    assert (too_long.error.status, too_long.error.code) == (422, "prompt_too_long_for_model")
    assert too_long.error.message == (
        f"the prompt takes {positions - new_tokens + 1} tokens; blip reads at most "
        f"{positions} including the {new_tokens} it generates; shorten it"
    )


def test_a_flag_question_past_the_context_length_fails_alone(captioner: BlipCaptioner) -> None:
    positions = captioner._model.config.text_config.max_position_embeddings
    image = jpeg_bytes(noise_image(1))
    short, long = captioner.flag_now(
        [FlagRequest(images=(image,), question="is it red"), FlagRequest((image,), "a " * 70)]
    )
    assert short.error is None and isinstance(short.flagged, bool)
    assert long.flagged is None and long.error.status == 422
    assert long.error.code == "prompt_too_long_for_model"
    assert f"reads at most {positions};" in long.error.message
