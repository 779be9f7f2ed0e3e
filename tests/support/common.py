"""What the tests share besides fixtures: the test application's limits and profile, test
images, free ports, a test image host, a real ``redis-server``, and waiting for health."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.harness import free_port
from vlgraph.config import AppConfig
from vlgraph.tiny.world import Scene

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Limits of the test application, small so that tests can cross them cheaply.
TEST_MAX_IMAGE_BYTES = 300_000
TEST_MAX_IMAGE_PIXELS = 2_000_000
TEST_MAX_BATCH_IMAGES = 8
TEST_MAX_UPLOAD_IMAGES = 4
TEST_MAX_PROMPT_CHARS = 200
TEST_MAX_QUESTION_CHARS = 120
TEST_MAX_HISTORY_PAGE = 10
TEST_MAX_TEXT_CHARS = 300
TEST_MAX_ENCODE_ITEMS = 6
TEST_MAX_STEPS = 200
TEST_MAX_IMAGE_SIDE = 128
TEST_ADMIN_KEY = "test-admin-key"
#: The loopback address the tests' own image servers bind; the only one the app may fetch from.
TEST_IMAGE_HOST = "127.0.0.2"


def noise_image(seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A reproducible random RGB image."""
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def world_scene(index: int) -> Scene:
    """The scene of :func:`world_image` ``index``: 24 different scenes, then again."""
    import random

    from vlgraph.tiny.world import HELD_OUT_SEED, all_scenes

    return random.Random(HELD_OUT_SEED + 500).sample(all_scenes(), 24)[index % 24]


def world_image(index: int, side: int = 96) -> Image.Image:
    """The ``index``-th of a fixed list of held-out world images, each a different scene (the
    offline models tell them apart, where noise images may all get one answer)."""
    import random

    from vlgraph.tiny.world import HELD_OUT_SEED, draw

    return draw(world_scene(index), random.Random(HELD_OUT_SEED + 600 + index), side)


def jpeg_bytes(image: Image.Image) -> bytes:
    """Encode ``image`` as JPEG."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def tiny_vlm_config(family: str, **fields: object) -> dict:
    """A tiny vision-language model deployment as the tests run it."""
    return {
        "family": family,
        "source": f"tiny:{family}",
        "device": "cpu",
        "torch_threads": 1,
        # A collective caption of three images ("a red circle and a blue square and ...")
        # takes 11 tokens.
        "generation": {"max_new_tokens": 16},
        "batching": {"max_batch_size": 8, "batch_wait_timeout_s": 0.05},
        "deployment": {"max_ongoing_requests": 16, "ray_actor_options": {"num_cpus": 0.1}},
        **fields,
    }


def tiny_generator_config(family: str, **fields: object) -> dict:
    """A tiny image generator as the tests run it: 64 px, 2 steps by default, up to 200 steps
    (long enough to cancel a stream midway)."""
    return {
        "family": family,
        "source": f"tiny:{family}",
        "device": "cpu",
        "torch_threads": 1,
        "default_steps": 2,
        "max_steps": TEST_MAX_STEPS,
        "default_size": 64,
        "max_height": TEST_MAX_IMAGE_SIDE,
        "max_width": TEST_MAX_IMAGE_SIDE,
        "batching": {"max_batch_size": 4, "batch_wait_timeout_s": 0.05},
        "deployment": {"max_ongoing_requests": 16, "ray_actor_options": {"num_cpus": 0.1}},
        **fields,
    }


def similar_image_app_args(checkpoint_cache: Path, generator: str) -> dict:
    """The standalone caption -> diffusion application as the tests serve it: the tiny BLIP
    captioner chained into the tiny ``generator`` (``sd`` or ``sdxl``)."""
    return {
        "checkpoint_cache_dir": str(checkpoint_cache),
        "captioner": {
            "source": "tiny:blip-caption",
            "device": "cpu",
            "torch_threads": 1,
            "deployment": {"max_ongoing_requests": 16, "ray_actor_options": {"num_cpus": 0.1}},
        },
        "generator": tiny_generator_config(generator),
        "access": {"mode": "open"},
    }


#: Uploads this close to a stored image name it in duplicate_of (the same picture re-encoded).
TEST_DUPLICATE_THRESHOLD = 0.995


def make_test_config(
    checkpoint_cache: Path, image_root: Path, data_dir: Path | None = None
) -> AppConfig:
    """The application as the integration tests run it: every model tiny, small limits; the
    store under ``data_dir`` (default: a new folder beside the image root, so that an app
    with other models, search off say, never writes into another app's store)."""
    if data_dir is None:
        data_dir = Path(tempfile.mkdtemp(prefix="data-", dir=image_root.parent))
    return AppConfig.model_validate(
        {
            "profile": "test",
            "checkpoint_cache_dir": str(checkpoint_cache),
            # Off here so that batched-equals-single tests compute every answer; the cache
            # has its own app in test_cache_http.py.
            "cache": {"backend": "none"},
            "admin": {"api_key": TEST_ADMIN_KEY, "debug": False},
            # As the offline profile: no key (the access tests run an app of their own).
            "access": {"mode": "open"},
            "ingress": {
                "image_root": str(image_root),
                "max_image_bytes": TEST_MAX_IMAGE_BYTES,
                "max_image_pixels": TEST_MAX_IMAGE_PIXELS,
                "max_batch_images": TEST_MAX_BATCH_IMAGES,
                "max_upload_images": TEST_MAX_UPLOAD_IMAGES,
                "max_prompt_chars": TEST_MAX_PROMPT_CHARS,
                "max_question_chars": TEST_MAX_QUESTION_CHARS,
                "max_history_page": TEST_MAX_HISTORY_PAGE,
                "max_text_chars": TEST_MAX_TEXT_CHARS,
                "max_encode_items": TEST_MAX_ENCODE_ITEMS,
                "deployment": {
                    "max_ongoing_requests": 64,
                    "request_timeout_s": 120,
                    "ray_actor_options": {"num_cpus": 0.1},
                },
            },
            "models": {
                "blip": {
                    "source": "tiny:blip-caption",
                    "device": "cpu",
                    "torch_threads": 1,
                    "generation": {"max_new_tokens": 12},
                    "batching": {"max_batch_size": 8, "batch_wait_timeout_s": 0.05},
                    "deployment": {
                        "max_ongoing_requests": 16,
                        "ray_actor_options": {"num_cpus": 0.5},
                    },
                },
                "blip2": tiny_vlm_config("blip2", caption_instruction=None),
                "gemma": tiny_vlm_config("gemma3"),
                "intern_vlm": tiny_vlm_config("internvl"),
            },
            "vqa": {
                "source": "tiny:blip-vqa",
                "device": "cpu",
                "torch_threads": 1,
                "generation": {"max_new_tokens": 6},
                "batching": {"max_batch_size": 8, "batch_wait_timeout_s": 0.05},
                "deployment": {"max_ongoing_requests": 16, "ray_actor_options": {"num_cpus": 0.1}},
            },
            "clip_image": {
                "source": "tiny:clip",
                "device": "cpu",
                "torch_threads": 1,
                "batching": {"max_batch_size": 8, "batch_wait_timeout_s": 0.05},
                "deployment": {"max_ongoing_requests": 16, "ray_actor_options": {"num_cpus": 0.1}},
            },
            "clip_text": {
                "source": "tiny:clip-multilingual",
                "device": "cpu",
                "torch_threads": 1,
                "batching": {"max_batch_size": 8, "batch_wait_timeout_s": 0.05},
                "deployment": {"max_ongoing_requests": 16, "ray_actor_options": {"num_cpus": 0.1}},
            },
            "sd": tiny_generator_config("sd"),
            "sdxl": tiny_generator_config("sdxl", guidance_scale=5.0),
            # The explicit switch that lets the tests' own HTTP servers, bound to 127.0.0.2, be
            # fetched; every other private address, 127.0.0.1 and "localhost" too, stays refused.
            "image_fetch": {
                "allowed_networks": [f"{TEST_IMAGE_HOST}/32"],
                "read_timeout_s": 1.0,
                "total_timeout_s": 3.0,
            },
            "store": {
                "backend": "sqlite",
                "data_dir": str(data_dir),
            },
            "search": {"duplicate_threshold": TEST_DUPLICATE_THRESHOLD},
        }
    )


@contextlib.contextmanager
def serving_on_image_host(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A test HTTP server on :data:`TEST_IMAGE_HOST`, the one address the test profile lets
    the app fetch from; yields its base URL."""
    server = ThreadingHTTPServer((TEST_IMAGE_HOST, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{TEST_IMAGE_HOST}:{server.server_address[1]}"
    finally:
        server.shutdown()


@contextlib.contextmanager
def serving_image(data: bytes, media_type: str = "image/jpeg") -> Iterator[str]:
    """``data`` served at every path of a test server on :data:`TEST_IMAGE_HOST`; yields
    its base URL."""

    class OneImage(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", media_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    with serving_on_image_host(OneImage) as url:
        yield url


def release_ray() -> None:
    """Shut Serve and Ray down if this process started them."""
    import ray
    from ray import serve

    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()


@dataclass(frozen=True)
class RunningApp:
    """The application under test, reachable over HTTP."""

    url: str
    image_root: Path
    config: AppConfig

    def client(self, timeout: float = 60.0) -> httpx.Client:
        """An HTTP client bound to the app."""
        return httpx.Client(base_url=self.url, timeout=timeout)


def wait_until_healthy(url: str, timeout_s: float = 120.0) -> None:
    """Poll ``GET /healthz`` until it answers 200: every model deployment reachable (``GET /``
    answers 200 as soon as the ingress runs, while models may still be starting)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not become healthy within {timeout_s} s")
        time.sleep(0.5)


class RedisServer:
    """A real ``redis-server`` on a free loopback port, stoppable and restartable. With
    ``aof_folder`` it keeps an append-only file there, fsynced on every write, so its data
    survives a restart (or a SIGKILL); without, it keeps nothing."""

    def __init__(self, aof_folder: Path | None = None) -> None:
        self.port = free_port()
        self.aof_folder = aof_folder
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start the server (same port and folder on a restart) and wait until it answers."""
        import redis

        if self.aof_folder is not None:
            self.aof_folder.mkdir(parents=True, exist_ok=True)
            persistence = ["--appendonly", "yes", "--appendfsync", "always"]
            persistence += ["--dir", str(self.aof_folder)]
        else:
            persistence = ["--appendonly", "no"]
        address = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        self._process = subprocess.Popen(
            ["redis-server", *address, *persistence],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown handler gets to write anything more."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def pause(self) -> None:
        """SIGSTOP: a hung server. The kernel still accepts connections on its port, but
        nothing answers until :meth:`resume`."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`: the server answers again, its data intact."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop the server (without ``aof_folder`` its data is gone)."""
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None
