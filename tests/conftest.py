"""Shared fixtures: tiny checkpoints, test images, and one Ray + Serve instance per session.

Integration tests talk HTTP to a real ``serve.run`` of the full application on tiny
checkpoints. Tests marked ``cli`` or ``cluster`` run last: they release the session's Ray
instance and drive the command line, or start clusters of their own. Helpers the tests import
live in ``tests/support/``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.support.access import KeyedApp, keyed_args
from tests.support.common import (
    RedisServer,
    RunningApp,
    free_port,
    jpeg_bytes,
    make_test_config,
    noise_image,
    release_ray,
    wait_until_healthy,
    world_image,
)
from tests.support.postgres import PostgresServer
from tests.support.world_checks import FIGURES
from vlgraph.config import DEFAULT_CHECKPOINT_CACHE
from vlgraph.tiny import ensure_checkpoint, families, is_built


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run command-line and cluster tests last: they need the session's Ray instance gone."""
    items.sort(key=lambda item: any(item.get_closest_marker(m) for m in ("cli", "cluster")))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the semantic tests' figures (accuracy on held-out world images)."""
    if FIGURES:
        terminalreporter.section("what the offline models got right (held-out world images)")
        for line in FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def checkpoint_cache() -> Path:
    """Folder of the tiny checkpoints, shared with ``serve run configs/offline.yaml`` and
    ``vlgraph-tiny`` (``$VLGRAPH_TEST_CACHE_DIR`` moves it). Every family is built (trained,
    the first time) before the first test that needs one, its progress on the terminal."""
    folder = Path(os.environ.get("VLGRAPH_TEST_CACHE_DIR") or DEFAULT_CHECKPOINT_CACHE)
    folder = folder.resolve()
    missing = [family for family in families() if not is_built(family, folder)]
    if missing:
        with contextlib.redirect_stderr(sys.__stderr__):
            for family in missing:
                ensure_checkpoint(family, folder)
    return folder


@pytest.fixture(scope="session")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image root holding good, bad and hostile files, and a file outside it."""
    base = tmp_path_factory.mktemp("images")
    root = base / "root"
    (root / "nested").mkdir(parents=True)
    for index in range(6):
        noise_image(index).save(root / f"noise{index}.jpg")
        world_image(index).save(root / f"world{index}.jpg")
    Image.new("RGB", (64, 48), (220, 20, 20)).save(root / "red.jpg")
    Image.new("RGB", (64, 48), (20, 20, 220)).save(root / "nested" / "blue.png")
    noise_image(7).save(root / "noise.webp", format="WEBP")
    noise_image(8).save(root / "really_png.jpg", format="PNG")
    noise_image(9).save(root / "animated.gif", format="GIF")
    (root / "not_an_image.jpg").write_text("this is text, not a JPEG")
    (root / "fake_magic.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    good = jpeg_bytes(noise_image(10, (320, 240)))
    (root / "truncated.jpg").write_bytes(good[: len(good) // 2])
    noise_image(11, (400, 400)).save(root / "big_file.png")  # ~480 kB > byte limit
    Image.new("L", (1500, 1500)).save(root / "many_pixels.png")  # 2.25 MP > pixel limit
    (base / "outside.jpg").write_bytes(jpeg_bytes(noise_image(12)))
    (root / "escape_link.jpg").symlink_to(base / "outside.jpg")
    (root / "inside_link.jpg").symlink_to(root / "red.jpg")
    return root


@pytest.fixture(scope="session")
def ray_instance() -> Iterator[int]:
    """One Ray instance and Serve HTTP proxy for the session; yields the HTTP port."""
    import ray
    from ray import serve

    port = free_port()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, namespace="vlgraph-tests")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    release_ray()


@pytest.fixture(scope="session")
def app(ray_instance: int, checkpoint_cache: Path, image_root: Path) -> Iterator[RunningApp]:
    """The full vlgraph application served by ``serve.run`` on tiny checkpoints."""
    from ray import serve

    from graphs.app import build_app

    config = make_test_config(checkpoint_cache, image_root, image_root.parent / "data")
    serve.run(build_app(config), name="vlgraph", route_prefix="/")
    running = RunningApp(
        url=f"http://127.0.0.1:{ray_instance}", image_root=image_root, config=config
    )
    wait_until_healthy(running.url)
    yield running
    import ray

    if ray.is_initialized():  # command-line tests may have released it already
        serve.delete("vlgraph")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the session (tests may stop and restart it)."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL with pgvector for the session, from the pgserver wheel's binaries
    (tests may stop, kill and restart it); its data is deleted at the end."""
    if importlib.util.find_spec("pgserver") is None:
        pytest.fail("pgserver is not installed (pip install -e '.[dev]')")
    server = PostgresServer()
    server.start()
    yield server
    server.remove()


@pytest.fixture(scope="module")
def keyed_app(
    ray_instance: int,
    checkpoint_cache: Path,
    image_root: Path,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[KeyedApp]:
    """A small app that requires API keys (tests/support/access.py), for the access tests
    and the security suite; one per module, removed when it ends, so that its replicas do
    not hold CPUs the next module's app needs."""
    from ray import serve

    from tests.support.access import APP_NAME, ROUTE_PREFIX

    folder = tmp_path_factory.mktemp("keyed")
    args = keyed_args(checkpoint_cache, image_root, folder / "data", redis_server.port)
    keyed = KeyedApp(
        url=f"http://127.0.0.1:{ray_instance}{ROUTE_PREFIX}", args=args, logs=folder / "logs"
    )
    keyed.deploy(args)
    wait_until_healthy(keyed.url)
    yield keyed
    import ray

    if ray.is_initialized():
        serve.delete(APP_NAME)
