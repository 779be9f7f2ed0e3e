"""``vlgraph-index`` against the running service: a folder indexed through the served
encoder (files found by search as kind ``indexed``, bad files refused alone, links out of the
folder left out), a second run that resumes (sends nothing again), the admin key required,
and ``--rebuild`` after a vector of another encoder."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.support.common import TEST_ADMIN_KEY, RunningApp, noise_image
from tests.support.world_checks import held_out
from vlgraph.image_store import ImageVector
from vlgraph.sqlite_image_store import SqliteImageStore

pytestmark = pytest.mark.integration


#: What the command reads from its environment, left out so that only its arguments count.
_COMMAND_ENV = ("API_KEY", "VLGRAPH_URL", "IMAGE_ROOT")


def run_index(app: RunningApp, *args: str, key: str | None = TEST_ADMIN_KEY):
    command = [sys.executable, "-m", "vlgraph.index_cli", "--url", app.url, "--batch", "4"]
    if key is not None:
        command += ["--api-key", key]
    env = {name: value for name, value in os.environ.items() if name not in _COMMAND_ENV}
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seven world pictures (one in a subfolder), a text file named .jpg, and a link to a
    picture outside the folder."""
    root = tmp_path_factory.mktemp("to-index")
    (root / "sub").mkdir()
    for index, image in enumerate(held_out(7, offset=600)):
        suffix = Path(image.filename).suffix
        target = root / ("sub" if index == 0 else ".") / f"picture{index}{suffix}"
        target.write_bytes(image.data)
    (root / "broken.jpg").write_text("not a picture")
    outside = root.parent / "outside.png"
    noise_image(4242).save(outside)
    (root / "escape.png").symlink_to(outside)
    return root


def test_a_folder_is_indexed_then_resumed(app: RunningApp, folder: Path) -> None:
    started = (datetime.now(UTC) - timedelta(milliseconds=1)).isoformat()
    first = run_index(app, str(folder))
    assert first.returncode == 1, first.stderr  # the broken file is refused
    assert "indexed 7, already indexed 0, refused 1" in first.stdout
    assert "refused broken.jpg" in first.stderr and "indexing" in first.stderr  # progress bar

    with httpx.Client(base_url=app.url, timeout=60) as client:
        response = client.post(
            "/api/search",
            json={"text": "a picture", "kinds": ["indexed"], "created_after": started},
        )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 7 and {r["kind"] for r in results} == {"indexed"}
    with httpx.Client(base_url=app.url, timeout=60) as client:
        stored = client.get(results[0]["links"]["image"])
    assert stored.status_code == 200
    names = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("picture*")}
    assert stored.content in names.values()

    again = run_index(app, str(folder), "--quiet")
    assert "indexed 0, already indexed 7, refused 1" in again.stdout, again.stdout


def test_indexing_needs_the_admin_key(app: RunningApp, folder: Path) -> None:
    refused = run_index(app, str(folder), key=None)
    assert refused.returncode == 1 and "401" in refused.stderr
    wrong = run_index(app, str(folder), key="not-the-key")
    assert wrong.returncode == 1 and "403" in wrong.stderr
    unreachable = subprocess.run(
        [sys.executable, "-m", "vlgraph.index_cli", "--url", "http://127.0.0.1:9", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr


def test_rebuild_encodes_again_what_another_encoder_indexed(app: RunningApp) -> None:
    with httpx.Client(base_url=app.url, timeout=120) as client:
        buffer = io.BytesIO()
        noise_image(4343).save(buffer, format="PNG")
        upload = client.post("/upload", files={"image": ("n.png", buffer.getvalue(), "image/png")})
    image_id = upload.json()["image_id"]
    store = SqliteImageStore(app.config.store.resolved_data_dir())
    (mine,) = [v for v in asyncio.run(store.vectors_since(0, 1_000_000)) if v.image_id == image_id]
    asyncio.run(store.set_vector(image_id, ImageVector(mine.vector * 0.5 + 0.1, "old-encoder")))
    try:
        rebuilt = run_index(app, "--rebuild")
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert "rebuilt 1 images" in rebuilt.stdout
        (now,) = [
            v
            for v in asyncio.run(store.vectors_since(mine.seq, 1_000_000))
            if v.image_id == image_id
        ]
        assert now.fingerprint == mine.fingerprint
        assert now.vector == pytest.approx(mine.vector, abs=1e-6)
    finally:
        asyncio.run(store.set_vector(image_id, ImageVector(mine.vector, mine.fingerprint)))
    nothing = run_index(app, "--rebuild")
    assert "rebuilt 0 images" in nothing.stdout
