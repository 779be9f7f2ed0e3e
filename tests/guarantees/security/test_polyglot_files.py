"""Security, section 5: polyglot and mislabelled files, judged by their content, and how a
stored one is served back."""

from __future__ import annotations

import os
import struct

import pytest

from tests.support.common import RunningApp, jpeg_bytes, noise_image
from tests.support.security import (
    GOOD_JPEG,
    GOOD_PNG,
    UPLOAD_ROUTES,
    case_ids,
    check,
    check_sent,
    client,
    encoded,
    png_chunk,
    send_image,
)

pytestmark = pytest.mark.integration


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
    ids=case_ids(MISLABELLED_CASES),
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
    """POST /upload stores JPEG and PNG only (visual question answering with uploads), whatever
    the name says."""
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
    ("case", "data", "media_type"), POLYGLOT_CASES, ids=case_ids(POLYGLOT_CASES)
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
