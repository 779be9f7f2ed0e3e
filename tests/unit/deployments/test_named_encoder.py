"""The named-encoder replica in-process: one batch of images and texts is split by modality,
each input gets the vector it gets alone, and a bad input fails alone with its reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deployments.named_encoder import NamedEncoder
from tests.support.common import jpeg_bytes, noise_image
from vlgraph.config import EmbeddingModelConfig
from vlgraph.messages import EncodeRequest


def encoder(source: str, cache: Path) -> NamedEncoder:
    config = EmbeddingModelConfig(task="embed", source=source, device="cpu", dtype="float32")
    return NamedEncoder.in_process(config, str(cache), "mine")


@pytest.fixture(scope="module")
def siglip(checkpoint_cache: Path) -> NamedEncoder:
    return encoder("tiny:siglip", checkpoint_cache)


def test_a_mixed_batch_equals_its_items_alone(siglip: NamedEncoder) -> None:
    items = [jpeg_bytes(noise_image(1)), "a red circle", jpeg_bytes(noise_image(2)), "a star"]
    batch = siglip.encode_now([EncodeRequest(item=item) for item in items])
    assert all(result.error is None for result in batch)
    assert [len(result.embedding) for result in batch] == [siglip.dimension] * 4
    assert (batch[0].tokens, batch[1].tokens) == (None, 4)
    for item, result in zip(items, batch, strict=True):
        (alone,) = siglip.encode_now([EncodeRequest(item=item)])
        np.testing.assert_allclose(result.embedding, alone.embedding, atol=1e-5)


def test_a_bad_image_fails_alone(siglip: NamedEncoder) -> None:
    good, bad = siglip.encode_now(
        [EncodeRequest(item="a red circle"), EncodeRequest(item=b"not an image")]
    )
    assert good.error is None and good.embedding
    assert (bad.error.status, bad.error.code) == (422, "undecodable_image"), bad.error


def test_a_text_only_model_refuses_images_alone(checkpoint_cache: Path) -> None:
    texts_only = encoder("tiny:clip-multilingual", checkpoint_cache)
    text, image = texts_only.encode_now(
        [EncodeRequest(item="ein roter Kreis"), EncodeRequest(item=jpeg_bytes(noise_image(3)))]
    )
    assert text.error is None and len(text.embedding) == 512
    assert (image.error.status, image.error.code) == (400, "unsupported_input")
    assert "mine embeds no images" in image.error.message
