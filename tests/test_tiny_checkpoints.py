"""The factory's checkpoints: standard layout, deterministic, loaded by from_pretrained."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from transformers import BlipForConditionalGeneration, BlipProcessor

from tests.conftest import noise_image
from vlgraph.tiny_checkpoints import ensure_checkpoint, families


def test_blip_checkpoint_has_the_standard_layout(checkpoint_cache: Path) -> None:
    folder = ensure_checkpoint("blip-caption", checkpoint_cache)
    names = {path.name for path in folder.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer_config.json",
        "processor_config.json",
    } <= names
    assert sum(path.stat().st_size for path in folder.iterdir()) < 2_000_000


def test_checkpoints_are_deterministic_and_reused(checkpoint_cache: Path, tmp_path: Path) -> None:
    first = ensure_checkpoint("blip-caption", checkpoint_cache)
    again = ensure_checkpoint("blip-caption", checkpoint_cache)
    other = ensure_checkpoint("blip-caption", tmp_path)
    assert again == first
    digest = [
        hashlib.sha256((f / "model.safetensors").read_bytes()).hexdigest() for f in (first, other)
    ]
    assert digest[0] == digest[1]


def test_from_pretrained_loads_it_and_images_change_the_caption(checkpoint_cache: Path) -> None:
    folder = ensure_checkpoint("blip-caption", checkpoint_cache)
    processor = BlipProcessor.from_pretrained(folder)
    model = BlipForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    images = [noise_image(seed) for seed in range(4)]
    with torch.inference_mode():
        output = model.generate(**processor(images=images, return_tensors="pt"), max_new_tokens=10)
    captions = processor.batch_decode(output, skip_special_tokens=True)
    assert all(captions)
    assert len(set(captions)) > 1


def test_unknown_family_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="blip-caption"):
        ensure_checkpoint("no-such-family", tmp_path)
    assert "blip-caption" in families()
