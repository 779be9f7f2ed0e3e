"""Weights that cannot be found fail fast, naming the model and how to provide it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from graphs.app import build_app
from tests.support.common import REPO_ROOT
from vlgraph.config import AppConfig
from vlgraph.errors import ModelUnavailableError
from vlgraph.model_source import resolve_model_path

HUB_ID = "Salesforce/blip-image-captioning-base"


@pytest.fixture
def empty_hub_cache(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))


def assert_explains(error: ModelUnavailableError, name: str = "blip") -> None:
    assert f"model '{name}'" in error.message
    for hint in ("local folder", "vlgraph-fetch", "configs/offline.yaml"):
        assert hint in error.message


def test_offline_hub_fails_at_once(empty_hub_cache, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(ModelUnavailableError) as raised:
        resolve_model_path("blip", HUB_ID, tmp_path)
    assert time.monotonic() - started < 5
    assert "HF_HUB_OFFLINE" in raised.value.message
    assert_explains(raised.value)


def test_unreachable_hub_fails_fast_at_build(empty_hub_cache, monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    config = AppConfig.model_validate(
        {
            "checkpoint_cache_dir": str(tmp_path),
            "models": {"blip": {"source": HUB_ID}},
            "access": {"mode": "open"},
        }
    )
    started = time.monotonic()
    with pytest.raises(ModelUnavailableError) as raised:
        build_app(config)
    # The probe's timeout bounds it even where DNS hangs instead of failing.
    assert time.monotonic() - started < 30
    assert "cannot be reached" in raised.value.message
    assert_explains(raised.value)


def test_missing_local_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError) as raised:
        resolve_model_path("blip", str(tmp_path / "nowhere"), tmp_path)
    assert "does not exist" in raised.value.message
    assert_explains(raised.value)


def test_unknown_tiny_family_lists_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="tiny:blip-caption"):
        resolve_model_path("blip", "tiny:nonsense", tmp_path)


def test_local_folder_is_used_as_is(checkpoint_cache: Path) -> None:
    built = resolve_model_path("blip", "tiny:blip-caption", checkpoint_cache)
    assert resolve_model_path("blip", built, checkpoint_cache) == built


def test_fetch_check_command_exits_1_with_instructions(empty_hub_cache, tmp_path: Path) -> None:
    document = yaml.safe_load((REPO_ROOT / "configs/local.yaml").read_text())
    document["applications"][0]["args"]["checkpoint_cache_dir"] = str(tmp_path)
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump(document))
    result = subprocess.run(
        [sys.executable, "-m", "vlgraph.model_source", "--check", str(profile)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "model 'blip'" in result.stderr and "vlgraph-fetch" in result.stderr


def run_check(cache_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vlgraph.model_source", "--check", "configs/offline.yaml"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env={**__import__("os").environ, "VLGRAPH_CACHE_DIR": str(cache_dir)},
    )


def test_fetch_check_accepts_the_offline_profile(checkpoint_cache: Path) -> None:
    result = run_check(checkpoint_cache)
    assert result.returncode == 0, result.stderr
    assert "blip: tiny:blip-caption available" in result.stdout


def test_fetch_check_trains_nothing(tmp_path: Path) -> None:
    """A check on an empty cache says what will be trained and writes nothing (training every
    family takes minutes; a check must not)."""
    result = run_check(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "blip: tiny:blip-caption not built yet: trained on first start" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_pickled_weights_are_skipped_only_beside_safetensors() -> None:
    from vlgraph.model_source import pickled_duplicates

    files = [
        "model.safetensors",
        "pytorch_model.bin",
        "1_Pooling/config.json",
        "2_Dense/pytorch_model.bin",
        "2_Dense/config.json",
        "0_CLIPModel/model.safetensors",
        "0_CLIPModel/pytorch_model.bin",
    ]
    assert pickled_duplicates(files) == ["pytorch_model.bin", "0_CLIPModel/pytorch_model.bin"]
