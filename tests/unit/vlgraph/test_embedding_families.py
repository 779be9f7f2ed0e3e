"""Embedding models a profile names, served through the encoder family derived from their
checkpoints: SigLIP (a transformers dual encoder, random tiny weights) and the
sentence-transformers layout of the offline CLIP models; anything else refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.common import noise_image
from vlgraph.embedding_families import (
    IMAGE,
    TEXT,
    DualEncoder,
    SentenceTransformerEncoder,
    derive_encoder,
)
from vlgraph.errors import UnsupportedModelError
from vlgraph.tiny import ensure_checkpoint

TEXTS = ["a red circle", "a blue square on a white background", "ein gelber Stern"]


def loaded(name: str, cache: Path):
    folder = ensure_checkpoint(name, cache)
    encoder = derive_encoder(folder)
    encoder.load(folder, torch.device("cpu"), torch.float32)
    return encoder


@pytest.mark.parametrize(
    ("name", "kind", "modalities", "dimension"),
    [
        ("siglip", DualEncoder, (IMAGE, TEXT), 32),
        ("clip", SentenceTransformerEncoder, (IMAGE, TEXT), 512),
        ("clip-multilingual", SentenceTransformerEncoder, (TEXT,), 512),
    ],
)
def test_the_encoder_family_comes_from_the_checkpoint(
    name: str, kind: type, modalities: tuple, dimension: int, checkpoint_cache: Path
) -> None:
    encoder = loaded(name, checkpoint_cache)
    assert isinstance(encoder, kind) and encoder.modalities == modalities
    assert encoder.dimension == dimension
    vectors, tokens = encoder.encode_texts(TEXTS)
    assert [len(vector) for vector in vectors] == [dimension] * len(TEXTS)
    assert all(count > 0 for count in tokens) and tokens[1] > tokens[0]
    alone = [encoder.encode_texts([text])[0][0] for text in TEXTS]
    np.testing.assert_allclose(vectors, alone, atol=1e-5)
    if IMAGE in modalities:
        images = [noise_image(seed) for seed in range(3)]
        batch = encoder.encode_images(images)
        np.testing.assert_allclose(
            batch, [encoder.encode_images([i])[0] for i in images], atol=1e-5
        )
        assert not np.allclose(batch[0], batch[1])


def test_siglip_texts_are_padded_as_it_was_trained(checkpoint_cache: Path) -> None:
    """SigLIP pools the last position: a text's vector is the one of the text padded to
    max_length, whatever else is in the batch."""
    encoder = loaded("siglip", checkpoint_cache)
    tokenizer = encoder._processor.tokenizer
    inputs = tokenizer(["a red circle"], padding="max_length", return_tensors="pt")
    with torch.inference_mode():
        expected = encoder._model.get_text_features(**inputs).pooler_output[0]
    (vector,), _ = encoder.encode_texts(["a red circle"])
    np.testing.assert_allclose(vector, expected.tolist(), atol=1e-5)


def test_a_checkpoint_that_is_no_dual_encoder_is_refused(
    checkpoint_cache: Path, tmp_path: Path
) -> None:
    with pytest.raises(UnsupportedModelError, match="'gemma3' checkpoint, not an image-text"):
        derive_encoder(ensure_checkpoint("gemma3", checkpoint_cache))
    with pytest.raises(UnsupportedModelError, match="neither a sentence-transformers folder"):
        derive_encoder(tmp_path)
