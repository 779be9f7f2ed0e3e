"""The CLIP encoders in-process: what they answer equals ``SentenceTransformer(path).encode``
on the same inputs, single and batched; a bad image fails alone."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from deployments.clip_encoder import SentenceEncoder
from tests.support.common import jpeg_bytes, noise_image
from vlgraph.config import EncoderConfig
from vlgraph.images import decode_image
from vlgraph.messages import EncodeRequest
from vlgraph.tiny import ensure_checkpoint

TEXTS = ["a photo of a dog", "Ein Foto von einem Hund", "une photo", "a red car near the tree"]


def encoder(checkpoint_cache: Path, family: str, modality: str) -> SentenceEncoder:
    config = EncoderConfig(source=f"tiny:{family}", device="cpu", torch_threads=1)
    return SentenceEncoder(config, str(checkpoint_cache), f"clip_{modality}", modality)


@pytest.fixture(scope="module")
def image_encoder(checkpoint_cache: Path) -> SentenceEncoder:
    return encoder(checkpoint_cache, "clip", "image")


@pytest.fixture(scope="module")
def text_encoder(checkpoint_cache: Path) -> SentenceEncoder:
    return encoder(checkpoint_cache, "clip-multilingual", "text")


def reference(checkpoint_cache: Path, family: str) -> SentenceTransformer:
    return SentenceTransformer(str(ensure_checkpoint(family, checkpoint_cache)), device="cpu")


def vectors(results) -> np.ndarray:
    assert all(result.error is None for result in results), results
    return np.array([result.embedding for result in results])


def test_images_match_sentence_transformers(image_encoder, checkpoint_cache: Path) -> None:
    images = [jpeg_bytes(noise_image(seed)) for seed in range(4)]
    expected = reference(checkpoint_cache, "clip").encode([decode_image(data) for data in images])
    batched = vectors(image_encoder.encode_now([EncodeRequest(item=data) for data in images]))
    singles = np.array(
        [vectors(image_encoder.encode_now([EncodeRequest(item=data)]))[0] for data in images]
    )
    assert batched.shape == (4, 512) and image_encoder.dimension == 512
    np.testing.assert_allclose(batched, expected, atol=1e-5)
    np.testing.assert_allclose(singles, expected, atol=1e-5)
    assert np.abs(batched[0] - batched[1]).max() > 1e-3, "different images, different vectors"


def test_texts_match_sentence_transformers(text_encoder, checkpoint_cache: Path) -> None:
    expected = reference(checkpoint_cache, "clip-multilingual").encode(TEXTS)
    batched = vectors(text_encoder.encode_now([EncodeRequest(item=text) for text in TEXTS]))
    singles = np.array(
        [vectors(text_encoder.encode_now([EncodeRequest(item=text)]))[0] for text in TEXTS]
    )
    assert batched.shape == (4, 512)
    np.testing.assert_allclose(batched, expected, atol=1e-5)
    np.testing.assert_allclose(singles, expected, atol=1e-5)


def test_a_bad_image_fails_alone(image_encoder) -> None:
    good = jpeg_bytes(noise_image(1))
    buffer = io.BytesIO()
    noise_image(2, (300, 200)).save(buffer, format="PNG")
    truncated = buffer.getvalue()[:300]
    results = image_encoder.encode_now([EncodeRequest(item=good), EncodeRequest(item=truncated)])
    assert results[0].embedding is not None and results[1].embedding is None
    assert results[1].error.status == 422 and results[1].error.code == "undecodable_image"


def test_reconfigure_applies_batch_settings(text_encoder) -> None:
    text_encoder.reconfigure({"batching": {"max_batch_size": 12, "batch_wait_timeout_s": 0.2}})
    assert text_encoder._encode_batch._get_max_batch_size() == 12
