"""The GIT captioner class in-process: batches equal singles, prompts are prefixes, bad items
and overlong prompts fail alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments.git_caption import GitCaptioner
from tests.support.common import jpeg_bytes, noise_image
from vlgraph.config import GitCaptionConfig
from vlgraph.messages import CaptionRequest


@pytest.fixture(scope="module")
def captioner(checkpoint_cache: Path) -> GitCaptioner:
    config = GitCaptionConfig(source="tiny:git", device="cpu", generation={"max_new_tokens": 10})
    return GitCaptioner(config, str(checkpoint_cache))


def test_batch_equals_single_calls_and_images_differ(captioner: GitCaptioner) -> None:
    requests = [CaptionRequest(image=jpeg_bytes(noise_image(seed))) for seed in range(5)]
    batched = captioner.caption_now(requests)
    singles = [captioner.caption_now([request])[0] for request in requests]
    assert batched == singles
    assert all(result.caption and result.error is None for result in batched)
    assert len({result.caption for result in batched}) > 1, "the caption follows the image"


def test_prompts_are_caption_prefixes_grouped_exactly(captioner: GitCaptioner) -> None:
    images = [jpeg_bytes(noise_image(seed)) for seed in range(4)]
    prompts = [None, "a photo of", None, "a picture of the"]
    requests = [CaptionRequest(image=i, prompt=p) for i, p in zip(images, prompts, strict=True)]
    batched = captioner.caption_now(requests)
    assert batched == [captioner.caption_now([request])[0] for request in requests]
    assert batched[1].caption.startswith("a photo of")
    assert batched[3].caption.startswith("a picture of the")


def test_one_bad_image_does_not_fail_its_neighbours(captioner: GitCaptioner) -> None:
    good = jpeg_bytes(noise_image(1))
    truncated = jpeg_bytes(noise_image(2, (300, 200)))[:400]
    results = captioner.caption_now(
        [CaptionRequest(image=good), CaptionRequest(image=truncated), CaptionRequest(image=good)]
    )
    assert results[0].caption and results[0] == results[2]
    assert results[1].error.status == 422 and results[1].error.code == "undecodable_image"


def test_a_prompt_past_the_context_length_fails_alone_with_both_numbers(
    captioner: GitCaptioner,
) -> None:
    image = jpeg_bytes(noise_image(3))
    # The tiny GIT reads 64 text positions, 10 of them for the caption it writes.
    fits, too_long = "a " * 53, "a " * 54
    results = captioner.caption_now(
        [CaptionRequest(image=image, prompt=too_long), CaptionRequest(image=image, prompt=fits)]
    )
    assert results[0].error.status == 422
    assert results[0].error.code == "prompt_too_long_for_model"
    assert "55 tokens" in results[0].error.message and "at most 64" in results[0].error.message
    assert results[1].error is None and results[1].caption.startswith("a a")


def test_reconfigure_applies_batch_settings(captioner: GitCaptioner) -> None:
    captioner.reconfigure({"batching": {"max_batch_size": 3, "batch_wait_timeout_s": 0.2}})
    assert captioner._caption_batch._get_max_batch_size() == 3
    assert captioner._caption_batch._get_batch_wait_timeout_s() == 0.2
