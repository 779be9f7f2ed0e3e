"""CLIP embeddings through a real serve.run: text and image embeddings equal
``SentenceTransformer(path).encode`` on the same inputs (single, listed, concurrent), by URL
from a local server the test starts and by base64; ``GET /health``; the refusals."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sentence_transformers import SentenceTransformer

from tests.support.common import (
    TEST_MAX_ENCODE_ITEMS,
    TEST_MAX_IMAGE_BYTES,
    TEST_MAX_TEXT_CHARS,
    RunningApp,
    jpeg_bytes,
    noise_image,
    serving_on_image_host,
)
from vlgraph.images import decode_image
from vlgraph.tiny import ensure_checkpoint

pytestmark = pytest.mark.integration

TEXTS = ["a photo of a dog", "Ein Foto von einem Hund", "una foto de un perro", "the red car"]
IMAGES = {f"/noise{seed}.jpg": jpeg_bytes(noise_image(seed)) for seed in range(4)}


class _ImageServer(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path in IMAGES:
            body, kind = IMAGES[self.path], "image/jpeg"
        elif self.path == "/text":
            body, kind = b"not an image at all", "text/plain"
        elif self.path == "/to-metadata":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()
            return
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def image_host() -> Iterator[str]:
    """A local HTTP server with the test images; reachable only because the test config
    exempts its address (``image_fetch.allowed_networks``)."""
    with serving_on_image_host(_ImageServer) as url:
        yield url


@pytest.fixture(scope="module")
def references(checkpoint_cache: Path) -> dict[str, SentenceTransformer]:
    return {
        family: SentenceTransformer(str(ensure_checkpoint(family, checkpoint_cache)), device="cpu")
        for family in ("clip", "clip-multilingual")
    }


def post(app: RunningApp, route: str, body: dict):
    with app.client() as client:
        return client.post(route, json=body)


def vector_of(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array(response.json()["embedding"])


def assert_error(response, status: int, code: str, *fragments: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    for fragment in fragments:
        assert fragment in error["message"], error


def test_text_embeddings_equal_sentence_transformers(app: RunningApp, references) -> None:
    expected = references["clip-multilingual"].encode(TEXTS)
    single = post(app, "/encode_text", {"text": TEXTS[0]})
    body = single.json()
    assert body["dimension"] == 512 and body["normalized"] is False
    assert body["model"] == "clip_text" and len(body["embedding"]) == 512
    np.testing.assert_allclose(vector_of(single), expected[0], atol=1e-5)
    listed = post(app, "/encode_text", {"text": TEXTS})
    assert listed.status_code == 200, listed.text
    np.testing.assert_allclose(np.array(listed.json()["embeddings"]), expected, atol=1e-5)
    with ThreadPoolExecutor(len(TEXTS)) as pool:
        together = list(
            pool.map(lambda t: vector_of(post(app, "/encode_text", {"text": t})), TEXTS)
        )
    np.testing.assert_allclose(np.array(together), expected, atol=1e-5)


def test_image_embeddings_by_url_and_base64_equal_sentence_transformers(
    app: RunningApp, references, image_host: str
) -> None:
    paths = list(IMAGES)
    expected = references["clip"].encode([decode_image(IMAGES[path]) for path in paths])
    by_url = post(app, "/encode_image", {"image_url": f"{image_host}{paths[0]}"})
    np.testing.assert_allclose(vector_of(by_url), expected[0], atol=1e-5)
    assert by_url.json()["model"] == "clip_image"
    encoded = [base64.b64encode(IMAGES[path]).decode() for path in paths]
    by_b64 = post(app, "/encode_image", {"image_b64": encoded[1]})
    np.testing.assert_allclose(vector_of(by_b64), expected[1], atol=1e-5)
    listed = post(app, "/encode_image", {"image_url": [f"{image_host}{path}" for path in paths]})
    assert listed.status_code == 200, listed.text
    np.testing.assert_allclose(np.array(listed.json()["embeddings"]), expected, atol=1e-5)
    with ThreadPoolExecutor(len(paths)) as pool:
        together = list(
            pool.map(lambda b: vector_of(post(app, "/encode_image", {"image_b64": b})), encoded)
        )
    np.testing.assert_allclose(np.array(together), expected, atol=1e-5)


def test_normalize_gives_unit_vectors_whose_dot_product_is_the_cosine(
    app: RunningApp, image_host: str
) -> None:
    raw_text = vector_of(post(app, "/encode_text", {"text": TEXTS[0]}))
    unit_text = post(app, "/encode_text", {"text": TEXTS[0], "normalize": True})
    assert unit_text.json()["normalized"] is True
    unit_text = vector_of(unit_text)
    assert abs(np.linalg.norm(unit_text) - 1) < 1e-6
    np.testing.assert_allclose(unit_text, raw_text / np.linalg.norm(raw_text), atol=1e-6)
    raw_image = vector_of(post(app, "/encode_image", {"image_url": f"{image_host}/noise2.jpg"}))
    unit_image = vector_of(
        post(app, "/encode_image", {"image_url": f"{image_host}/noise2.jpg", "normalize": True})
    )
    cosine = raw_text @ raw_image / (np.linalg.norm(raw_text) * np.linalg.norm(raw_image))
    assert abs(unit_text @ unit_image - cosine) < 1e-6


def test_clip_embeddings_health(app: RunningApp) -> None:
    with app.client() as client:
        response = client.get("/health")
    assert response.status_code == 200 and response.json() == {"status": "healthy"}


@pytest.mark.parametrize(
    ("url", "status", "code", "fragment"),
    [
        ("http://10.0.0.1/cat.jpg", 403, "url_forbidden_address", "private"),
        ("http://169.254.169.254/latest/meta-data/", 403, "url_forbidden_address", "metadata"),
        ("http://[::1]/cat.jpg", 403, "url_forbidden_address", "loopback"),
        ("http://192.168.1.20/cat.jpg", 403, "url_forbidden_address", "private"),
        ("file:///etc/passwd", 400, "unsupported_url_scheme", "file"),
        ("ftp://example.com/cat.jpg", 400, "unsupported_url_scheme", "ftp"),
    ],
)
def test_unsafe_urls_are_refused(
    app: RunningApp, url: str, status: int, code: str, fragment: str
) -> None:
    assert_error(post(app, "/encode_image", {"image_url": url}), status, code, fragment)


def test_fetched_bodies_are_checked(app: RunningApp, image_host: str) -> None:
    redirect = post(app, "/encode_image", {"image_url": f"{image_host}/to-metadata"})
    assert_error(redirect, 403, "url_forbidden_address", "169.254.169.254")
    not_image = post(app, "/encode_image", {"image_url": f"{image_host}/text"})
    assert_error(not_image, 415, "unsupported_media_type")
    missing = post(app, "/encode_image", {"image_url": f"{image_host}/nothing.jpg"})
    assert_error(missing, 422, "url_fetch_failed", "404")
    listed = post(
        app, "/encode_image", {"image_url": [f"{image_host}/noise0.jpg", f"{image_host}/text"]}
    )
    assert_error(listed, 415, "unsupported_media_type", "item 1")


def test_base64_gets_the_upload_limits(app: RunningApp) -> None:
    big = io.BytesIO()
    noise_image(5, (400, 400)).save(big, format="PNG")
    assert len(big.getvalue()) > TEST_MAX_IMAGE_BYTES
    too_big = post(app, "/encode_image", {"image_b64": base64.b64encode(big.getvalue()).decode()})
    assert_error(too_big, 413, "image_too_large", str(TEST_MAX_IMAGE_BYTES))
    many_pixels = io.BytesIO()
    Image.new("L", (1500, 1500)).save(many_pixels, format="PNG")
    assert_error(
        post(
            app, "/encode_image", {"image_b64": base64.b64encode(many_pixels.getvalue()).decode()}
        ),
        413,
        "image_too_many_pixels",
    )
    assert_error(post(app, "/encode_image", {"image_b64": "not base64!"}), 400, "invalid_base64")
    text = base64.b64encode(b"hello, not an image").decode()
    assert_error(post(app, "/encode_image", {"image_b64": text}), 415, "unsupported_media_type")


def test_request_errors(app: RunningApp) -> None:
    both = post(app, "/encode_image", {"image_url": "http://x/a.jpg", "image_b64": "AAAA"})
    assert both.status_code == 422 and "exactly one" in both.text
    assert post(app, "/encode_image", {}).status_code == 422
    assert_error(post(app, "/encode_text", {"text": "  "}), 422, "empty_text")
    long_text = "word " * (TEST_MAX_TEXT_CHARS // 5 + 1)
    assert_error(
        post(app, "/encode_text", {"text": long_text}),
        422,
        "text_too_long",
        str(TEST_MAX_TEXT_CHARS),
    )
    assert_error(post(app, "/encode_text", {"text": ["a", ""]}), 422, "empty_text", "item 1")
    assert_error(
        post(app, "/encode_text", {"text": ["a"] * (TEST_MAX_ENCODE_ITEMS + 1)}),
        413,
        "too_many_inputs",
    )
    assert_error(post(app, "/encode_text", {"text": []}), 422, "empty_input")
    assert post(app, "/encode_text", {"texts": "a"}).status_code == 422
