"""The quick start's run command, ``serve run configs/offline.yaml``, driven as a user would.

These tests run last (see ``conftest.pytest_collection_modifyitems``): each ``serve run``
starts its own local Ray, so the session's instance is released first.

No test trusts whatever answers on port 8000, the offline profile's port: another server (a
developer's own ``serve run``, anything else) may hold it. The examples run against ``serve
run`` of a copy of ``configs/offline.yaml`` that differs only in ``http_options.port``, a free
port, while a decoy holds 8000 where it can and must see no request.
"""

from __future__ import annotations

import base64
import os
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.common import REPO_ROOT, free_port, release_ray
from tests.support.listening import listening_addresses, listening_sockets, port_holders
from tests.support.serve_process import ServeRun

pytestmark = pytest.mark.cli

#: The offline profile's own port (``http_options.port`` of ``configs/offline.yaml``).
OFFLINE_PORT = 8000
#: Ray's defaults for the dashboard (and its Jobs API) and each node's dashboard agent.
DASHBOARD_PORT = 8265
AGENT_PORT = 52365


@pytest.fixture
def user_env(checkpoint_cache: Path, tmp_path: Path) -> dict[str, str]:
    """A user's shell in the repository: default image root ./images, shared tiny cache, the
    upload store in a fresh folder (not the checkout's ./data)."""
    release_ray()
    env = {key: value for key, value in os.environ.items() if key != "IMAGE_ROOT"}
    return {
        **env,
        "VLGRAPH_CACHE_DIR": str(checkpoint_cache),
        "VLGRAPH_DATA_DIR": str(tmp_path / "data"),
        "RAY_DEDUP_LOGS": "0",
    }


def offline_profile_on(port: int, folder: Path) -> Path:
    """``configs/offline.yaml`` with ``http_options.port`` set to ``port``, nothing else
    changed, written into ``folder``: ``serve run`` of it is the quick start's command on a
    port of the test's own."""
    document = yaml.safe_load((REPO_ROOT / "configs/offline.yaml").read_text())
    document["http_options"]["port"] = port
    path = folder / "offline.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


class Decoy:
    """An HTTP server on a port that answers every request 404 and remembers it."""

    def __init__(self, port: int) -> None:
        requests: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def _refuse(self) -> None:
                requests.append(f"{self.command} {self.path}")
                self.send_error(404, "decoy: not the server under test")

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _refuse

            def log_message(self, *args) -> None:
                pass

        self.requests = requests
        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def port_held(port: int) -> Iterator[Decoy | None]:
    """``port`` held by another server for the block: a :class:`Decoy` of the test's own where
    the port is free (yielded), else whoever holds it already (None, and named on stdout)."""
    try:
        decoy = Decoy(port)
    except OSError:
        print(f"port {port} is already held: {'; '.join(port_holders(port))}")
        yield None
        return
    try:
        yield decoy
    finally:
        decoy.close()


def test_the_examples_target_their_own_server_not_port_8000(tmp_path: Path) -> None:
    """The profile copy differs from ``configs/offline.yaml`` in its port alone, and that port
    is free and not 8000. The decoy answers as a foreign server on 8000 would, so a test that
    still sent there would fail on its 404, and its holder is named in words."""
    port = free_port()
    copy = yaml.safe_load(offline_profile_on(port, tmp_path).read_text())
    original = yaml.safe_load((REPO_ROOT / "configs/offline.yaml").read_text())
    assert original["http_options"]["port"] == OFFLINE_PORT
    assert port != OFFLINE_PORT and not listening_sockets(port)
    assert copy["http_options"].pop("port") == port
    original["http_options"].pop("port")
    assert copy == original
    with port_held(OFFLINE_PORT) as decoy:
        holders = port_holders(OFFLINE_PORT)
        assert holders, "port 8000 is held"
        if decoy is not None:
            answer = httpx.get(f"http://127.0.0.1:{OFFLINE_PORT}/healthz", timeout=5)
            assert answer.status_code == 404 and decoy.requests == ["GET /healthz"]
            assert any(holder.startswith(f"pid {os.getpid()} (") for holder in holders), holders


def test_offline_profile_serves_the_readme_examples(
    user_env: dict[str, str], tmp_path: Path
) -> None:
    """The quick start's ``serve run configs/offline.yaml`` (on a port of the test's own) and
    every curl example of docs/api.md, while port 8000 answers 404 to anything sent there."""
    port = free_port()
    profile = offline_profile_on(port, tmp_path)
    url = f"http://127.0.0.1:{port}"
    with port_held(OFFLINE_PORT) as decoy:
        server = ServeRun(profile, {**user_env, "API_KEY": "readme-key"})
        try:
            server.wait_until_healthy(url, timeout_s=180)
            readme_examples(url)
        finally:
            server.stop()
        if decoy is not None:
            assert decoy.requests == [], f"requests went to port 8000: {decoy.requests}"


def readme_examples(url: str) -> None:
    """docs/api.md's curl examples of BLIP captioning by path and multi-model captioning, the
    cache reset of docs/operations.md, then the other areas' examples."""
    single = httpx.post(f"{url}/caption", json={"image_path": "example.jpg"}, timeout=60)
    assert single.status_code == 200, single.text
    assert set(single.json()) == {"image_path", "caption", "processing_time"}
    # The README's first request, answered as the README says: the offline models know the
    # world the example images are drawn from.
    assert single.json()["caption"] == "a red circle on a white background"
    body = {"image_paths": ["example1.jpg", "example2.jpg"]}
    for route in ("/batch-caption", "/async-batch-caption"):
        batch = httpx.post(f"{url}{route}", json=body, timeout=60)
        assert batch.status_code == 200, batch.text
        assert [item["caption"] for item in batch.json()["results"]] == [
            "a blue square on a black background",
            "a yellow star on a gray background",
        ]
    # docs/api.md, "Multi-model captioning": the two curl examples of multi-model captioning.
    examples = REPO_ROOT / "images"
    one = [("images", ("example.jpg", (examples / "example.jpg").read_bytes(), "image/jpeg"))]
    captions = httpx.post(
        f"{url}/api/caption-images",
        params={"model": "blip", "caption_prompt": "a photo of"},
        files=one,
        timeout=60,
    )
    assert captions.status_code == 200, captions.text
    assert captions.json()["results"][0]["caption"].startswith("a photo of")
    pair = [
        ("images", (name, (examples / name).read_bytes(), "image/jpeg"))
        for name in ("example1.jpg", "example2.jpg")
    ]
    collective = httpx.post(
        f"{url}/api/caption-collective-images",
        params={"model": "gemma"},
        files=pair,
        timeout=60,
    )
    assert collective.status_code == 200, collective.text
    assert collective.json()["count"] == 2
    # docs/api.md, "Cache": the offline profile caches in memory; the admin key resets it.
    again = httpx.post(
        f"{url}/api/caption-images",
        params={"model": "blip", "caption_prompt": "a photo of"},
        files=one,
        timeout=60,
    )
    assert again.json()["results"][0]["cache"] is True
    reset = httpx.post(
        f"{url}/api/admin/reset-cache", headers={"X-API-Key": "readme-key"}, timeout=30
    )
    assert reset.status_code == 200, reset.text
    assert reset.json()["backend"] == "memory" and reset.json()["scope"] == "replica"
    assert reset.json()["removed"] >= 2
    readme_examples_of_questions_generation_and_embeddings(url, examples)
    named_models_of_the_offline_profile(url, examples)
    assert httpx.get(f"{url}/docs", timeout=10).status_code == 200


#: The models the offline profile names itself (docs/models.md), with their capabilities.
OFFLINE_NAMED = {
    "smol": {"caption", "flag", "collective", "chat"},
    "qwen": {"caption", "flag", "collective", "chat"},
    "llava_ov": {"caption", "flag", "collective", "chat"},
    "paligemma": {"caption"},
    "siglip": {"embed_image", "embed_text"},
    "sd3": {"generate"},
    "pixart": {"generate"},
}


def named_models_of_the_offline_profile(url: str, examples: Path) -> None:
    """Every architecture the offline profile names is served beside the built-in models and
    answers through its API; those scaled to zero start on their first request (together)."""
    listed = {m["name"]: m for m in httpx.get(f"{url}/api/models", timeout=30).json()["models"]}
    for name, capabilities in OFFLINE_NAMED.items():
        assert set(listed[name]["capabilities"]) == capabilities, listed[name]
        assert listed[name]["random_weights"] is (name != "smol")
    photo = (examples / "example.jpg").read_bytes()

    def caption(name: str) -> httpx.Response:
        return httpx.post(
            f"{url}/api/caption-images",
            params={"model": name},
            files=[("images", ("example.jpg", photo, "image/jpeg"))],
            timeout=120,
        )

    def chat(name: str) -> httpx.Response:
        uri = "data:image/jpeg;base64," + base64.b64encode(photo).decode()
        content = [{"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": "?"}]
        body = {"model": name, "messages": [{"role": "user", "content": content}]}
        return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)

    def embed(name: str) -> httpx.Response:
        body = {"model": name, "input": ["a red circle", "ein roter Kreis"]}
        return httpx.post(f"{url}/v1/embeddings", json=body, timeout=120)

    def draw(name: str) -> httpx.Response:
        body = {"description": "a red circle", "model": name, "num_inference_steps": 2}
        return httpx.post(f"{url}/generate", json=body, timeout=120)

    calls = {
        "smol": caption,
        "qwen": chat,
        "llava_ov": caption,
        "paligemma": caption,
        "siglip": embed,
        "sd3": draw,
        "pixart": draw,
    }
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = {name: pool.submit(call, name) for name, call in calls.items()}
        answers = {name: future.result() for name, future in futures.items()}
    for name, answer in answers.items():
        assert answer.status_code == 200, (name, answer.text)
    # The one trained on the world says what the README's example image shows.
    assert answers["smol"].json()["results"][0]["caption"] == "a red circle on a white background"
    assert answers["qwen"].json()["choices"][0]["message"]["role"] == "assistant"
    assert len(answers["siglip"].json()["data"]) == 2
    assert answers["sd3"].json()["model"] == "sd3" and answers["pixart"].json()["width"] == 64


def readme_examples_of_questions_generation_and_embeddings(url: str, examples: Path) -> None:
    """docs/api.md's curl examples of visual question answering with uploads, image generation,
    CLIP embeddings and similar image generation, as HTTP calls."""
    photo = (examples / "example.jpg").read_bytes()
    upload = httpx.post(f"{url}/upload", files={"image": ("example.jpg", photo)}, timeout=60)
    assert upload.status_code == 200, upload.text
    image_id = upload.json()["image_id"]
    by_form = httpx.post(
        f"{url}/question",
        data={"question": "what is in the picture", "image_id": image_id},
        timeout=60,
    )
    by_json = httpx.post(
        f"{url}/question",
        json={"question": "is it outdoors", "image_id": image_id},
        timeout=60,
    )
    assert by_form.status_code == 200 and by_json.status_code == 200, by_json.text
    assert len(by_json.json()["history"]) == 2
    history = httpx.get(f"{url}/history", params={"limit": 5}, timeout=30).json()
    assert history["items"][0]["image_id"] == image_id

    text = httpx.post(
        f"{url}/encode_text",
        json={"text": "This is a sample text to encode", "normalize": True},
        timeout=60,
    )
    assert text.status_code == 200 and len(text.json()["embedding"]) == 512
    image = httpx.post(
        f"{url}/encode_image",
        json={"image_b64": base64.b64encode(photo).decode()},
        timeout=60,
    )
    assert image.status_code == 200 and image.json()["dimension"] == 512
    assert httpx.get(f"{url}/health", timeout=30).json() == {"status": "healthy"}

    generated = httpx.post(
        f"{url}/generate",
        json={"description": "a lighthouse at dusk", "num_inference_steps": 4, "seed": 42},
        timeout=120,
    )
    assert generated.status_code == 200, generated.text
    assert generated.json()["seed"] == 42 and generated.json()["image_id"]
    sunset = httpx.get(
        f"{url}/generate-image",
        params={"prompt": "A beautiful sunset over the ocean"},
        timeout=120,
    )
    assert sunset.status_code == 200 and sunset.json()["model"] == "sdxl"
    similar = httpx.post(
        f"{url}/api/similar-image", files={"image": ("example.jpg", photo)}, timeout=120
    )
    assert similar.status_code == 200 and similar.json()["caption"]
    stream = httpx.post(
        f"{url}/generate/stream",
        json={"description": "a lighthouse at dusk", "num_inference_steps": 8},
        timeout=120,
    )
    assert stream.text.count("event: step") == 8 and "event: image" in stream.text


def test_port_moves_the_api_and_ray_stays_closed(user_env: dict[str, str]) -> None:
    """Multi-model captioning's ``PORT``: ``PORT=N vlgraph-serve configs/offline.yaml`` listens
    on N.
    Safe defaults of the Ray it starts: the dashboard and its Jobs API on 127.0.0.1 only, and
    token authentication on, which guards the dashboard agent's job endpoint where it listens
    on the node's address."""
    env = {key: value for key, value in user_env.items() if not key.startswith("RAY_AUTH")}
    port = free_port()
    # Whatever held 8000 before (another server may) is not this test's business; no new
    # listener may appear there.
    before = set(listening_sockets(OFFLINE_PORT))
    server = ServeRun("configs/offline.yaml", {**env, "PORT": str(port)}, ("vlgraph-serve",))
    try:
        server.wait_until_healthy(f"http://127.0.0.1:{port}", timeout_s=180)
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30)
        assert health.status_code == 200, health.text
        new_on_8000 = set(listening_sockets(OFFLINE_PORT)) - before
        assert not new_on_8000, f"the API also listens on 8000: {port_holders(OFFLINE_PORT)}"

        assert listening_addresses(DASHBOARD_PORT) == {"127.0.0.1"}
        jobs = httpx.get(f"http://127.0.0.1:{DASHBOARD_PORT}/api/jobs/", timeout=10)
        assert jobs.status_code == 401, jobs.text
        agent_addresses = listening_addresses(AGENT_PORT)
        assert agent_addresses, "the dashboard agent is not listening"
        for address in agent_addresses:
            host = f"[{address}]" if ":" in address else address
            submit = httpx.post(
                f"http://{host}:{AGENT_PORT}/api/job_agent/jobs/",
                json={"entrypoint": "echo owned"},
                timeout=10,
            )
            assert submit.status_code == 401, (address, submit.text)
    finally:
        server.stop()


def test_a_bad_port_is_refused_before_anything_starts(user_env: dict[str, str]) -> None:
    result = subprocess.run(
        ["vlgraph-serve", "configs/offline.yaml"],
        cwd=REPO_ROOT,
        env={**user_env, "PORT": "eighty"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "PORT='eighty' is invalid" in result.stderr


def write_profile(tmp_path: Path, change) -> Path:
    document = yaml.safe_load((REPO_ROOT / "configs/offline.yaml").read_text())
    change(document["applications"][0]["args"])
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_bad_config_is_reported_with_the_field_name(user_env, tmp_path: Path) -> None:
    def break_batch_size(args: dict) -> None:
        args["models"]["blip"]["batching"]["max_batch_size"] = 0

    server = ServeRun(write_profile(tmp_path, break_batch_size), user_env)
    try:
        server.wait_for_output(r"models\.blip\.batching\.max_batch_size", timeout_s=90)
        assert "greater than or equal to 1" in server.output
    finally:
        server.stop()


def test_missing_weights_are_reported_fast(user_env, tmp_path: Path) -> None:
    def use_hub_id(args: dict) -> None:
        args["models"]["blip"]["source"] = "Salesforce/blip-image-captioning-base"

    env = {**user_env, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    server = ServeRun(write_profile(tmp_path, use_hub_id), env)
    try:
        server.wait_for_output(r"model 'blip'.*not in the local Hugging Face cache", 90)
        assert "vlgraph-fetch" in server.output
    finally:
        server.stop()


def test_the_gpu_profile_refuses_to_start_without_an_api_key(user_env, tmp_path: Path) -> None:
    """``serve run serve_config.yaml`` (the Docker image's profile) with no key: the build
    stops before any model is looked for, saying how to set a key or open the service."""
    document = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    document["http_options"].update(host="127.0.0.1", port=free_port())
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    env = {k: v for k, v in user_env.items() if k not in ("VLGRAPH_API_KEYS", "VLGRAPH_ACCESS")}
    server = ServeRun(path, env)
    try:
        server.wait_for_output(r"no API key is configured", timeout_s=90)
        assert "VLGRAPH_API_KEYS=name:key" in server.output
        assert "vlgraph-keys new NAME" in server.output and "VLGRAPH_ACCESS=open" in server.output
    finally:
        server.stop()
