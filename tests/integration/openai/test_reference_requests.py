"""The OpenAI API reference's own example requests, stored verbatim in
``reference_requests.json``, replayed against the live app: each gets the answer (or the
refusal naming the field) it should. Only model names and outside URLs are swapped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.common import (
    RunningApp,
    jpeg_bytes,
    serving_image,
    world_image,
    world_scene,
)
from tests.support.openai_api import check_openai_error

pytestmark = pytest.mark.integration

STORED = json.loads((Path(__file__).with_name("reference_requests.json")).read_text())
IMAGE = jpeg_bytes(world_image(50))


def swapped(value: object, host: str) -> object:
    """``value`` with the reference's model names and outside URLs swapped."""
    if isinstance(value, dict):
        return {
            key: STORED["models"].get(item, item) if key == "model" else swapped(item, host)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [swapped(item, host) for item in value]
    if isinstance(value, str) and value.startswith("https://"):
        return f"{host}/{value.rpartition('/')[2]}"
    return value


@pytest.mark.parametrize("stored", STORED["requests"], ids=[r["name"] for r in STORED["requests"]])
def test_reference_requests_replay(app: RunningApp, stored: dict) -> None:
    with serving_image(IMAGE) as host, app.client() as http:
        response = http.post(stored["path"], json=swapped(stored["body"], host))
    if stored["status"] != 200:
        check_openai_error(response, stored["status"], stored["code"], stored["param"])
        return
    assert response.status_code == 200, response.text[:500]
    if stored["body"].get("stream"):
        lines = [line for line in response.text.splitlines() if line]
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
        assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
        return
    body = response.json()
    if stored["path"] == "/v1/chat/completions":
        (choice,) = body["choices"]
        assert isinstance(choice["message"]["content"], str), body
        assert choice["finish_reason"] in ("stop", "length") and body["usage"]["prompt_tokens"]
        if "image" in json.dumps(stored["body"]):  # the world model describes what it sees
            assert world_scene(50).colour in choice["message"]["content"], body
    elif stored["path"] == "/v1/embeddings":
        assert len(body["data"][0]["embedding"]) == 512
    else:
        assert body["data"][0]["b64_json"]
