"""Helpers the security suite (``tests/guarantees/security/``) shares: checking answers
against the standard error body, the tally of cases by status and code that the package's
``figures`` fixture writes, hostile images and bombs, the hostile image server's handler, and
the second, small app some sections start."""

from __future__ import annotations

import base64
import contextlib
import gzip
import io
import struct
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import httpx
from PIL import Image

from tests.support.common import (
    TEST_MAX_IMAGE_BYTES,
    RunningApp,
    jpeg_bytes,
    noise_image,
    wait_until_healthy,
)

#: The one origin the CORS variant of the app allows.
ALLOWED_ORIGIN = "https://app.example"
#: The second app's body timeout: short, so that a slow upload is cut within seconds.
STRICT_BODY_TIMEOUT_S = 3.0
CORS_APP_NAME = "vlgraph-security-cors"
CORS_ROUTE_PREFIX = "/security-cors"

#: What the suite measured, written by ``record_figures`` when the package ends.
FIGURES: dict[str, Any] = {}
STATUSES: Counter[int] = Counter()
CLIENTS: dict[str, httpx.Client] = {}
CODES: Counter[str] = Counter()


# --- checking answers ---------------------------------------------------------------------


def check(
    response: httpx.Response, status: int, code: str | None, *fragments: str, count: bool = True
) -> dict:
    """Assert the exact status and, for an error, the standard body with the exact ``code``,
    the request id of the ``X-Request-ID`` header, and each fragment in the message. Every
    answer must carry ``X-Content-Type-Options: nosniff``. ``count``: tally it as one case."""
    assert response.status_code == status, (status, code, response.text[:500])
    assert response.headers.get("x-content-type-options") == "nosniff", response.headers
    body = response.json()
    if code is None:
        assert "error" not in body, body
    else:
        error = body["error"]
        request = getattr(response, "request", None)  # raw socket answers have none
        if request is not None and "/v1/" in request.url.path:  # OpenAI's shape (any prefix)
            assert set(body) == {"error"}, body
            assert set(error) == {"message", "type", "param", "code", "request_id"}, error
        else:
            assert set(body) == {"error", "detail"}, body
            assert set(error) == {"code", "message", "request_id"}, error
        assert error["code"] == code, error
        assert error["request_id"] == response.headers["x-request-id"], error
        for fragment in fragments:
            assert fragment in error["message"], (fragment, error["message"])
    if count:
        tally(status, code)
    return body


def check_item(
    response: httpx.Response, status: int, code: str, *fragments: str, count: bool = True
) -> None:
    """A 200 batch answer whose single item carries the error ``status`` / ``code``."""
    body = check(response, 200, None, count=False)
    (item,) = body["results"]
    assert item["caption"] is None, item
    error = item["error"]
    assert (error["status"], error["code"]) == (status, code), error
    for fragment in fragments:
        assert fragment in error["message"], (fragment, error["message"])
    if count:
        tally(status, code)


def tally(status: int, code: str | None) -> None:
    """Count one case by the status (and code) it asserted."""
    STATUSES[status] += 1
    CODES[code or "ok"] += 1


def client(app: RunningApp) -> contextlib.AbstractContextManager[httpx.Client]:
    """The suite's keep-alive client for ``app`` (hundreds of short requests), with a
    timeout short enough that a hung request fails its case."""
    if app.url not in CLIENTS:
        CLIENTS[app.url] = app.client(timeout=30.0)
    return contextlib.nullcontext(CLIENTS[app.url])


# --- images -------------------------------------------------------------------------------


def encoded(image: Image.Image, format_: str, **options: Any) -> bytes:
    """``image`` encoded as ``format_``."""
    buffer = io.BytesIO()
    image.save(buffer, format=format_, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk with its CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def zero_png(width: int, height: int, rows: int | None = None) -> bytes:
    """A greyscale PNG of zeros declaring ``width`` x ``height``, compressed row by row so
    that the decoded image is never held here. ``rows``: how many rows of pixel data to
    write (fewer than ``height``: only the header tells the truth)."""
    compressor = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then the pixels
    data = [compressor.compress(row) for _ in range(height if rows is None else rows)]
    data.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", b"".join(data))
        + png_chunk(b"IEND", b"")
    )


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small baseline JPEG whose SOF0 header declares ``width`` x ``height``."""
    data = bytearray(jpeg_bytes(noise_image(20, (16, 16))))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def webp_declaring(width: int, height: int) -> bytes:
    """A small lossless WebP whose VP8L header declares ``width`` x ``height`` (at most
    16384 each)."""
    data = bytearray(encoded(Image.new("RGB", (16, 16), (10, 20, 30)), "WEBP", lossless=True))
    assert data[12:16] == b"VP8L" and data[20] == 0x2F
    bits = struct.unpack("<I", data[21:25])[0]
    bits = (bits & ~((1 << 28) - 1)) | (width - 1) | ((height - 1) << 14)
    data[21:25] = struct.pack("<I", bits)
    return bytes(data)


def webp_lossy_declaring(width: int, height: int) -> bytes:
    """A small lossy WebP whose VP8 frame header declares ``width`` x ``height``."""
    data = bytearray(encoded(Image.new("RGB", (16, 16), (10, 20, 30)), "WEBP", quality=50))
    assert data[12:16] == b"VP8 " and data[23:26] == b"\x9d\x01\x2a"
    data[26:30] = struct.pack("<HH", width, height)
    return bytes(data)


@dataclass(frozen=True)
class Bomb:
    """An image whose header declares far more pixels than its bytes hold."""

    name: str
    data: bytes
    media_type: str
    fragment: str  # what the 413's message says

    @property
    def format(self) -> str:
        """PNG, JPEG or WEBP, from the media type."""
        return self.media_type.split("/")[1].upper()


@cache
def bombs() -> tuple[Bomb, ...]:
    """The bombs, built once: each under the byte limit, each far over the pixel limit."""
    safety = "over Pillow's safety limit"
    found = (
        # 81 MP of zeros: under Pillow's own limits, so only our header check refuses it.
        Bomb("png-9000", zero_png(9000, 9000), "image/png", "9000x9000 = 81000000 pixels"),
        # 225 MP of real zero rows (~220 kB): past Pillow's bomb limit too.
        Bomb("png-15000", zero_png(15000, 15000), "image/png", safety),
        # 2.5 gigapixels declared over one row of data.
        Bomb("png-50000-header", zero_png(50000, 50000, rows=1), "image/png", safety),
        Bomb("jpeg-10000", jpeg_declaring(10000, 10000), "image/jpeg", "10000x10000"),
        Bomb("jpeg-65000", jpeg_declaring(65000, 65000), "image/jpeg", safety),
        Bomb("webp-12000", webp_declaring(12000, 12000), "image/webp", "12000x12000"),
        Bomb("webp-16383", webp_lossy_declaring(16383, 16383), "image/webp", safety),
    )
    for bomb in found:
        assert len(bomb.data) < TEST_MAX_IMAGE_BYTES, (bomb.name, len(bomb.data))
    return found


def bomb_named(name: str) -> Bomb:
    """The bomb called ``name``."""
    return next(bomb for bomb in bombs() if bomb.name == name)


GOOD_JPEG = jpeg_bytes(noise_image(30))
GOOD_PNG = encoded(noise_image(31), "PNG")


# --- a hostile image server on TEST_IMAGE_HOST ---------------------------------------------


@dataclass
class Body:
    """What the hostile server answers for one path."""

    data: bytes
    content_type: str = "image/jpeg"
    headers: dict[str, str] = field(default_factory=dict)
    chunked: bool = False


def nested_gzip_bomb(inflated_bytes: int) -> bytes:
    """``inflated_bytes`` of zeros gzipped twice (send with ``Content-Encoding: gzip,
    gzip``): a few kB that a client inflating whole chunks turns into ``inflated_bytes``."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    inner = [compressor.compress(block) for _ in range(inflated_bytes >> 20)]
    inner.append(compressor.flush())
    return gzip.compress(b"".join(inner), compresslevel=9)


@cache
def hostile_bodies() -> dict[str, Body]:
    """Every body the hostile server can send, by path."""
    bodies = {
        "/image.jpg": Body(GOOD_JPEG),
        "/page.html": Body(b"<html><body>not an image</body></html>", "text/html"),
        "/big.jpg": Body(bytes(TEST_MAX_IMAGE_BYTES + 1)),
        "/big-chunked.jpg": Body(bytes(TEST_MAX_IMAGE_BYTES + 1), chunked=True),
        "/gzip.jpg": Body(gzip.compress(bytes(10 << 20)), headers={"Content-Encoding": "gzip"}),
        "/gzip-nested.jpg": Body(
            nested_gzip_bomb(400 << 20), headers={"Content-Encoding": "gzip, gzip"}
        ),
        "/deflate.jpg": Body(zlib.compress(GOOD_JPEG), headers={"Content-Encoding": "deflate"}),
        "/br.jpg": Body(b"\x0b\x02\x80garbage", headers={"Content-Encoding": "br"}),
    }
    for bomb in bombs():
        bodies[f"/bomb/{bomb.name}"] = Body(bomb.data, bomb.media_type)
    return bodies


class HostileHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        params = {key: values[0] for key, values in parse_qs(query).items()}
        if path == "/redirect":  # ?to=URL&status=302
            self._redirect(int(params.get("status", "302")), params["to"])
        elif path.startswith("/hop/"):  # an endless chain of redirects
            self._redirect(302, f"/hop/{int(path.rsplit('/', 1)[1]) + 1}")
        elif path.startswith("/hops-then-image/"):  # n redirects, then the image
            left = int(path.rsplit("/", 1)[1])
            self._redirect(302, f"/hops-then-image/{left - 1}" if left > 1 else "/image.jpg")
        elif path == "/no-location":
            self.send_response(302)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/slow.jpg":
            time.sleep(2.5)  # past the test config's read_timeout_s (1 s)
            self._send(Body(GOOD_JPEG))
        elif path.startswith("/status/"):
            self.send_response(int(path.rsplit("/", 1)[1]))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path in hostile_bodies():
            self._send(hostile_bodies()[path])
        else:
            self.send_error(404)

    def _redirect(self, status: int, location: str) -> None:
        self.send_response(status)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send(self, body: Body) -> None:
        self.send_response(200)
        self.send_header("Content-Type", body.content_type)
        for name, value in body.headers.items():
            self.send_header(name, value)
        if body.chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(body.data), 65536):
                piece = body.data[start : start + 65536]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(body.data)))
        self.end_headers()
        self.wfile.write(body.data)

    def log_message(self, *args: object) -> None:
        pass


def redirect_to(hostile: str, target: str, status: int = 302) -> str:
    """A URL of the hostile server that redirects (``status``) to ``target``."""
    return f"{hostile}/redirect?status={status}&to={quote(target, safe='')}"


def encode_url(app: RunningApp, url: str | list[str]) -> httpx.Response:
    """``POST /encode_image {"image_url": url}``."""
    with client(app) as http:
        return http.post("/encode_image", json={"image_url": url})


# --- what several sections send ------------------------------------------------------------


@dataclass(frozen=True)
class HostileTree:
    """A folder inside the image root holding hostile entries (the session's image root is
    shared, so the suite adds its own folder and removes nothing it did not create)."""

    name: str  # relative to the image root
    folder: Path


def case_ids(cases: list[tuple]) -> list[str]:
    """The test ids of a case table: each row's first item."""
    return [case[0] for case in cases]


@dataclass(frozen=True)
class Sent:
    """An answer, and whether it is a batch whose single item carries the error."""

    response: httpx.Response
    item: bool = False


def send_image(
    app: RunningApp, route: str, name: str, data: bytes, media_type: str, **where: Any
) -> Sent:
    """Send one image through ``route``: as an upload, base64, or (``path`` / ``url`` in
    ``where``) by the path or URL where the same bytes already are."""
    with client(app) as http:
        if route == "caption-images":
            files = [("images", (name, data, media_type))]
            return Sent(http.post("/api/caption-images", files=files))
        if route == "collective":  # a good image first: every image of a set must pass
            files = [
                ("images", ("good.jpg", GOOD_JPEG, "image/jpeg")),
                ("images", (name, data, media_type)),
            ]
            return Sent(
                http.post("/api/caption-collective-images", params={"model": "gemma"}, files=files)
            )
        if route == "upload":
            return Sent(http.post("/upload", files={"image": (name, data, media_type)}))
        if route == "encode-b64":
            encoded_data = base64.b64encode(data).decode("ascii")
            return Sent(http.post("/encode_image", json={"image_b64": encoded_data}))
        if route in ("similar-image", "similar-image-stream"):
            path = "/api/similar-image" + ("/stream" if route.endswith("stream") else "")
            return Sent(http.post(path, files={"image": (name, data, media_type)}))
        if route == "encode-url":
            return Sent(http.post("/encode_image", json={"image_url": where["url"]}))
        if route in OPENAI_ROUTES:
            url = where["url"] if route.endswith("-url") else data_uri(data, media_type)
            return Sent(openai_image_request(http, route, url))
        if route == "caption-path":
            return Sent(http.post("/caption", json={"image_path": where["path"]}))
        if route == "batch-caption":
            return Sent(http.post("/batch-caption", json={"image_paths": [where["path"]]}), True)
    raise AssertionError(f"unknown route {route}")


def check_sent(sent: Sent, status: int, code: str, *fragments: str, count: bool = True) -> None:
    """:func:`check` or, for a batch, :func:`check_item`."""
    if sent.item:
        check_item(sent.response, status, code, *fragments, count=count)
    else:
        check(sent.response, status, code, *fragments, count=count)


#: The /v1 routes that read images: by data: URI, or by URL (``-url``).
OPENAI_ROUTES = ("v1-chat", "v1-embed", "v1-chat-url", "v1-embed-url")
UPLOAD_ROUTES = [
    "caption-images",
    "collective",
    "upload",
    "encode-b64",
    "similar-image",
    "v1-chat",
    "v1-embed",
]
#: Every route that fetches an image by URL.
URL_ROUTES = ["encode-url", "v1-chat-url", "v1-embed-url"]


def data_uri(data: bytes, media_type: str) -> str:
    """``data`` as a base64 data: URI of ``media_type``."""
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def openai_image_request(http: httpx.Client, route: str, url: str) -> httpx.Response:
    """One image by ``url`` (http(s) or data:) through /v1: a chat message to gemma
    (``v1-chat*``) or an image embedding (``v1-embed*``)."""
    if route.startswith("v1-chat"):
        message = {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": "Describe this image."},
            ],
        }
        return http.post("/v1/chat/completions", json={"model": "gemma", "messages": [message]})
    return http.post(
        "/v1/embeddings", json={"model": "clip_image", "input": [url], "modality": "image"}
    )


def fetch_url(app: RunningApp, route: str, url: str) -> httpx.Response:
    """``url`` fetched through one of :data:`URL_ROUTES`."""
    if route == "encode-url":
        return encode_url(app, url)
    with client(app) as http:
        return openai_image_request(http, route, url)


SIMILAR_IMAGE = {"image": ("x.jpg", GOOD_JPEG, "image/jpeg")}


# --- a second, small app --------------------------------------------------------------------


class BackgroundApp:
    """A second, small app started by ``serve.run`` on a thread, so that it comes up while
    the rest of the suite runs; :meth:`url` waits for it."""

    def __init__(self, config: Any, name: str, route_prefix: str, base_url: str):
        self.name = name
        self._url = base_url + route_prefix
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(config, route_prefix), daemon=True)
        self._thread.start()

    def _run(self, config: Any, route_prefix: str) -> None:
        from ray import serve

        from graphs.app import build_app

        try:
            serve.run(build_app(config), name=self.name, route_prefix=route_prefix)
        except BaseException as error:  # surfaced by url()
            self._error = error

    def url(self) -> str:
        """The app's base URL, once every deployment of it is healthy."""
        self._thread.join(timeout=180)
        if self._error is not None:
            raise self._error
        wait_until_healthy(self._url)
        return self._url

    def delete(self) -> None:
        """Remove the app (after its start, whether or not it succeeded)."""
        from ray import serve

        self._thread.join(timeout=180)
        serve.delete(self.name)
