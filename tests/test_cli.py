"""The README's run command, ``serve run configs/offline.yaml``, driven as a user would.

These tests run last (see ``conftest.pytest_collection_modifyitems``): each ``serve run``
starts its own local Ray, so the session's instance is released first.
"""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import REPO_ROOT, free_port, release_ray, wait_until_healthy
from tests.listening import listening_addresses
from tests.serve_process import ServeRun

pytestmark = pytest.mark.cli

OFFLINE_URL = "http://127.0.0.1:8000"
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


def test_offline_profile_serves_the_readme_examples(user_env: dict[str, str]) -> None:
    """README, "Try it": the document 000 requests against ``serve run configs/offline.yaml``."""
    server = ServeRun("configs/offline.yaml", {**user_env, "API_KEY": "readme-key"})
    try:
        wait_until_healthy(OFFLINE_URL, timeout_s=180)
        single = httpx.post(
            f"{OFFLINE_URL}/caption", json={"image_path": "example.jpg"}, timeout=60
        )
        assert single.status_code == 200, single.text
        assert set(single.json()) == {"image_path", "caption", "processing_time"}
        body = {"image_paths": ["example1.jpg", "example2.jpg"]}
        for route in ("/batch-caption", "/async-batch-caption"):
            batch = httpx.post(f"{OFFLINE_URL}{route}", json=body, timeout=60)
            assert batch.status_code == 200, batch.text
            assert all(item["caption"] for item in batch.json()["results"])
        # README, "Multi-model captioning": document 001's two curl examples.
        examples = REPO_ROOT / "images"
        one = [("images", ("example.jpg", (examples / "example.jpg").read_bytes(), "image/jpeg"))]
        captions = httpx.post(
            f"{OFFLINE_URL}/api/caption-images",
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
            f"{OFFLINE_URL}/api/caption-collective-images",
            params={"model": "gemma"},
            files=pair,
            timeout=60,
        )
        assert collective.status_code == 200, collective.text
        assert collective.json()["count"] == 2
        # README, "Cache": the offline profile caches in memory; the admin key resets it.
        again = httpx.post(
            f"{OFFLINE_URL}/api/caption-images",
            params={"model": "blip", "caption_prompt": "a photo of"},
            files=one,
            timeout=60,
        )
        assert again.json()["results"][0]["cache"] is True
        reset = httpx.post(
            f"{OFFLINE_URL}/api/admin/reset-cache", headers={"X-API-Key": "readme-key"}, timeout=30
        )
        assert reset.status_code == 200, reset.text
        assert reset.json()["backend"] == "memory" and reset.json()["scope"] == "replica"
        assert reset.json()["removed"] >= 2
        readme_examples_of_documents_002_to_004(examples)
        assert httpx.get(f"{OFFLINE_URL}/docs", timeout=10).status_code == 200
    finally:
        server.stop()


def readme_examples_of_documents_002_to_004(examples: Path) -> None:
    """The README's curl examples of documents 002, 003 and 004, as HTTP calls."""
    photo = (examples / "example.jpg").read_bytes()
    upload = httpx.post(
        f"{OFFLINE_URL}/upload", files={"image": ("example.jpg", photo)}, timeout=60
    )
    assert upload.status_code == 200, upload.text
    image_id = upload.json()["image_id"]
    by_form = httpx.post(
        f"{OFFLINE_URL}/question",
        data={"question": "what is in the picture", "image_id": image_id},
        timeout=60,
    )
    by_json = httpx.post(
        f"{OFFLINE_URL}/question",
        json={"question": "is it outdoors", "image_id": image_id},
        timeout=60,
    )
    assert by_form.status_code == 200 and by_json.status_code == 200, by_json.text
    assert len(by_json.json()["history"]) == 2
    history = httpx.get(f"{OFFLINE_URL}/history", params={"limit": 5}, timeout=30).json()
    assert history["items"][0]["image_id"] == image_id

    text = httpx.post(
        f"{OFFLINE_URL}/encode_text",
        json={"text": "This is a sample text to encode", "normalize": True},
        timeout=60,
    )
    assert text.status_code == 200 and len(text.json()["embedding"]) == 512
    image = httpx.post(
        f"{OFFLINE_URL}/encode_image",
        json={"image_b64": base64.b64encode(photo).decode()},
        timeout=60,
    )
    assert image.status_code == 200 and image.json()["dimension"] == 512
    assert httpx.get(f"{OFFLINE_URL}/health", timeout=30).json() == {"status": "healthy"}

    generated = httpx.post(
        f"{OFFLINE_URL}/generate",
        json={"description": "a lighthouse at dusk", "num_inference_steps": 4, "seed": 42},
        timeout=120,
    )
    assert generated.status_code == 200, generated.text
    assert generated.json()["seed"] == 42 and generated.json()["image_id"]
    sunset = httpx.get(
        f"{OFFLINE_URL}/generate-image",
        params={"prompt": "A beautiful sunset over the ocean"},
        timeout=120,
    )
    assert sunset.status_code == 200 and sunset.json()["model"] == "sdxl"
    similar = httpx.post(
        f"{OFFLINE_URL}/api/similar-image", files={"image": ("example.jpg", photo)}, timeout=120
    )
    assert similar.status_code == 200 and similar.json()["caption"]
    stream = httpx.post(
        f"{OFFLINE_URL}/generate/stream",
        json={"description": "a lighthouse at dusk", "num_inference_steps": 8},
        timeout=120,
    )
    assert stream.text.count("event: step") == 8 and "event: image" in stream.text


def test_port_moves_the_api_and_ray_stays_closed(user_env: dict[str, str]) -> None:
    """Document 001's ``PORT``: ``PORT=N vlgraph-serve configs/offline.yaml`` listens on N.
    Safe defaults of the Ray it starts: the dashboard and its Jobs API on 127.0.0.1 only, and
    token authentication on, which guards the dashboard agent's job endpoint where it listens
    on the node's address."""
    env = {key: value for key, value in user_env.items() if not key.startswith("RAY_AUTH")}
    port = free_port()
    server = ServeRun("configs/offline.yaml", {**env, "PORT": str(port)}, ("vlgraph-serve",))
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", timeout_s=180)
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30)
        assert health.status_code == 200, health.text
        with pytest.raises(httpx.ConnectError):
            httpx.get(OFFLINE_URL, timeout=5)

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
