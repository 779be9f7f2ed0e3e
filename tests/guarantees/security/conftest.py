"""Fixtures the security suite's modules share: the tally of every case, written once when
the package has run; the hostile image server; the hostile folder inside the image root; and
the second app (CORS opened for one origin, a short body timeout), started early."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.common import TEST_IMAGE_HOST, RunningApp, make_test_config
from tests.support.guarantees import record_figures
from tests.support.security import (
    ALLOWED_ORIGIN,
    CLIENTS,
    CODES,
    CORS_APP_NAME,
    CORS_ROUTE_PREFIX,
    FIGURES,
    GOOD_JPEG,
    STATUSES,
    STRICT_BODY_TIMEOUT_S,
    BackgroundApp,
    HostileHandler,
    HostileTree,
    bombs,
    hostile_bodies,
)


@pytest.fixture(scope="package", autouse=True)
def figures() -> Iterator[None]:
    """Writes what the package's nine modules measured, once, when the package ends (whatever
    ran of it)."""
    started = time.monotonic()
    yield
    for shared in CLIENTS.values():
        shared.close()
    record_figures(
        "security",
        "pytest tests/guarantees/security",
        cases=sum(STATUSES.values()),
        cases_by_status={str(status): n for status, n in sorted(STATUSES.items())},
        cases_by_code=dict(sorted(CODES.items())),
        # the whole package's wall time (the key's name predates the split into modules)
        module_wall_s=round(time.monotonic() - started, 1),
        **FIGURES,
    )


@pytest.fixture(scope="package")
def hostile() -> Iterator[str]:
    """The hostile server's base URL (the only address the test app may fetch from)."""
    hostile_bodies()  # built before serving, so that no answer waits for it
    server = ThreadingHTTPServer((TEST_IMAGE_HOST, 0), HostileHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://{TEST_IMAGE_HOST}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="package")
def hostile_tree(app: RunningApp) -> Iterator[HostileTree]:
    """FIFO, socket, links out of the root, a link loop, and the bombs as files."""
    base = app.image_root.parent
    name = f"security-{uuid.uuid4().hex[:8]}"
    folder = app.image_root / name
    folder.mkdir()
    os.mkfifo(folder / "pipe.jpg")  # opening it for reading would block without a writer
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(folder / "sock.jpg"))
    (folder / "outside_dir_link").symlink_to(base)
    (folder / "dangling.jpg").symlink_to(base / "no-such-file.jpg")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    (folder / "null.jpg").symlink_to("/dev/null")
    for bomb in bombs():
        (folder / f"{bomb.name}.img").write_bytes(bomb.data)
    # A sibling folder whose name starts with the root's: a string-prefix check would pass it.
    sibling = base / f"{app.image_root.name}2"
    sibling.mkdir(exist_ok=True)
    (sibling / "x.jpg").write_bytes(GOOD_JPEG)
    yield HostileTree(name=name, folder=folder)
    listener.close()
    shutil.rmtree(folder)
    shutil.rmtree(sibling)


@pytest.fixture(scope="package")
def strict_app(
    app: RunningApp, checkpoint_cache: Path, image_root: Path, tmp_path_factory
) -> Iterator[BackgroundApp]:
    """The app with BLIP only, ``cors_allow_origins: [ALLOWED_ORIGIN]`` and a short body
    timeout (STRICT_BODY_TIMEOUT_S; the shared app keeps the default, which a busy machine
    cannot trip), started early."""
    from vlgraph.config import AppConfig

    data_dir = tmp_path_factory.mktemp("cors-data")
    args = make_test_config(checkpoint_cache, image_root, data_dir).model_dump(mode="json")
    args["models"].update(blip2=None, gemma=None, intern_vlm=None)
    args.update(vqa=None, clip_image=None, clip_text=None, sd=None, sdxl=None)
    args["ingress"]["cors_allow_origins"] = [ALLOWED_ORIGIN]
    args["ingress"]["body_timeout_s"] = STRICT_BODY_TIMEOUT_S
    started = BackgroundApp(
        AppConfig.model_validate(args), CORS_APP_NAME, CORS_ROUTE_PREFIX, app.url
    )
    yield started
    started.delete()


@pytest.fixture(scope="package", autouse=True)
def _start_strict_app_early(request: pytest.FixtureRequest) -> None:
    """Starts the second app with the package's first integration test, not with the first
    test that needs it (when any test of the run does)."""
    needed = any(
        "strict_app" in getattr(item, "fixturenames", ()) for item in request.session.items
    )
    if needed and "app" in request.fixturenames:
        request.getfixturevalue("strict_app")
