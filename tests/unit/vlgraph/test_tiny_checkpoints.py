"""The factory's checkpoints: standard layout, deterministic, loaded by from_pretrained."""

from __future__ import annotations

import hashlib
import pkgutil
import sys
from pathlib import Path

import pytest
import torch
from transformers import BlipForConditionalGeneration, BlipProcessor

import vlgraph.tiny
from tests.support.common import noise_image
from vlgraph.tiny import ensure_checkpoint, families, family_modules

#: Every family the configs and the tests name as ``tiny:<family>``.
EXPECTED_FAMILIES = [
    "blip-caption",
    "blip-vqa",
    "blip2",
    "clip",
    "clip-multilingual",
    "gemma3",
    "git",
    "internvl",
    "sd",
    "sdxl",
]


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


def test_families_lists_every_family() -> None:
    assert families() == EXPECTED_FAMILIES


def test_every_module_of_the_package_is_discovered_and_registers_a_family() -> None:
    modules = {
        info.name
        for info in pkgutil.iter_modules(vlgraph.tiny.__path__)
        if not info.name.startswith("_")
    }
    assert set(family_modules()) == modules - vlgraph.tiny.SHARED_MODULES
    assert {"blip", "clip", "blip2", "gemma3", "internvl", "stable_diffusion"} <= modules
    families()  # imports every module of the package
    registering = {
        vlgraph.tiny._BUILDERS[family].__module__.rpartition(".")[2] for family in families()
    }
    assert registering == set(family_modules())


def test_a_new_module_in_the_package_is_discovered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "made_up.py").write_text(
        "from vlgraph.tiny import register\n\n\n"
        '@register("made-up")\n'
        "def build(folder, size):\n"
        '    (folder / "config.json").write_text("{}")\n'
    )
    monkeypatch.setattr(vlgraph.tiny, "__path__", [*vlgraph.tiny.__path__, str(tmp_path)])
    monkeypatch.setattr(vlgraph.tiny, "_BUILDERS", dict(vlgraph.tiny._BUILDERS))
    monkeypatch.setattr(vlgraph.tiny, "_discovered", False)
    try:
        assert "made_up" in family_modules()
        assert "made-up" in families()
        assert (ensure_checkpoint("made-up", tmp_path / "cache") / "config.json").exists()
    finally:
        sys.modules.pop("vlgraph.tiny.made_up", None)
        vars(vlgraph.tiny).pop("made_up", None)
