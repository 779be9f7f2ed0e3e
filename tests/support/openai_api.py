"""What the /v1 tests share: the official ``openai`` clients pointed at a running app, images
as data: URIs, and the OpenAI error-shape check."""

from __future__ import annotations

import base64

import httpx
import openai
from PIL import Image

from tests.support.common import RunningApp, jpeg_bytes, world_image


def sync_client(app: RunningApp) -> openai.OpenAI:
    """The official client on the app's /v1 (no key is checked yet); no retries, so a
    failure shows as it is."""
    return openai.OpenAI(base_url=f"{app.url}/v1", api_key="unused", max_retries=0, timeout=120)


def async_client(app: RunningApp) -> openai.AsyncOpenAI:
    """The official async client on the app's /v1."""
    return openai.AsyncOpenAI(
        base_url=f"{app.url}/v1", api_key="unused", max_retries=0, timeout=120
    )


def data_uri(image: Image.Image | bytes, media_type: str = "image/jpeg") -> str:
    """``image`` as a base64 data: URI (JPEG unless bytes are given)."""
    data = image if isinstance(image, bytes) else jpeg_bytes(image)
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def world_uri(index: int) -> str:
    """A held-out world image as a data: URI."""
    return data_uri(world_image(index))


def image_message(text: str | None, *uris: str) -> dict:
    """A user message with ``uris`` as image parts, then ``text`` when given."""
    content: list[dict] = [{"type": "image_url", "image_url": {"url": uri}} for uri in uris]
    if text is not None:
        content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def check_openai_error(
    response: httpx.Response, status: int, code: str, param: str | None = None, *fragments: str
) -> dict:
    """Assert an error answer in OpenAI's shape with this status, code, param and message
    fragments; the body's error object."""
    assert response.status_code == status, (status, code, response.text[:500])
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code", "request_id"}, error
    assert error["code"] == code, error
    assert error["request_id"] == response.headers["x-request-id"], error
    expected_type = "invalid_request_error"
    if status >= 500:
        expected_type = "server_error"
    elif status in (401, 403, 404, 429):
        expected_type = {
            401: "authentication_error",
            403: "permission_error",
            404: "not_found_error",
            429: "rate_limit_error",
        }[status]
    assert error["type"] == expected_type, error
    if param is not None:
        assert error["param"] == param, error
    for fragment in fragments:
        assert fragment in error["message"], (fragment, error["message"])
    return error
