"""Security, section 4: oversize and slow bodies over raw sockets (the slow ones on the
second app, whose body timeout is short), images over the byte limit, and the per-request
count limits."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http.client import HTTPResponse
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.common import (
    TEST_IMAGE_HOST,
    TEST_MAX_BATCH_IMAGES,
    TEST_MAX_ENCODE_ITEMS,
    TEST_MAX_IMAGE_BYTES,
    TEST_MAX_UPLOAD_IMAGES,
    RunningApp,
    noise_image,
)
from tests.support.security import (
    FIGURES,
    GOOD_JPEG,
    STRICT_BODY_TIMEOUT_S,
    UPLOAD_ROUTES,
    URL_ROUTES,
    BackgroundApp,
    case_ids,
    check,
    check_sent,
    client,
    encoded,
    send_image,
)

pytestmark = pytest.mark.integration


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


@pytest.mark.parametrize("route", [*UPLOAD_ROUTES, *URL_ROUTES, "caption-path", "batch-caption"])
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
    ids=case_ids(COUNT_CASES),
)
def test_per_request_counts_are_bounded(
    app: RunningApp, case: str, route: str, keywords: dict, status: int, code: str, fragment: str
) -> None:
    with client(app) as http:
        check(http.post(route, **keywords), status, code, fragment)
