"""Security suite: hostile input through every route of the session's real ``serve.run``.

Every case is one table row that asserts the exact status and error ``code`` of the standard
body ``{"error": {"code", "message", "request_id"}, "detail"}`` (and a fragment of the
message where it says why):

1. server-side path traversal on ``/caption`` and ``/batch-caption`` items;
2. SSRF through the one route that fetches a URL (``POST /encode_image``'s ``image_url``,
   single and listed), with a local server on ``TEST_IMAGE_HOST`` that redirects to forbidden
   targets and misbehaves (compressed bodies, oversize bodies, slowness);
3. decompression bombs through every image-taking route, refused from the header, with the
   peak memory of the ingress and model replicas measured while they are refused;
4. oversize and slow bodies over raw sockets, and the per-request count limits;
5. polyglot and mislabelled files, and how a stored one is served back;
6. overlong and empty text; 7. diffusion bounds; 8. the admin key;
9. CORS closed by default, and opened for exactly one origin by a second, small app.

The figures (cases by status, bomb memory growth, time to a 408) are written by
``tests.support.guarantees.record_figures("security", ...)`` when the module ends.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import io
import ipaddress
import json
import os
import select
import shutil
import socket
import struct
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from http.client import HTTPResponse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from PIL import Image

from tests.support.common import (
    REPO_ROOT,
    TEST_ADMIN_KEY,
    TEST_IMAGE_HOST,
    TEST_MAX_BATCH_IMAGES,
    TEST_MAX_ENCODE_ITEMS,
    TEST_MAX_IMAGE_BYTES,
    TEST_MAX_IMAGE_PIXELS,
    TEST_MAX_IMAGE_SIDE,
    TEST_MAX_PROMPT_CHARS,
    TEST_MAX_QUESTION_CHARS,
    TEST_MAX_STEPS,
    TEST_MAX_TEXT_CHARS,
    TEST_MAX_UPLOAD_IMAGES,
    RunningApp,
    jpeg_bytes,
    make_test_config,
    noise_image,
    wait_until_healthy,
)
from tests.support.guarantees import record_figures
from vlgraph.safe_fetch import address_class

pytestmark = pytest.mark.integration

#: Peak resident memory a replica may gain while refusing every bomb.
BOMB_MEMORY_BOUND_MIB = 200
#: The one origin the CORS variant of the app allows.
ALLOWED_ORIGIN = "https://app.example"
#: The second app's body timeout: short, so that a slow upload is cut within seconds.
STRICT_BODY_TIMEOUT_S = 3.0
EVIL_ORIGIN = "https://evil.example"
CORS_APP_NAME = "vlgraph-security-cors"
CORS_ROUTE_PREFIX = "/security-cors"

#: What the module measured, written by ``record_figures`` when it ends.
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
        assert set(body) == {"error", "detail"}, body
        error = body["error"]
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


@pytest.fixture(scope="module", autouse=True)
def figures() -> Iterator[None]:
    """Writes what the module measured once it ends (whatever ran of it)."""
    started = time.monotonic()
    yield
    for shared in CLIENTS.values():
        shared.close()
    record_figures(
        "security",
        "pytest tests/guarantees/test_security.py",
        cases=sum(STATUSES.values()),
        cases_by_status={str(status): n for status, n in sorted(STATUSES.items())},
        cases_by_code=dict(sorted(CODES.items())),
        module_wall_s=round(time.monotonic() - started, 1),
        **FIGURES,
    )


def client(app: RunningApp) -> contextlib.AbstractContextManager[httpx.Client]:
    """The module's keep-alive client for ``app`` (hundreds of short requests), with a
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


def _truncated_jpeg() -> bytes:
    whole = jpeg_bytes(noise_image(32, (320, 240)))
    return whole[: len(whole) // 2]


def _corrupt_png() -> bytes:
    """A PNG whose header is valid and whose pixel data is not zlib at all."""
    header = struct.pack(">IIBBBBB", 64, 48, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", os.urandom(64))
        + png_chunk(b"IEND", b"")
    )


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


class _HostileHandler(BaseHTTPRequestHandler):
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


@pytest.fixture(scope="module")
def hostile() -> Iterator[str]:
    """The hostile server's base URL (the only address the test app may fetch from)."""
    hostile_bodies()  # built before serving, so that no answer waits for it
    server = ThreadingHTTPServer((TEST_IMAGE_HOST, 0), _HostileHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://{TEST_IMAGE_HOST}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def redirect_to(hostile: str, target: str, status: int = 302) -> str:
    """A URL of the hostile server that redirects (``status``) to ``target``."""
    return f"{hostile}/redirect?status={status}&to={quote(target, safe='')}"


def encode_url(app: RunningApp, url: str | list[str]) -> httpx.Response:
    """``POST /encode_image {"image_url": url}``."""
    with client(app) as http:
        return http.post("/encode_image", json={"image_url": url})


# --- 1. server-side path traversal ---------------------------------------------------------


@dataclass(frozen=True)
class HostileTree:
    """A folder inside the image root holding hostile entries (the session's image root is
    shared, so the module adds its own folder and removes nothing it did not create)."""

    name: str  # relative to the image root
    folder: Path


@pytest.fixture(scope="module")
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


#: (id, path, status, code, message fragment); {root}, {base} and {tree} are filled in.
PATH_CASES = [
    ("dotdot-relative", "../outside.jpg", 403, "path_outside_image_root", "'..'"),
    ("dotdot-nested", "nested/../../outside.jpg", 403, "path_outside_image_root", "'..'"),
    ("dotdot-staying-inside", "nested/../red.jpg", 403, "path_outside_image_root", "'..'"),
    ("dotdot-many", "../" * 20 + "etc/passwd", 403, "path_outside_image_root", "'..'"),
    ("dotdot-in-absolute", "{root}/../outside.jpg", 403, "path_outside_image_root", "'..'"),
    ("dotdot-deep-absolute", "{root}/nested/../../outside.jpg", 403, "path_outside_image_root", ""),
    ("absolute-outside", "{base}/outside.jpg", 403, "path_outside_image_root", "outside"),
    ("etc-passwd", "/etc/passwd", 403, "path_outside_image_root", "outside the image root"),
    ("proc-environ", "/proc/self/environ", 403, "path_outside_image_root", "outside"),
    ("double-slash", "//etc/passwd", 403, "path_outside_image_root", "outside"),
    ("filesystem-root", "/", 403, "path_outside_image_root", "outside"),
    ("root-name-prefix", "{root}2/x.jpg", 403, "path_outside_image_root", "outside"),
    ("symlink-escape", "escape_link.jpg", 403, "path_outside_image_root", "outside"),
    (
        "dir-symlink-escape",
        "{tree}/outside_dir_link/outside.jpg",
        403,
        "path_outside_image_root",
        "",
    ),
    ("dangling-link-out", "{tree}/dangling.jpg", 403, "path_outside_image_root", "outside"),
    ("link-to-dev-null", "{tree}/null.jpg", 403, "path_outside_image_root", "outside"),
    ("nul-byte", "red.jpg\x00.png", 400, "invalid_path", "NUL"),
    ("nul-only", "\x00", 400, "invalid_path", "NUL"),
    ("blank-spaces", "   ", 400, "invalid_path", "empty"),
    ("blank-tab-newline", "\t\n", 400, "invalid_path", "empty"),
    ("url-encoded-dotdot", "%2e%2e/outside.jpg", 404, "image_not_found", "no file"),
    ("url-encoded-slash", "..%2foutside.jpg", 404, "image_not_found", "no file"),
    ("double-encoded", "%252e%252e%252foutside.jpg", 404, "image_not_found", "no file"),
    ("backslash-dotdot", "..\\outside.jpg", 404, "image_not_found", "no file"),
    ("backslash-absolute", "\\etc\\passwd", 404, "image_not_found", "no file"),
    ("windows-drive", "C:\\Windows\\win.ini", 404, "image_not_found", "no file"),
    ("fullwidth-dots", "\uff0e\uff0e/outside.jpg", 404, "image_not_found", "no file"),
    ("fullwidth-solidus", "..\uff0foutside.jpg", 404, "image_not_found", "no file"),
    ("tilde", "~/.ssh/id_rsa", 404, "image_not_found", "no file"),
    ("overlong-component", "a" * 300 + ".jpg", 404, "image_not_found", "too long"),
    ("overlong-path", "a/" * 2040 + "x.jpg", 404, "image_not_found", "too long"),
    ("under-a-file", "red.jpg/x.jpg", 404, "image_not_found", "no file"),
    ("symlink-loop", "{tree}/loop.jpg", 404, "image_not_found", "no file"),
    ("missing", "missing.jpg", 404, "image_not_found", "no file"),
    ("folder", "nested", 404, "not_a_file", "not a regular file"),
    ("folder-slash", "nested/", 404, "not_a_file", "not a regular file"),
    ("folder-dot", "nested/.", 404, "not_a_file", "not a regular file"),
    ("dot", ".", 404, "not_a_file", "not a regular file"),
    ("root-absolute", "{root}", 404, "not_a_file", "not a regular file"),
    ("fifo", "{tree}/pipe.jpg", 404, "not_a_file", "not a regular file"),
    ("unix-socket", "{tree}/sock.jpg", 404, "not_a_file", "not a regular file"),
]
#: Rows only one route answers this way: the single route's schema bounds the path.
CAPTION_ONLY_PATH_CASES = [
    ("empty-string", "", 422, "invalid_request", "image_path"),
    ("over-4096-chars", "a" * 5000, 422, "invalid_request", "image_path"),
]
BATCH_ONLY_PATH_CASES = [
    ("empty-string", "", 400, "invalid_path", "empty"),
    ("over-4096-chars", "a" * 5000, 404, "image_not_found", "too long"),
]


def filled(path: str, app: RunningApp, tree: HostileTree) -> str:
    """A table path with its placeholders filled in."""
    return path.format(root=app.image_root, base=app.image_root.parent, tree=tree.name)


def _case_ids(cases: list[tuple]) -> list[str]:
    return [case[0] for case in cases]


@pytest.mark.parametrize(
    ("case", "path", "status", "code", "fragment"),
    PATH_CASES + CAPTION_ONLY_PATH_CASES,
    ids=_case_ids(PATH_CASES + CAPTION_ONLY_PATH_CASES),
)
def test_caption_path_is_confined_to_the_image_root(
    app: RunningApp,
    hostile_tree: HostileTree,
    case: str,
    path: str,
    status: int,
    code: str,
    fragment: str,
) -> None:
    with client(app) as http:
        response = http.post("/caption", json={"image_path": filled(path, app, hostile_tree)})
    check(response, status, code, fragment)


@pytest.mark.parametrize(
    ("case", "path", "status", "code", "fragment"),
    PATH_CASES + BATCH_ONLY_PATH_CASES,
    ids=_case_ids(PATH_CASES + BATCH_ONLY_PATH_CASES),
)
def test_batch_caption_item_is_confined_to_the_image_root(
    app: RunningApp,
    hostile_tree: HostileTree,
    case: str,
    path: str,
    status: int,
    code: str,
    fragment: str,
) -> None:
    with client(app) as http:
        response = http.post(
            "/batch-caption", json={"image_paths": [filled(path, app, hostile_tree)]}
        )
    check_item(response, status, code, fragment)


# --- 2. SSRF through every route that fetches a URL ----------------------------------------

FORBIDDEN = "url_forbidden_address"

#: (url, status, code, message fragment): refused before any connection is made.
SSRF_URL_CASES = [
    # IPv4 loopback, in every spelling a resolver accepts
    ("http://127.0.0.1/x.jpg", 403, FORBIDDEN, "127.0.0.1, a loopback address"),
    ("http://127.0.0.1:8265/api/jobs/", 403, FORBIDDEN, "loopback"),  # Ray's Jobs API
    ("http://127.255.255.254/", 403, FORBIDDEN, "loopback"),
    ("http://127.0.0.3/", 403, FORBIDDEN, "loopback"),  # the exemption is one address
    ("http://127.1/", 403, FORBIDDEN, "resolves to 127.0.0.1, a loopback"),
    ("http://127.0.1/", 403, FORBIDDEN, "resolves to 127.0.0.1, a loopback"),
    ("http://2130706433/", 403, FORBIDDEN, "resolves to 127.0.0.1, a loopback"),
    ("http://0x7f000001/", 403, FORBIDDEN, "resolves to 127.0.0.1, a loopback"),
    ("http://0x7f.0.0.1/", 403, FORBIDDEN, "resolves to 127.0.0.1, a loopback"),
    ("http://017700000001/", 403, FORBIDDEN, "resolves to 127.0.0.1, a loopback"),
    ("http://0177.0.0.1/", 400, "invalid_url", "Invalid IPv4 address"),
    ("http://127.000.000.001/", 400, "invalid_url", "Invalid IPv4 address"),
    ("http://%31%32%37.0.0.1/", 403, FORBIDDEN, "127.0.0.1, a loopback"),
    ("http://127\u30020\u30020\u30021/", 403, FORBIDDEN, "127.0.0.1, a loopback"),
    ("HTTP://127.0.0.1/", 403, FORBIDDEN, "loopback"),
    ("http://127.0.0.1#@example.com/", 403, FORBIDDEN, "loopback"),
    # unspecified, private, link-local / cloud metadata, CGNAT, multicast, reserved
    ("http://0.0.0.0/", 403, FORBIDDEN, "0.0.0.0, an unspecified address"),
    ("http://0/", 403, FORBIDDEN, "resolves to 0.0.0.0, an unspecified"),
    ("http://10.0.0.1/", 403, FORBIDDEN, "10.0.0.1, a private address"),
    ("http://10.255.255.254/", 403, FORBIDDEN, "private"),
    ("http://172.16.0.1/", 403, FORBIDDEN, "172.16.0.1, a private address"),
    ("http://172.31.255.254/", 403, FORBIDDEN, "private"),
    ("http://192.168.0.1/", 403, FORBIDDEN, "192.168.0.1, a private address"),
    ("http://198.18.0.1/", 403, FORBIDDEN, "private"),
    ("http://169.254.169.254/latest/meta-data/", 403, FORBIDDEN, "link-local / cloud metadata"),
    ("http://169.254.170.2/v2/credentials", 403, FORBIDDEN, "link-local / cloud metadata"),
    ("http://2852039166/", 403, FORBIDDEN, "resolves to 169.254.169.254"),
    ("http://0xa9fea9fe/", 403, FORBIDDEN, "resolves to 169.254.169.254"),
    ("http://0xa9.0xfe.0xa9.0xfe/", 403, FORBIDDEN, "resolves to 169.254.169.254"),
    ("http://169.254.43518/", 403, FORBIDDEN, "resolves to 169.254.169.254"),
    ("http://0251.0376.0251.0376/", 400, "invalid_url", "Invalid IPv4 address"),
    ("http://100.64.0.1/", 403, FORBIDDEN, "CGNAT"),
    ("http://100.100.100.200/latest/meta-data/", 403, FORBIDDEN, "CGNAT"),  # Alibaba metadata
    ("http://224.0.0.1/", 403, FORBIDDEN, "multicast"),
    ("http://240.0.0.1/", 403, FORBIDDEN, "reserved"),
    ("http://255.255.255.255/", 403, FORBIDDEN, "reserved"),
    ("http://4294967295/", 403, FORBIDDEN, "resolves to 255.255.255.255, a reserved"),
    # IPv6 forms, and IPv6 addresses that embed a forbidden IPv4 address
    ("http://[::1]/", 403, FORBIDDEN, "::1, a loopback address"),
    ("http://[0:0:0:0:0:0:0:1]/", 403, FORBIDDEN, "::1, a loopback address"),
    ("http://[::]/", 403, FORBIDDEN, "::, an unspecified address"),
    ("http://[::ffff:127.0.0.1]/", 403, FORBIDDEN, "(embeds 127.0.0.1), a loopback"),
    ("http://[::ffff:7f00:1]/", 403, FORBIDDEN, "(embeds 127.0.0.1), a loopback"),
    ("http://[::ffff:169.254.169.254]/", 403, FORBIDDEN, "(embeds 169.254.169.254)"),
    ("http://[::ffff:a00:1]/", 403, FORBIDDEN, "(embeds 10.0.0.1), a private"),
    ("http://[::ffff:127.0.0.1%25eth0]/", 403, FORBIDDEN, "(embeds 127.0.0.1)"),
    ("http://[64:ff9b::a9fe:a9fe]/", 403, FORBIDDEN, "(embeds 169.254.169.254)"),
    ("http://[64:ff9b::169.254.169.254]/", 403, FORBIDDEN, "(embeds 169.254.169.254)"),
    ("http://[64:ff9b::7f00:1]/", 403, FORBIDDEN, "(embeds 127.0.0.1), a loopback"),
    ("http://[64:ff9b::7f00:2]/", 403, FORBIDDEN, "(embeds 127.0.0.2), a loopback"),
    ("http://[64:ff9b:1::a9fe:a9fe]/", 403, FORBIDDEN, "reserved"),
    ("http://[2002:7f00:1::]/", 403, FORBIDDEN, "(embeds 127.0.0.1), a loopback"),
    ("http://[2002:a9fe:a9fe::]/", 403, FORBIDDEN, "(embeds 169.254.169.254)"),
    ("http://[2002:c0a8:1::1]/", 403, FORBIDDEN, "(embeds 192.168.0.1), a private"),
    ("http://[::127.0.0.1]/", 403, FORBIDDEN, "reserved"),
    ("http://[::ffff:0:7f00:1]/", 403, FORBIDDEN, "reserved"),
    ("http://[fe80::1]/", 403, FORBIDDEN, "fe80::1, a link-local"),
    ("http://[fe80::1%25eth0]/", 403, FORBIDDEN, "fe80::1, a link-local"),
    ("http://[fd00:ec2::254]/latest/meta-data/", 403, FORBIDDEN, "private"),  # AWS IMDS v6
    ("http://[fc00::1]/", 403, FORBIDDEN, "fc00::1, a private address"),
    ("http://[fec0::1]/", 403, FORBIDDEN, "private"),
    ("http://[ff02::1]/", 403, FORBIDDEN, "multicast"),
    ("http://[2001:db8::1]/", 403, FORBIDDEN, "private"),
    ("http://[100::1]/", 403, FORBIDDEN, "reserved"),
    # schemes other than http(s)
    ("file:///etc/passwd", 400, "unsupported_url_scheme", "'file'"),
    ("file://localhost/etc/passwd", 400, "unsupported_url_scheme", "'file'"),
    ("FILE:///etc/passwd", 400, "unsupported_url_scheme", "'file'"),
    ("ftp://127.0.0.1/x.jpg", 400, "unsupported_url_scheme", "'ftp'"),
    ("gopher://127.0.0.1:6379/_INFO", 400, "unsupported_url_scheme", "'gopher'"),
    ("dict://127.0.0.1:11211/stat", 400, "unsupported_url_scheme", "'dict'"),
    ("data:image/png;base64,iVBORw0KGgo=", 400, "unsupported_url_scheme", "'data'"),
    ("javascript:alert(1)", 400, "unsupported_url_scheme", "'javascript'"),
    ("jar:http://example.com/x.jar!/", 400, "unsupported_url_scheme", "'jar'"),
    ("ws://127.0.0.1/", 400, "unsupported_url_scheme", "'ws'"),
    ("ldap://127.0.0.1/", 400, "unsupported_url_scheme", "'ldap'"),
    # credentials in the URL (and the parser confusions built on them)
    ("http://user:pass@example.com/x.jpg", 400, "invalid_url", "credentials"),
    ("http://user@example.com/x.jpg", 400, "invalid_url", "credentials"),
    ("http://example.com@127.0.0.1/", 400, "invalid_url", "credentials"),
    ("http://127.0.0.1:80@example.com/", 400, "invalid_url", "credentials"),
    ("http://1.1.1.1\\@127.0.0.1/", 400, "invalid_url", "credentials"),
    ("http://127.0.0.1%2f@example.com/", 400, "invalid_url", "credentials"),
    # malformed URLs: 400, never a 500
    ("//127.0.0.1/x.jpg", 400, "invalid_url", "absolute"),
    ("/etc/passwd", 400, "invalid_url", "absolute"),
    ("", 400, "invalid_url", "absolute"),
    ("http:///x.jpg", 400, "invalid_url", "no host"),
    ("http:127.0.0.1/", 400, "invalid_url", "no host"),
    ("http://[::1/", 400, "invalid_url", "not a valid URL"),
    ("http://exa mple.com/", 400, "invalid_url", "invalid host"),
    ("http://%2e%2e/", 400, "invalid_url", "invalid host"),
    ("http://127.0.0.2/x\r\nX-Injected: 1", 400, "invalid_url", "non-printable"),
    ("http://127.0.0.1\x00.example.com/", 400, "invalid_url", "non-printable"),
    ("http://xn--/", 400, "invalid_url", "not a valid URL"),
    ("http://127.0.0.2:65536/x.jpg", 400, "invalid_url", "port 65536"),
    ("http://127.0.0.2:0/x.jpg", 400, "invalid_url", "port 0"),
    ("http://127.0.0.2:1/" + "x" * 70_000, 400, "invalid_url", "characters; the limit is"),
    ("http://no-such-host.invalid/x.jpg", 422, "url_unresolvable", "cannot be resolved"),
]


def url_id(url: str) -> str:
    """A short printable test id for a URL row."""
    shown = url.encode("unicode_escape").decode("ascii")
    return (shown[:60] + f"...{len(url)}") if len(shown) > 60 else shown or "empty"


def _private_names() -> list[str]:
    """Host names this machine resolves only to addresses the fetcher refuses (computed
    here, since /etc/hosts differs between machines): localhost, its hostname, ..."""
    names = {"localhost", "localhost.", "LOCALHOST", "ip6-localhost", "ip6-loopback"}
    names |= {socket.gethostname(), socket.getfqdn(), "localhost.localdomain"}
    try:
        for line in Path("/etc/hosts").read_text().splitlines():
            names.update(line.split("#", 1)[0].split()[1:])
    except OSError:
        pass
    exempt = ipaddress.ip_network(f"{TEST_IMAGE_HOST}/32")
    private = []
    for name in sorted(names):
        try:
            infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            continue
        addresses = {ipaddress.ip_address(info[4][0].partition("%")[0]) for info in infos}
        if addresses and all(
            address_class(address) is not None and address not in exempt for address in addresses
        ):
            private.append(name)
    return private


PRIVATE_NAMES = _private_names()


@pytest.mark.parametrize("form", ["single", "listed"])
@pytest.mark.parametrize(
    ("url", "status", "code", "fragment"),
    SSRF_URL_CASES,
    ids=[url_id(c[0]) for c in SSRF_URL_CASES],
)
def test_encode_image_url_refuses_internal_and_malformed_urls(
    app: RunningApp, hostile: str, form: str, url: str, status: int, code: str, fragment: str
) -> None:
    if form == "single":
        check(encode_url(app, url), status, code, fragment)
    else:  # a good URL first: the bad item still refuses the request, named by its index
        check(encode_url(app, [f"{hostile}/image.jpg", url]), status, code, fragment, "item 1")


def test_encode_image_is_the_only_route_that_fetches_urls() -> None:
    """This section covers every route that fetches a URL: only ``/encode_image`` does. A
    new caller of the fetcher fails here until its route gets rows above."""
    callers = {
        str(path.relative_to(REPO_ROOT))
        for folder in ("deployments", "graphs", "vlgraph")
        for path in (REPO_ROOT / folder).rglob("*.py")
        if "_fetcher.fetch(" in path.read_text() or ".fetch(url" in path.read_text()
    }
    assert callers == {"deployments/embedding_routes.py"}, callers


@pytest.mark.parametrize("name", PRIVATE_NAMES)
def test_encode_image_url_refuses_names_resolving_to_private_addresses(
    app: RunningApp, name: str
) -> None:
    check(encode_url(app, f"http://{name}/x.jpg"), 403, FORBIDDEN, "resolves to")


def test_private_names_were_found() -> None:
    """The machine's own names must be among the rows (localhost at least)."""
    assert "localhost" in PRIVATE_NAMES, PRIVATE_NAMES
    tally(200, None)


#: (redirect target, status, code, fragment): every hop is checked like the first URL.
REDIRECT_TARGETS = [
    ("http://127.0.0.1/x.jpg", 403, FORBIDDEN, "loopback"),
    ("http://127.1/x.jpg", 403, FORBIDDEN, "loopback"),
    ("http://2130706433/x.jpg", 403, FORBIDDEN, "loopback"),
    ("http://0x7f000001/x.jpg", 403, FORBIDDEN, "loopback"),
    ("http://0.0.0.0/x.jpg", 403, FORBIDDEN, "unspecified"),
    ("http://10.0.0.1/x.jpg", 403, FORBIDDEN, "private"),
    ("http://172.16.0.1/x.jpg", 403, FORBIDDEN, "private"),
    ("http://192.168.0.1/x.jpg", 403, FORBIDDEN, "private"),
    ("http://169.254.169.254/latest/meta-data/", 403, FORBIDDEN, "cloud metadata"),
    ("http://2852039166/latest/meta-data/", 403, FORBIDDEN, "cloud metadata"),
    ("http://100.64.0.1/x.jpg", 403, FORBIDDEN, "CGNAT"),
    ("http://[::1]/x.jpg", 403, FORBIDDEN, "loopback"),
    ("http://[::]/x.jpg", 403, FORBIDDEN, "unspecified"),
    ("http://[::ffff:127.0.0.1]/x.jpg", 403, FORBIDDEN, "embeds 127.0.0.1"),
    ("http://[64:ff9b::a9fe:a9fe]/x.jpg", 403, FORBIDDEN, "embeds 169.254.169.254"),
    ("http://[fe80::1]/x.jpg", 403, FORBIDDEN, "link-local"),
    ("http://[fc00::1]/x.jpg", 403, FORBIDDEN, "private"),
    ("http://[2002:7f00:1::]/x.jpg", 403, FORBIDDEN, "embeds 127.0.0.1"),
    ("http://localhost/x.jpg", 403, FORBIDDEN, "the host 'localhost'"),
    ("//127.0.0.1/x.jpg", 403, FORBIDDEN, "loopback"),  # scheme-relative
    ("file:///etc/passwd", 400, "unsupported_url_scheme", "'file'"),
    ("gopher://127.0.0.1:6379/_INFO", 400, "unsupported_url_scheme", "'gopher'"),
    ("ftp://127.0.0.1/x.jpg", 400, "unsupported_url_scheme", "'ftp'"),
    ("http://user:pass@example.com/x.jpg", 400, "invalid_url", "credentials"),
    ("http://127.0.0.2:65536/x.jpg", 400, "invalid_url", "port 65536"),
    ("http://xn--/x.jpg", 400, "invalid_url", "not a valid URL"),
    ("http://[::1/x.jpg", 400, "invalid_url", "not a valid URL"),
    ("http://%ff/x.jpg", 400, "invalid_url", "invalid host"),
    *(
        (f"http://{name}/x.jpg", 403, FORBIDDEN, "resolves to")
        for name in PRIVATE_NAMES
        if name == socket.gethostname()
    ),
]


@pytest.mark.parametrize("redirect_status", [302, 307])
@pytest.mark.parametrize(
    ("target", "status", "code", "fragment"),
    REDIRECT_TARGETS,
    ids=[url_id(c[0]) for c in REDIRECT_TARGETS],
)
def test_redirects_to_forbidden_targets_are_refused(
    app: RunningApp,
    hostile: str,
    redirect_status: int,
    target: str,
    status: int,
    code: str,
    fragment: str,
) -> None:
    response = encode_url(app, redirect_to(hostile, target, redirect_status))
    check(response, status, code, "the redirect to", fragment)


#: (path on the hostile server, status, code, fragments): what a fetched answer may not do.
HOSTILE_ANSWER_CASES = [
    ("/image.jpg", 200, None, ()),  # control: the exempt server is reachable
    ("/hops-then-image/3", 200, None, ()),  # control: max_redirects hops are followed
    ("/hop/0", 422, "too_many_redirects", ("max_redirects (3)",)),
    ("/hops-then-image/4", 422, "too_many_redirects", ("max_redirects (3)",)),
    ("/redirect?to=%2Fredirect%3Fto%3D%252Fhop%252F0", 422, "too_many_redirects", ()),
    ("/no-location", 422, "url_fetch_failed", ("without a Location",)),
    ("/status/500", 422, "url_fetch_failed", ("answered 500",)),
    ("/status/404", 422, "url_fetch_failed", ("answered 404",)),
    ("/page.html", 415, "unsupported_media_type", ("not a known image format",)),
    ("/big.jpg", 413, "image_too_large", ("Content-Length",)),
    ("/big-chunked.jpg", 413, "image_too_large", ("streaming",)),
    ("/gzip.jpg", 422, "url_fetch_failed", ("Content-Encoding: gzip",)),
    ("/gzip-nested.jpg", 422, "url_fetch_failed", ("Content-Encoding: gzip, gzip",)),
    ("/deflate.jpg", 422, "url_fetch_failed", ("Content-Encoding: deflate",)),
    ("/br.jpg", 422, "url_fetch_failed", ("Content-Encoding: br",)),
    ("/slow.jpg", 422, "url_timeout", ("read_timeout_s",)),
]


@pytest.mark.parametrize(
    ("path", "status", "code", "fragments"),
    HOSTILE_ANSWER_CASES,
    ids=[url_id(c[0]) for c in HOSTILE_ANSWER_CASES],
)
def test_hostile_answers_are_refused(
    app: RunningApp, hostile: str, path: str, status: int, code: str | None, fragments: tuple
) -> None:
    body = check(encode_url(app, hostile + path), status, code, *fragments)
    if code is None:
        assert body["dimension"] == 512 and len(body["embedding"]) == 512


def test_https_to_a_plain_server_fails_cleanly(app: RunningApp, hostile: str) -> None:
    url = hostile.replace("http://", "https://") + "/image.jpg"
    check(encode_url(app, url), 422, "url_fetch_failed", "could not fetch")


# --- 3. decompression bombs through every image-taking route -------------------------------


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


UPLOAD_ROUTES = ["caption-images", "collective", "upload", "encode-b64", "similar-image"]
BOMB_ROUTES = [
    *UPLOAD_ROUTES,
    "similar-image-stream",
    "encode-url",
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


# --- 4. oversize bodies, slow uploads, and per-request counts ------------------------------


@dataclass(frozen=True)
class RawAnswer:
    """An HTTP answer read off a raw socket, and when its status line arrived."""

    status_code: int
    headers: httpx.Headers
    content: bytes
    elapsed_s: float

    @property
    def text(self) -> str:
        """The body as text."""
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.content)


def raw_exchange(
    url: str, head: str, chunks: Iterable[tuple[float, bytes]] = (), timeout_s: float = 15
) -> RawAnswer:
    """Send ``head`` (request line and headers) over a raw socket to the server of ``url``,
    then each chunk after its delay, stopping as soon as the server starts answering; read the
    answer."""
    address = urlsplit(url)
    started = time.monotonic()
    with socket.create_connection((address.hostname, address.port), timeout=timeout_s) as sock:
        sock.sendall(head.encode("latin-1"))
        for delay, chunk in chunks:
            if select.select([sock], [], [], delay)[0]:
                break  # the server answered: stop sending
            if time.monotonic() - started > timeout_s:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        answer = HTTPResponse(sock)
        answer.begin()
        elapsed = time.monotonic() - started
        content = answer.read()
        headers = httpx.Headers(answer.getheaders())
    return RawAnswer(answer.status, headers, content, elapsed)


def request_head(route: str, content_type: str, length: int | None) -> str:
    """A POST request line and headers; chunked when ``length`` is None."""
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return (
        f"POST {route} HTTP/1.1\r\nHost: {TEST_IMAGE_HOST}\r\nContent-Type: {content_type}\r\n"
        f"{framing}\r\nConnection: close\r\n\r\n"
    )


MULTIPART = "multipart/form-data; boundary=sec"
#: The start of a multipart body whose file part never ends.
MULTIPART_OPENING = (
    b'--sec\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
    b"Content-Type: image/jpeg\r\n\r\n"
)


@pytest.mark.parametrize(
    ("route", "content_type", "over_by"),
    [
        ("/upload", MULTIPART, 1),
        ("/api/caption-images", MULTIPART, 1),
        ("/api/caption-collective-images?model=gemma", MULTIPART, 1),
        ("/api/similar-image", MULTIPART, 1),
        ("/encode_image", "application/json", 1),
        ("/encode_text", "application/json", 1),
        ("/caption", "application/json", 1),
        ("/batch-caption", "application/json", 1),
        ("/generate", "application/json", 1),
        ("/question", "application/x-www-form-urlencoded", 1),
        ("/upload", MULTIPART, 10**15),
    ],
)
def test_declared_oversize_body_is_refused_before_it_is_sent(
    app: RunningApp, route: str, content_type: str, over_by: int
) -> None:
    """Only the headers go out: the 413 must come back without the body (a server waiting
    for it would answer 408 after the body timeout instead)."""
    limit = app.config.ingress.body_limit()
    answer = raw_exchange(app.url, request_head(route, content_type, limit + over_by))
    check(answer, 413, "body_too_large", f"{limit}-byte limit")
    # At once: a server waiting for the body would answer after the body timeout (30 s).
    assert answer.elapsed_s < 2, answer.elapsed_s
    FIGURES["oversize_header_max_answer_s"] = round(
        max(answer.elapsed_s, FIGURES.get("oversize_header_max_answer_s", 0.0)), 3
    )


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@pytest.mark.parametrize(
    ("route", "content_type", "opening", "filler"),
    [
        ("/encode_image", "application/json", b'{"image_b64": "', b"A"),
        ("/upload", MULTIPART, MULTIPART_OPENING, b"\xff"),
        ("/api/caption-images", MULTIPART, MULTIPART_OPENING.replace(b"image", b"images"), b"x"),
    ],
)
def test_chunked_body_crossing_the_limit_is_refused(
    app: RunningApp, route: str, content_type: str, opening: bytes, filler: bytes
) -> None:
    limit = app.config.ingress.body_limit()
    piece = filler * 65536
    chunks = [(0.0, _chunk(opening))] + [(0.0, _chunk(piece))] * (limit // len(piece) + 8)
    answer = raw_exchange(app.url, request_head(route, content_type, None), chunks)
    check(answer, 413, "body_too_large", f"{limit}-byte limit")


@pytest.mark.parametrize(
    ("route", "content_type", "opening"),
    [
        ("/upload", MULTIPART, MULTIPART_OPENING),
        ("/encode_image", "application/json", b'{"image_b64": "'),
    ],
)
def test_slow_upload_is_cut_at_the_body_timeout(
    strict_app: BackgroundApp, route: str, content_type: str, opening: bytes
) -> None:
    """Headers, then one byte every 0.5 s: 408 once the body timeout passes, not later (on the
    second app, whose body timeout is short)."""
    url = strict_app.url()
    chunks = [(0.0, opening)] + [(0.5, b"A")] * 60
    head = request_head(urlsplit(url).path + route, content_type, 100_000)
    answer = raw_exchange(url, head, chunks)
    check(answer, 408, "body_timeout", f"within {STRICT_BODY_TIMEOUT_S:g} s")
    assert STRICT_BODY_TIMEOUT_S - 0.5 <= answer.elapsed_s <= STRICT_BODY_TIMEOUT_S + 3, answer
    FIGURES["slow_upload_408_after_s"] = round(
        max(answer.elapsed_s, FIGURES.get("slow_upload_408_after_s", 0.0)), 2
    )


BIG_PNG = encoded(noise_image(33, (400, 400)), "PNG")


@pytest.mark.parametrize("route", [*UPLOAD_ROUTES, "encode-url", "caption-path", "batch-caption"])
def test_image_over_the_byte_limit_is_refused(app: RunningApp, hostile: str, route: str) -> None:
    assert len(BIG_PNG) > TEST_MAX_IMAGE_BYTES
    sent = send_image(
        app, route, "big.png", BIG_PNG, "image/png", url=f"{hostile}/big.jpg", path="big_file.png"
    )
    check_sent(sent, 413, "image_too_large", str(TEST_MAX_IMAGE_BYTES))


def _uploads(count: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (f"i{index}.jpg", GOOD_JPEG, "image/jpeg")) for index in range(count)]


#: (id, route, request keywords, status, code, fragment)
COUNT_CASES = [
    (
        "caption-images-too-many",
        "/api/caption-images",
        {"files": _uploads(TEST_MAX_UPLOAD_IMAGES + 1)},
        413,
        "too_many_images",
        f"the limit is {TEST_MAX_UPLOAD_IMAGES}",
    ),
    (
        "collective-too-many",
        "/api/caption-collective-images?model=gemma",
        {"files": _uploads(TEST_MAX_UPLOAD_IMAGES + 1)},
        413,
        "too_many_images",
        f"the limit is {TEST_MAX_UPLOAD_IMAGES}",
    ),
    (
        "batch-too-many-paths",
        "/batch-caption",
        {"json": {"image_paths": ["red.jpg"] * (TEST_MAX_BATCH_IMAGES + 1)}},
        413,
        "too_many_images",
        f"the limit is {TEST_MAX_BATCH_IMAGES}",
    ),
    (
        "async-batch-too-many-paths",
        "/async-batch-caption",
        {"json": {"image_paths": ["missing.jpg"] * 1000}},
        413,
        "too_many_images",
        "1000 image paths",
    ),
    (
        "encode-text-too-many",
        "/encode_text",
        {"json": {"text": ["a"] * (TEST_MAX_ENCODE_ITEMS + 1)}},
        413,
        "too_many_inputs",
        f"the limit is {TEST_MAX_ENCODE_ITEMS}",
    ),
    (
        "encode-image-b64-too-many",
        "/encode_image",
        {"json": {"image_b64": ["AAAA"] * (TEST_MAX_ENCODE_ITEMS + 1)}},
        413,
        "too_many_inputs",
        f"the limit is {TEST_MAX_ENCODE_ITEMS}",
    ),
    (
        "encode-image-url-too-many",
        "/encode_image",
        {"json": {"image_url": ["http://127.0.0.1/x.jpg"] * (TEST_MAX_ENCODE_ITEMS + 1)}},
        413,
        "too_many_inputs",
        f"the limit is {TEST_MAX_ENCODE_ITEMS}",
    ),
    ("encode-text-empty-list", "/encode_text", {"json": {"text": []}}, 422, "empty_input", "empty"),
    (
        "encode-image-empty-list",
        "/encode_image",
        {"json": {"image_url": []}},
        422,
        "empty_input",
        "empty",
    ),
]


@pytest.mark.parametrize(
    ("case", "route", "keywords", "status", "code", "fragment"),
    COUNT_CASES,
    ids=_case_ids(COUNT_CASES),
)
def test_per_request_counts_are_bounded(
    app: RunningApp, case: str, route: str, keywords: dict, status: int, code: str, fragment: str
) -> None:
    with client(app) as http:
        check(http.post(route, **keywords), status, code, fragment)


# --- 5. polyglot and mislabelled files -----------------------------------------------------

HTML = b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><rect width="9"/></svg>'
PHP = b"<?php system($_GET['c']); ?>"
JAVASCRIPT = b"fetch('/api/admin/reset-cache', {method: 'POST'})"
ELF = b"\x7fELF\x02\x01\x01" + bytes(57)
PDF = b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF"
ZIP = b"PK\x03\x04" + bytes(26) + b"payload.txt" + b"hello"
GIF = encoded(noise_image(34), "GIF")
BMP = encoded(noise_image(35), "BMP")
TIFF = encoded(noise_image(36), "TIFF")
WEBP = encoded(noise_image(37), "WEBP")
NOT_IMAGE = "not a known image format"

#: (id, filename, bytes, declared media type, status, code, fragment): the content decides.
MISLABELLED_CASES = [
    ("gif-as-png", "x.png", GIF, "image/png", 415, "unsupported_media_type", "found GIF"),
    ("bmp-as-png", "x.png", BMP, "image/png", 415, "unsupported_media_type", "found BMP"),
    ("tiff-as-png", "x.png", TIFF, "image/png", 415, "unsupported_media_type", "found TIFF"),
    ("html-as-jpg", "x.jpg", HTML, "image/jpeg", 415, "unsupported_media_type", NOT_IMAGE),
    ("html-as-png", "x.html", HTML, "image/png", 415, "unsupported_media_type", NOT_IMAGE),
    ("svg-as-jpg", "x.jpg", SVG, "image/jpeg", 415, "unsupported_media_type", NOT_IMAGE),
    ("svg-as-svg", "x.svg", SVG, "image/svg+xml", 415, "unsupported_media_type", NOT_IMAGE),
    ("php-as-jpg", "x.php.jpg", PHP, "image/jpeg", 415, "unsupported_media_type", NOT_IMAGE),
    ("js-as-png", "x.js", JAVASCRIPT, "image/png", 415, "unsupported_media_type", NOT_IMAGE),
    ("elf-as-jpg", "x.jpg", ELF, "image/jpeg", 415, "unsupported_media_type", NOT_IMAGE),
    ("pdf-as-png", "x.png", PDF, "image/png", 415, "unsupported_media_type", NOT_IMAGE),
    ("zip-as-jpg", "x.jpg", ZIP, "image/jpeg", 415, "unsupported_media_type", NOT_IMAGE),
    (
        "html-behind-jpeg-magic",
        "x.jpg",
        b"\xff\xd8\xff\xe0" + HTML,
        "image/jpeg",
        415,
        "unsupported_media_type",
        "header is unreadable",
    ),
    (
        "html-behind-png-magic",
        "x.png",
        b"\x89PNG\r\n\x1a\n" + HTML,
        "image/png",
        415,
        "unsupported_media_type",
        "header is unreadable",
    ),
    ("truncated-jpeg", "x.jpg", _truncated_jpeg(), "image/jpeg", 422, "undecodable_image", ""),
    ("corrupt-png-data", "x.png", _corrupt_png(), "image/png", 422, "undecodable_image", ""),
]
#: The same file, a different verdict per route.
EMPTY_FILE_CASES = [
    ("upload", 400, "empty_image", "empty"),
    ("caption-images", 415, "unsupported_media_type", NOT_IMAGE),
    ("collective", 415, "unsupported_media_type", NOT_IMAGE),
    ("encode-b64", 415, "unsupported_media_type", NOT_IMAGE),
    ("similar-image", 415, "unsupported_media_type", NOT_IMAGE),
]


@pytest.mark.parametrize("route", UPLOAD_ROUTES)
@pytest.mark.parametrize(
    ("case", "filename", "data", "media_type", "status", "code", "fragment"),
    MISLABELLED_CASES,
    ids=_case_ids(MISLABELLED_CASES),
)
def test_files_are_judged_by_content_not_name_or_type(
    app: RunningApp,
    route: str,
    case: str,
    filename: str,
    data: bytes,
    media_type: str,
    status: int,
    code: str,
    fragment: str,
) -> None:
    check_sent(send_image(app, route, filename, data, media_type), status, code, fragment)


@pytest.mark.parametrize(("route", "status", "code", "fragment"), EMPTY_FILE_CASES)
def test_empty_file_is_refused(
    app: RunningApp, route: str, status: int, code: str, fragment: str
) -> None:
    check_sent(send_image(app, route, "empty.jpg", b"", "image/jpeg"), status, code, fragment)


def test_webp_is_not_stored_by_upload(app: RunningApp) -> None:
    """POST /upload stores JPEG and PNG only (document 002), whatever the name says."""
    sent = send_image(app, "upload", "x.png", WEBP, "image/png")
    check_sent(sent, 415, "unsupported_media_type", "found WEBP")


@pytest.mark.parametrize("route", ["caption-images", "encode-b64", "upload"])
def test_png_named_jpeg_is_accepted_by_content(app: RunningApp, route: str) -> None:
    body = check(send_image(app, route, "x.jpg", GOOD_PNG, "image/jpeg").response, 200, None)
    if route == "upload":
        assert body["media_type"] == "image/png", body


#: (id, bytes, media type the stored copy must be served with): valid images carrying a
#: payload after their end; accepted, and never served as anything a browser would run.
POLYGLOT_CASES = [
    ("jpeg-then-html", GOOD_JPEG + HTML, "image/jpeg"),
    ("jpeg-then-zip", GOOD_JPEG + ZIP, "image/jpeg"),
    ("jpeg-then-svg", GOOD_JPEG + SVG, "image/jpeg"),
    ("png-then-html", GOOD_PNG + HTML, "image/png"),
    ("png-named-jpg", GOOD_PNG, "image/png"),
]


@pytest.mark.parametrize(
    ("case", "data", "media_type"), POLYGLOT_CASES, ids=_case_ids(POLYGLOT_CASES)
)
def test_polyglot_upload_is_served_back_as_the_image_it_is(
    app: RunningApp, case: str, data: bytes, media_type: str
) -> None:
    """The stored copy keeps its bytes but is served with the media type judged from its
    content and ``nosniff``, so a browser never renders the payload as a page."""
    uploaded = send_image(app, "upload", "x.html.jpg", data, "text/html").response
    body = check(uploaded, 200, None)
    assert body["media_type"] == media_type, body
    with client(app) as http:
        served = http.get(f"/images/{body['image_id']}")
    assert served.status_code == 200, served.text[:200]
    assert served.headers["content-type"] == media_type, served.headers
    assert served.headers["x-content-type-options"] == "nosniff", served.headers
    assert served.content == data


@pytest.mark.parametrize(
    ("image_id", "code"),
    [
        ("%2e%2e", "unknown_image_id"),
        ("..%5C..%5Cdata", "unknown_image_id"),
        ("%00", "unknown_image_id"),
        ("a" * 5000, "unknown_image_id"),
        ("..%2F..%2Fetc%2Fpasswd", "route_not_found"),
    ],
)
def test_stored_image_ids_cannot_name_files(app: RunningApp, image_id: str, code: str) -> None:
    with client(app) as http:
        check(http.get(f"/images/{image_id}"), 404, code)


# --- 6. overlong and empty text ------------------------------------------------------------

P, Q, T = TEST_MAX_PROMPT_CHARS, TEST_MAX_QUESTION_CHARS, TEST_MAX_TEXT_CHARS
ONE_IMAGE = [("images", ("x.jpg", GOOD_JPEG, "image/jpeg"))]
TWO_IMAGES = ONE_IMAGE * 2
SIMILAR_IMAGE = {"image": ("x.jpg", GOOD_JPEG, "image/jpeg")}

#: (id, method, route, request keywords, status, code, fragment); limits count characters
#: as sent, whitespace included.
TEXT_CASES = [
    *(
        (
            f"{route.rsplit('/', 1)[1]}-{field_name}-{kind}",
            "POST",
            route,
            {"params": {"model": model, field_name: text}, "files": files},
            422,
            "prompt_too_long",
            f"has {P + 1} characters; the limit is {P}",
        )
        for route, model, files in (
            ("/api/caption-images", "blip", ONE_IMAGE),
            ("/api/caption-collective-images", "gemma", TWO_IMAGES),
        )
        for field_name in ("caption_prompt", "flag_caption_prompt")
        for kind, text in (("long", "a" * (P + 1)), ("spaces", " " * (P + 1)))
    ),
    *(
        (
            f"question-{kind}-{encoding}",
            "POST",
            "/question",
            {encoding: {"question": text, "image_id": "0" * 32}},
            status,
            code,
            fragment,
        )
        for encoding in ("json", "data")
        for kind, text, status, code, fragment in (
            ("long", "q" * (Q + 1), 422, "question_too_long", f"has {Q + 1} characters"),
            ("spaces", " " * (Q + 1), 422, "question_too_long", f"has {Q + 1} characters"),
            ("padded", " " + "q" * Q, 422, "question_too_long", f"the limit is {Q}"),
            ("blank", "   ", 422, "empty_question", "empty"),
            ("empty", "", 422, "empty_question", "empty"),
            # control: exactly the limit passes the check, and only the id is unknown
            ("at-limit", "q" * Q, 404, "unknown_image_id", "no stored image"),
        )
    ),
    (
        "encode-text-long",
        "POST",
        "/encode_text",
        {"json": {"text": "t" * (T + 1)}},
        422,
        "text_too_long",
        f"has {T + 1} characters; the limit is {T}",
    ),
    (
        "encode-text-spaces",
        "POST",
        "/encode_text",
        {"json": {"text": " " * (T + 1)}},
        422,
        "text_too_long",
        f"has {T + 1} characters",
    ),
    (
        "encode-text-long-item",
        "POST",
        "/encode_text",
        {"json": {"text": ["fine", "t" * (T + 1)]}},
        422,
        "text_too_long",
        "item 1",
    ),
    ("encode-text-blank", "POST", "/encode_text", {"json": {"text": "  "}}, 422, "empty_text", ""),
    ("encode-text-empty", "POST", "/encode_text", {"json": {"text": ""}}, 422, "empty_text", ""),
    *(
        (
            f"{route_id}-{field_name}-{kind}",
            method,
            route,
            {
                carrier: {
                    prompt_key: "x",
                    (prompt_key if field_name == "prompt" else field_name): text,
                }
            },
            422,
            "generation_limit",
            fragment,
        )
        for route_id, method, route, carrier, prompt_key in (
            ("generate", "POST", "/generate", "json", "description"),
            ("generate-form", "POST", "/generate", "data", "description"),
            ("generate-stream", "POST", "/generate/stream", "json", "description"),
            ("generate-image", "GET", "/generate-image", "params", "prompt"),
            ("generate-image-stream", "GET", "/generate-image/stream", "params", "prompt"),
        )
        for field_name in ("prompt", "negative_prompt")
        for kind, text, fragment in (
            ("long", "p" * (P + 1), f"has {P + 1} characters; the limit is {P}"),
            ("spaces", " " * (P + 1), f"has {P + 1} characters"),
        )
    ),
    *(
        (
            f"{route.rsplit('/', 1)[1]}-negative_prompt-long",
            "POST",
            route,
            {"files": SIMILAR_IMAGE, "data": {"negative_prompt": "n" * (P + 1)}},
            422,
            "generation_limit",
            f"negative_prompt has {P + 1} characters",
        )
        for route in ("/api/similar-image", "/api/similar-image/stream")
    ),
    *(
        (
            f"{name}-blank-prompt",
            method,
            route,
            request,
            422,
            "generation_limit",
            "prompt is empty",
        )
        for name, method, route, request in (
            ("generate", "POST", "/generate", {"json": {"description": "   "}}),
            ("generate-image", "GET", "/generate-image", {"params": {"prompt": "\t\n"}}),
        )
    ),
]


@pytest.mark.parametrize(
    ("case", "method", "route", "keywords", "status", "code", "fragment"),
    TEXT_CASES,
    ids=_case_ids(TEXT_CASES),
)
def test_text_inputs_are_bounded_as_sent(
    app: RunningApp,
    case: str,
    method: str,
    route: str,
    keywords: dict,
    status: int,
    code: str,
    fragment: str,
) -> None:
    with client(app) as http:
        check(http.request(method, route, **keywords), status, code, fragment)


# --- 7. diffusion sizes, steps, guidance and seeds -----------------------------------------

SIDE, MAX_SEED = TEST_MAX_IMAGE_SIDE, 2**63 - 1
SIZE_RULE = f"must be a multiple of 8 between 64 and {SIDE}"
#: (id, field, value, status, code, fragment)
GENERATION_CASES = [
    *(
        (f"{name}-{kind}", name, value, 422, "generation_limit", f"{name} {SIZE_RULE}, not {value}")
        for name in ("height", "width")
        for kind, value in (
            ("not-multiple-of-8", 100),
            ("below-64", 56),
            ("above-max", SIDE + 8),
            ("zero", 0),
            ("negative", -64),
            ("huge", 2**31),
        )
    ),
    *(
        (
            f"steps-{kind}",
            "num_inference_steps",
            value,
            422,
            "generation_limit",
            f"between 1 and {TEST_MAX_STEPS}, not {value}",
        )
        for kind, value in (("zero", 0), ("above-max", TEST_MAX_STEPS + 1), ("negative", -5))
    ),
    *(
        (f"guidance-{kind}", "guidance_scale", value, 422, "generation_limit", "between 0 and 20")
        for kind, value in (
            ("above-max", 20.5),
            ("negative", -0.1),
            ("nan", float("nan")),
            ("inf", float("inf")),
        )
    ),
    *(
        (f"seed-{kind}", "seed", value, 422, "generation_limit", f"between 0 and {MAX_SEED}")
        for kind, value in (("negative", -1), ("2^63", MAX_SEED + 1), ("2^64", 2**64 + 1))
    ),
    ("height-text", "height", "tall", 422, "invalid_request", "height"),
    ("steps-fraction", "num_inference_steps", 2.5, 422, "invalid_request", "num_inference_steps"),
    ("seed-text", "seed", "lucky", 422, "invalid_request", "seed"),
    ("seed-5000-digits", "seed", "9" * 5000, 422, "invalid_request", "seed"),
    ("guidance-text", "guidance_scale", "strong", 422, "invalid_request", "guidance_scale"),
    ("unknown-field", "strength", 0.5, 422, "invalid_request", "strength"),
]


def generation_request(app: RunningApp, route: str, field_name: str, value: Any) -> httpx.Response:
    """One generation request with ``field_name`` set to ``value``, as ``route`` takes it:
    JSON (NaN and Infinity as JavaScript writes them), query string, or form fields."""
    with client(app) as http:
        if route == "generate":
            body = json.dumps({"description": "a red square", field_name: value})
            return http.post(
                "/generate", content=body, headers={"Content-Type": "application/json"}
            )
        if route == "generate-image":
            return http.get("/generate-image", params={"prompt": "a red square", field_name: value})
        return http.post("/api/similar-image", files=SIMILAR_IMAGE, data={field_name: str(value)})


@pytest.mark.parametrize("route", ["generate", "generate-image", "similar-image"])
@pytest.mark.parametrize(
    ("case", "field_name", "value", "status", "code", "fragment"),
    GENERATION_CASES,
    ids=_case_ids(GENERATION_CASES),
)
def test_generation_settings_are_bounded(
    app: RunningApp,
    route: str,
    case: str,
    field_name: str,
    value: Any,
    status: int,
    code: str,
    fragment: str,
) -> None:
    check(generation_request(app, route, field_name, value), status, code, fragment)


# --- 8. the admin key ----------------------------------------------------------------------

#: (id, headers, status, code, fragment)
ADMIN_CASES = [
    ("no-key", {}, 401, "missing_api_key", "X-API-Key"),
    ("empty-key", {"X-API-Key": ""}, 401, "missing_api_key", "X-API-Key"),
    ("wrong-key", {"X-API-Key": "not-the-key"}, 403, "invalid_api_key", "does not match"),
    ("upper-case", {"X-API-Key": TEST_ADMIN_KEY.upper()}, 403, "invalid_api_key", ""),
    ("title-case", {"X-API-Key": TEST_ADMIN_KEY.title()}, 403, "invalid_api_key", ""),
    ("one-short", {"X-API-Key": TEST_ADMIN_KEY[:-1]}, 403, "invalid_api_key", ""),
    ("one-long", {"X-API-Key": TEST_ADMIN_KEY + "y"}, 403, "invalid_api_key", ""),
    ("doubled", {"X-API-Key": TEST_ADMIN_KEY * 2}, 403, "invalid_api_key", ""),
    ("inner-space", {"X-API-Key": TEST_ADMIN_KEY.replace("-", " ")}, 403, "invalid_api_key", ""),
    (
        "latin-1",
        {"X-API-Key": TEST_ADMIN_KEY.replace("a", "\xe4").encode("latin-1")},
        403,
        "invalid_api_key",
        "",
    ),
    ("bearer-instead", {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}, 401, "missing_api_key", ""),
    ("other-header", {"X-Api-Token": TEST_ADMIN_KEY}, 401, "missing_api_key", ""),
    # controls: the right key (header names are case-insensitive) is accepted
    ("right-key", {"X-API-Key": TEST_ADMIN_KEY}, 200, None, ""),
    ("right-key-lower-name", {"x-api-key": TEST_ADMIN_KEY}, 200, None, ""),
]


@pytest.mark.parametrize(
    ("case", "headers", "status", "code", "fragment"), ADMIN_CASES, ids=_case_ids(ADMIN_CASES)
)
def test_admin_route_needs_the_exact_key(
    app: RunningApp, case: str, headers: dict, status: int, code: str | None, fragment: str
) -> None:
    with client(app) as http:
        response = http.post("/api/admin/reset-cache", headers=headers)
    body = check(response, status, code, fragment)
    if code is None:
        assert body == {"removed": 0, "backend": "none", "scope": "service"}, body


def test_admin_key_in_the_query_string_is_not_read(app: RunningApp) -> None:
    with client(app) as http:
        response = http.post("/api/admin/reset-cache", params={"api_key": TEST_ADMIN_KEY})
    check(response, 401, "missing_api_key")


# --- 9. CORS: closed by default, opened for exactly the configured origin ------------------


def cors_headers(response: httpx.Response) -> dict[str, str]:
    """The answer's ``Access-Control-*`` headers."""
    return {
        name: value
        for name, value in response.headers.items()
        if name.lower().startswith("access-control-")
    }


def preflight(url: str, route: str, origin: str, method: str = "POST") -> httpx.Response:
    """A browser's CORS preflight for ``method`` on ``route`` from ``origin``."""
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "content-type, x-api-key",
    }
    return httpx.request("OPTIONS", url + route, headers=headers, timeout=30)


@pytest.mark.parametrize(
    "route", ["/caption", "/upload", "/encode_image", "/api/admin/reset-cache", "/generate"]
)
@pytest.mark.parametrize("origin", [EVIL_ORIGIN, ALLOWED_ORIGIN])
def test_cors_preflight_is_refused_by_default(app: RunningApp, route: str, origin: str) -> None:
    response = preflight(app.url, route, origin)
    check(response, 405, "method_not_allowed")
    assert cors_headers(response) == {}, response.headers


#: (id, method, route, request keywords, status, code): simple cross-origin requests.
SIMPLE_CORS_CASES = [
    ("health", "GET", "/", {}, 200, None),
    ("caption", "POST", "/caption", {"json": {"image_path": "red.jpg"}}, 200, None),
    (
        "caption-missing",
        "POST",
        "/caption",
        {"json": {"image_path": "no.jpg"}},
        404,
        "image_not_found",
    ),
    ("admin-no-key", "POST", "/api/admin/reset-cache", {}, 401, "missing_api_key"),
]


@pytest.mark.parametrize(
    ("case", "method", "route", "keywords", "status", "code"),
    SIMPLE_CORS_CASES,
    ids=_case_ids(SIMPLE_CORS_CASES),
)
def test_cross_origin_requests_get_no_cors_headers_by_default(
    app: RunningApp, case: str, method: str, route: str, keywords: dict, status: int, code: str
) -> None:
    with client(app) as http:
        response = http.request(method, route, headers={"Origin": EVIL_ORIGIN}, **keywords)
    check(response, status, code)
    assert cors_headers(response) == {}, response.headers


class BackgroundApp:
    """A second, small app started by ``serve.run`` on a thread, so that it comes up while
    the rest of the module runs; :meth:`url` waits for it."""

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


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module", autouse=True)
def _start_strict_app_early(request: pytest.FixtureRequest) -> None:
    """Starts the CORS app with the module's first integration test, not its last."""
    if "app" in request.fixturenames:
        request.getfixturevalue("strict_app")


def test_cors_preflight_from_the_allowed_origin_is_answered(strict_app: BackgroundApp) -> None:
    response = preflight(strict_app.url(), "/caption", ALLOWED_ORIGIN)
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "X-API-Key" in response.headers["access-control-allow-headers"]
    assert "Origin" in response.headers["vary"]
    assert response.headers["x-content-type-options"] == "nosniff"
    tally(200, None)


#: (id, origin, method, requested headers, what the refusal names)
REFUSED_PREFLIGHTS = [
    ("other-origin", EVIL_ORIGIN, "POST", "content-type", "origin"),
    ("other-scheme", "http://app.example", "POST", "content-type", "origin"),
    ("suffix-domain", "https://app.example.evil.example", "POST", "content-type", "origin"),
    ("prefix-domain", "https://evil-app.example", "POST", "content-type", "origin"),
    ("other-port", "https://app.example:8443", "POST", "content-type", "origin"),
    ("null-origin", "null", "POST", "content-type", "origin"),
    ("allowed-origin-put", ALLOWED_ORIGIN, "PUT", "content-type", "method"),
    ("allowed-origin-delete", ALLOWED_ORIGIN, "DELETE", "content-type", "method"),
    ("allowed-origin-odd-header", ALLOWED_ORIGIN, "POST", "x-evil", "headers"),
]


@pytest.mark.parametrize(
    ("case", "origin", "method", "requested", "refused"),
    REFUSED_PREFLIGHTS,
    ids=_case_ids(REFUSED_PREFLIGHTS),
)
def test_cors_preflight_outside_the_configuration_gets_nothing(
    strict_app: BackgroundApp, case: str, origin: str, method: str, requested: str, refused: str
) -> None:
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": requested,
    }
    response = httpx.request("OPTIONS", strict_app.url() + "/caption", headers=headers, timeout=30)
    check(response, 400, "cors_not_allowed", f"Disallowed CORS {refused}")
    assert cors_headers(response) == {}, response.headers


@pytest.mark.parametrize(
    ("case", "method", "route", "keywords", "status", "code"),
    SIMPLE_CORS_CASES,
    ids=_case_ids(SIMPLE_CORS_CASES),
)
@pytest.mark.parametrize("origin", [ALLOWED_ORIGIN, EVIL_ORIGIN])
def test_cors_simple_requests_open_only_to_the_allowed_origin(
    strict_app: BackgroundApp,
    origin: str,
    case: str,
    method: str,
    route: str,
    keywords: dict,
    status: int,
    code: str,
) -> None:
    url = strict_app.url()
    response = httpx.request(
        method, url + route, headers={"Origin": origin}, timeout=30, **keywords
    )
    check(response, status, code)
    if origin == ALLOWED_ORIGIN:
        assert cors_headers(response) == {
            "access-control-allow-origin": ALLOWED_ORIGIN,
            "access-control-expose-headers": "X-Request-ID, Retry-After",
        }, response.headers
    else:
        assert cors_headers(response) == {}, response.headers
