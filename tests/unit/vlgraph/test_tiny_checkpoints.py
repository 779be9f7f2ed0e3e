"""The factory's checkpoints: standard layout, deterministic, loaded by from_pretrained."""

from __future__ import annotations

import hashlib
import pkgutil
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from transformers import BlipForConditionalGeneration, BlipProcessor

import vlgraph.tiny
from vlgraph.tiny import (
    blip_training,
    checkpoint_folder,
    ensure_checkpoint,
    families,
    family_modules,
    is_built,
    recipe_hash,
    trained_on_world,
)
from vlgraph.tiny.world import HELD_OUT_SEED, Scene, draw
from vlgraph.vlm_families import derive_family

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
    "llava_onevision",
    "paligemma",
    "pixart",
    "qwen2_5_vl",
    "sd",
    "sd3",
    "sdxl",
    "siglip",
    "smolvlm",
]
#: Those of them trained on the world (docs/offline-world.md); the others keep random weights.
TRAINED_ON_WORLD = [
    "blip-caption",
    "blip-vqa",
    "blip2",
    "clip",
    "clip-multilingual",
    "gemma3",
    "internvl",
    "sd",
    "smolvlm",
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


def test_training_is_deterministic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The captioner's recipe, cut to a few steps, gives the same bytes twice."""
    monkeypatch.setattr(blip_training, "CAPTIONER_STEPS", 12)
    built = [ensure_checkpoint("blip-caption", tmp_path / name) for name in ("one", "two")]
    digest = [hashlib.sha256((f / "model.safetensors").read_bytes()).hexdigest() for f in built]
    assert digest[0] == digest[1]


def test_checkpoints_are_reused_and_named_by_their_recipe(checkpoint_cache: Path) -> None:
    first = ensure_checkpoint("blip-caption", checkpoint_cache)
    assert ensure_checkpoint("blip-caption", checkpoint_cache) == first
    assert first == checkpoint_folder("blip-caption", checkpoint_cache)
    assert first.name == f"blip-caption-tiny-{recipe_hash('blip-caption')}"
    assert is_built("blip-caption", checkpoint_cache)


def test_a_recipe_hash_covers_the_modules_it_imports_and_the_recipes_it_needs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sources = vlgraph.tiny._recipe_sources("vlgraph.tiny.blip")
    assert any("def train_blip_captioner" in source for source in sources)
    assert any("class Scene" in source for source in sources)  # world.py, through training.py
    before = recipe_hash("blip-vqa")
    real = vlgraph.tiny.recipe_hash

    def changed_captioner(family: str, size: str = "tiny") -> str:
        return "changed" if family == "blip-caption" else real(family, size)

    monkeypatch.setattr(vlgraph.tiny, "recipe_hash", changed_captioner)
    assert real("blip-vqa") != before
    assert real("blip-vqa", "full") == real("blip-vqa", "full")  # full size trains nothing


def test_one_process_trains_while_the_others_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def slow_builder(folder: Path, size, needs) -> None:
        calls.append(folder)
        time.sleep(0.5)
        (folder / "config.json").write_text("{}")

    families()
    monkeypatch.setitem(vlgraph.tiny._FAMILIES, "slow", vlgraph.tiny.Family(slow_builder, (), True))
    monkeypatch.setattr(vlgraph.tiny, "recipe_hash", lambda family, size="tiny": "fixed")
    with ThreadPoolExecutor(3) as pool:
        folders = list(pool.map(lambda _: ensure_checkpoint("slow", tmp_path), range(3)))
    assert len(calls) == 1 and len(set(folders)) == 1
    assert (folders[0] / "config.json").exists()
    assert not [path for path in tmp_path.iterdir() if path.is_dir() and path != folders[0]]


def test_from_pretrained_loads_it_and_it_captions_the_world(checkpoint_cache: Path) -> None:
    folder = ensure_checkpoint("blip-caption", checkpoint_cache)
    processor = BlipProcessor.from_pretrained(folder)
    model = BlipForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    scenes = [Scene("circle", "red", "white"), Scene("square", "blue", "black")]
    rng = random.Random(HELD_OUT_SEED)
    images = [draw(scene, rng, 96) for scene in scenes]
    with torch.inference_mode():
        output = model.generate(**processor(images=images, return_tensors="pt"), max_new_tokens=12)
    captions = processor.batch_decode(output, skip_special_tokens=True)
    assert [caption.strip() for caption in captions] == [scene.caption for scene in scenes]


def test_the_smolvlm_checkpoint_captions_the_world_as_the_server_prompts_it(
    checkpoint_cache: Path,
) -> None:
    """SmolVLM (Idefics3) is trained through the family the server derives from it: images
    grouped by prompt, with their pixel attention mask, one frame each."""
    folder = ensure_checkpoint("smolvlm", checkpoint_cache)
    family = derive_family(folder, "chat")
    processor, model = family.load(folder, torch.float32, torch.device("cpu"))
    scenes = [Scene("circle", "red", "white"), Scene("square", "blue", "black")]
    rng = random.Random(HELD_OUT_SEED)
    images = [[draw(scene, rng, 96)] for scene in scenes]
    inputs = family.inputs(processor, images, ["Describe this image in one sentence."] * 2)
    assert inputs["pixel_values"].shape[:2] == inputs["pixel_attention_mask"].shape[:2] == (2, 1)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=12)
    assert family.decode(processor, output, inputs) == [scene.caption for scene in scenes]


def test_unknown_family_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="blip-caption"):
        ensure_checkpoint("no-such-family", tmp_path)
    assert "blip-caption" in families()


def test_families_lists_every_family() -> None:
    assert families() == EXPECTED_FAMILIES


def test_the_families_trained_on_the_world() -> None:
    assert [family for family in EXPECTED_FAMILIES if trained_on_world(family)] == TRAINED_ON_WORLD
    assert not trained_on_world("no-such-family")


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
        vlgraph.tiny._FAMILIES[family].builder.__module__.rpartition(".")[2]
        for family in families()
    }
    assert registering == set(family_modules())


def test_a_new_module_in_the_package_is_discovered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "made_up.py").write_text(
        "from vlgraph.tiny import register\n\n\n"
        '@register("made-up")\n'
        "def build(folder, size, needs):\n"
        '    (folder / "config.json").write_text("{}")\n'
    )
    monkeypatch.setattr(vlgraph.tiny, "__path__", [*vlgraph.tiny.__path__, str(tmp_path)])
    monkeypatch.setattr(vlgraph.tiny, "_FAMILIES", dict(vlgraph.tiny._FAMILIES))
    monkeypatch.setattr(vlgraph.tiny, "_discovered", False)
    try:
        assert "made_up" in family_modules()
        assert "made-up" in families()
        assert (ensure_checkpoint("made-up", tmp_path / "cache") / "config.json").exists()
    finally:
        sys.modules.pop("vlgraph.tiny.made_up", None)
        vars(vlgraph.tiny).pop("made_up", None)


def test_prune_removes_only_older_recipes_of_the_named_family(tmp_path: Path) -> None:
    from vlgraph.tiny import main

    current = ensure_checkpoint("git", tmp_path)
    older = [tmp_path / "git-tiny-000000000000", tmp_path / ".git-tiny-000000000000.lock"]
    kept = [
        tmp_path / "sdxl-tiny-000000000000",  # another family
        tmp_path / "git-full-000000000000",  # another size
        tmp_path / f".{current.name}.lock",
        tmp_path / f".{current.name}.x1y2",  # a build in progress
    ]
    for path in [*older, *kept]:
        path.mkdir() if not path.name.endswith(".lock") else path.touch()
    main(["git", "--cache-dir", str(tmp_path), "--prune"])
    assert not any(path.exists() for path in older)
    assert all(path.exists() for path in [*kept, current])
    assert is_built("git", tmp_path)


def test_building_several_at_once_gives_the_weights_of_one_at_a_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``vlgraph-tiny --jobs 2`` builds in spawned processes, each on one torch thread: the
    same bytes as one build after the other, and each folder printed in the order asked."""
    chosen = ["sdxl", "git"]
    vlgraph.tiny.main([*chosen, "--jobs", "2", "--cache-dir", str(tmp_path / "together")])
    printed = capsys.readouterr().out.split()
    vlgraph.tiny.main([*chosen, "--jobs", "1", "--cache-dir", str(tmp_path / "one")])
    for family, folder in zip(chosen, printed, strict=True):
        assert Path(folder) == checkpoint_folder(family, tmp_path / "together")
        alone = checkpoint_folder(family, tmp_path / "one")
        for weights in Path(folder).rglob("*.safetensors"):
            twin = alone / weights.relative_to(folder)
            assert (
                hashlib.sha256(weights.read_bytes()).digest()
                == hashlib.sha256(twin.read_bytes()).digest()
            ), weights
