"""A non-editable install (the Docker image's ``pip install .``) carries everything the
service reads at run time: the web page's assets and every tiny-checkpoint builder."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support.common import REPO_ROOT


def test_the_wheel_carries_the_page_and_every_package(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO_ROOT),
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("vlgraph-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    web = REPO_ROOT / "deployments" / "ingress" / "web"
    for asset in web.rglob("*"):
        if asset.is_file():
            assert str(asset.relative_to(REPO_ROOT)) in names, asset
    for package in ("deployments", "graphs", "vlgraph"):
        for module in (REPO_ROOT / package).rglob("*.py"):
            if "__pycache__" not in module.parts:
                assert str(module.relative_to(REPO_ROOT)) in names, module
