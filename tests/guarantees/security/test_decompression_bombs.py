"""Security, section 3: decompression bombs through every image-taking route, refused from
the header, with the peak memory of the ingress and model replicas measured while they are
refused."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
from PIL import Image

from tests.support.common import TEST_MAX_IMAGE_BYTES, TEST_MAX_IMAGE_PIXELS, RunningApp
from tests.support.security import (
    FIGURES,
    UPLOAD_ROUTES,
    URL_ROUTES,
    Bomb,
    HostileTree,
    bomb_named,
    bombs,
    check,
    check_sent,
    encode_url,
    send_image,
    tally,
)

pytestmark = pytest.mark.integration

#: Peak resident memory a replica may gain while refusing every bomb.
BOMB_MEMORY_BOUND_MIB = 200
BOMB_ROUTES = [
    *UPLOAD_ROUTES,
    "similar-image-stream",
    *URL_ROUTES,
    "caption-path",
    "batch-caption",
]
BOMB_NAMES = [
    "png-9000",
    "png-15000",
    "png-50000-header",
    "jpeg-10000",
    "jpeg-65000",
    "webp-12000",
    "webp-16383",
]


def send_bomb(
    app: RunningApp, route: str, bomb: Bomb, hostile: str, tree: HostileTree, count: bool = True
) -> None:
    """Send ``bomb`` through ``route`` and check that it is refused from its header: 413
    ``image_too_many_pixels`` (415 for WebP on /upload, which stores JPEG and PNG only)."""
    sent = send_image(
        app,
        route,
        f"{bomb.name}.{bomb.format.lower()}",
        bomb.data,
        bomb.media_type,
        url=f"{hostile}/bomb/{bomb.name}",
        path=f"{tree.name}/{bomb.name}.img",
    )
    if route == "upload" and bomb.format == "WEBP":
        check_sent(sent, 415, "unsupported_media_type", "found WEBP", count=count)
    else:
        check_sent(sent, 413, "image_too_many_pixels", bomb.fragment, count=count)


def test_bombs_are_what_they_claim() -> None:
    """Each bomb is small on the wire and declares far more pixels than the limit."""
    pillow_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # read the headers past Pillow's own bomb limit too
    try:
        for bomb in bombs():
            with Image.open(io.BytesIO(bomb.data)) as image:
                width, height = image.size
            assert image.format == bomb.format, bomb.name
            assert width * height >= 40 * TEST_MAX_IMAGE_PIXELS, bomb.name
            assert len(bomb.data) < TEST_MAX_IMAGE_BYTES, bomb.name
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit
    tally(200, None)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("name", BOMB_NAMES)
@pytest.mark.parametrize("route", BOMB_ROUTES)
def test_decompression_bombs_are_refused_from_the_header(
    app: RunningApp, hostile: str, hostile_tree: HostileTree, route: str, name: str
) -> None:
    send_bomb(app, route, bomb_named(name), hostile, hostile_tree)


def replica_pids(app_name: str = "vlgraph") -> dict[str, int]:
    """PID of every live Serve replica of ``app_name`` (this session's Ray), by deployment."""
    prefix = f"ServeReplica:{app_name}:"
    try:
        from ray.util.state import list_actors

        actors = [
            (actor.class_name, actor.pid)
            for actor in list_actors(filters=[("state", "=", "ALIVE")], limit=10_000)
        ]
    except Exception:  # the state API needs the dashboard; the GCS actor table does not
        import ray._private.state

        table = ray._private.state.actors(actor_state_name="ALIVE")
        actors = [(info["ActorClassName"], info["Pid"]) for info in table.values()]
    return {
        name.removeprefix(prefix): pid for name, pid in actors if name.startswith(prefix) and pid
    }


def _status_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field_name} for {pid}")


class PeakMemory:
    """Peak resident memory of processes over a span: the kernel's own high-water mark
    (VmHWM, reset by writing 5 to /proc/PID/clear_refs), or where that is not permitted,
    VmRSS sampled every 5 ms from a thread."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.start_kib: dict[str, int] = {}
        self.peak_kib: dict[str, int] = {}
        self.method = "VmHWM after clear_refs"
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        try:
            for pid in self.pids.values():
                Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            self.method = "VmRSS sampled every 5 ms"
            self._sampler = threading.Thread(target=self._sample, daemon=True)
        self.start_kib = {name: _status_kib(pid, "VmRSS") for name, pid in self.pids.items()}
        self.peak_kib = dict(self.start_kib)
        if self._sampler is not None:
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            for name, pid in self.pids.items():
                self.peak_kib[name] = max(self.peak_kib[name], _status_kib(pid, "VmRSS"))

    def __exit__(self, *exc: object) -> None:
        if self._sampler is not None:
            self._stop.set()
            self._sampler.join()
        else:
            self.peak_kib = {name: _status_kib(pid, "VmHWM") for name, pid in self.pids.items()}

    def growth_mib(self) -> dict[str, float]:
        """Peak minus starting resident memory, per process, in MiB."""
        return {
            name: round((self.peak_kib[name] - self.start_kib[name]) / 1024, 1)
            for name in self.pids
        }


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_refusing_every_bomb_keeps_replica_memory_flat(
    app: RunningApp, hostile: str, hostile_tree: HostileTree
) -> None:
    """Every bomb through every route, and the compressed bodies by URL, while the ingress's
    and every model replica's peak resident memory is watched: none may grow by
    BOMB_MEMORY_BOUND_MIB (one 9000 x 9000 image decoded to RGB alone would take 232 MiB)."""
    pids = replica_pids()
    assert "ingress" in pids and len(pids) >= 2, pids
    sent = 0
    with PeakMemory(pids) as memory:
        for route in BOMB_ROUTES:
            for bomb in bombs():
                send_bomb(app, route, bomb, hostile, hostile_tree, count=False)
                sent += 1
        for path in ("/gzip.jpg", "/gzip-nested.jpg"):
            check(encode_url(app, hostile + path), 422, "url_fetch_failed", count=False)
            sent += 1
    growth = memory.growth_mib()
    models = {name: mib for name, mib in growth.items() if name != "ingress"}
    FIGURES.update(
        bomb_peak_rss_growth_mib=growth["ingress"],
        bomb_model_replicas_max_peak_rss_growth_mib=max(models.values()),
        bomb_requests_measured=sent,
        bomb_memory_method=memory.method,
        bomb_memory_bound_mib=BOMB_MEMORY_BOUND_MIB,
    )
    over = {name: mib for name, mib in growth.items() if mib >= BOMB_MEMORY_BOUND_MIB}
    assert not over, (over, growth)
    tally(200, None)
