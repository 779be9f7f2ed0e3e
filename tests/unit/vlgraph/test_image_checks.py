"""Image format, size and path checks, without Ray."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from tests.support.common import jpeg_bytes, noise_image
from vlgraph.errors import (
    BadRequestError,
    ForbiddenPathError,
    NotFoundError,
    PayloadTooLargeError,
    UnprocessableImageError,
    UnsupportedMediaTypeError,
)
from vlgraph.image_paths import read_image_file, resolve_image_path
from vlgraph.images import decode_image, inspect_image, sniff_format

ALLOWED = ("JPEG", "PNG", "WEBP")


def encoded(format_: str, size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    noise_image(1, size).save(buffer, format=format_)
    return buffer.getvalue()


@pytest.mark.parametrize("format_", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_sniffing_names_the_real_format(format_: str) -> None:
    assert sniff_format(encoded(format_)) == format_


def test_inspect_reads_size_without_decoding() -> None:
    info = inspect_image(encoded("PNG", (50, 20)), ALLOWED)
    assert (info.format, info.width, info.height) == ("PNG", 50, 20)


def test_inspect_refuses_other_formats_and_non_images() -> None:
    with pytest.raises(UnsupportedMediaTypeError, match="found GIF"):
        inspect_image(encoded("GIF"), ALLOWED)
    with pytest.raises(UnsupportedMediaTypeError, match="not a known image format"):
        inspect_image(b"%PDF-1.7 not an image", ALLOWED)


def test_pixel_limit_is_checked_before_decoding() -> None:
    # A 6000 x 6000 PNG: 36 MP would take 108 MB to decode as RGB.
    header = io.BytesIO()
    Image.new("1", (6000, 6000)).save(header, format="PNG")
    with pytest.raises(PayloadTooLargeError, match="6000x6000"):
        inspect_image(header.getvalue(), ALLOWED, max_pixels=10_000_000)
    with pytest.raises(PayloadTooLargeError):
        decode_image(header.getvalue(), max_pixels=10_000_000)
    # Past Pillow's own bomb limit (2 x 89 MP), Image.open itself refuses: still a 413.
    bomb = io.BytesIO()
    Image.new("1", (15000, 15000)).save(bomb, format="PNG")
    with pytest.raises(PayloadTooLargeError, match="limit is 300000000"):
        inspect_image(bomb.getvalue(), ALLOWED, max_pixels=300_000_000)
    with pytest.raises(PayloadTooLargeError):
        decode_image(bomb.getvalue(), max_pixels=300_000_000)


def test_decode_reports_corrupt_images_as_unprocessable() -> None:
    good = jpeg_bytes(noise_image(3, (200, 150)))
    assert decode_image(good).size == (200, 150)
    with pytest.raises(UnprocessableImageError):
        decode_image(good[: len(good) // 2])


def test_decode_honours_exif_orientation() -> None:
    image = noise_image(4, (40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    assert decode_image(buffer.getvalue()).size == (20, 40)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"x" * 10)
    (tmp_path / "secret.jpg").write_bytes(b"s")
    (folder / "out_link.jpg").symlink_to(tmp_path / "secret.jpg")
    return folder


def test_paths_resolve_inside_the_root(root: Path) -> None:
    assert resolve_image_path("a.jpg", root) == root / "a.jpg"
    assert resolve_image_path(str(root / "a.jpg"), root) == root / "a.jpg"


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ("../secret.jpg", ForbiddenPathError),
        ("sub/../a.jpg", ForbiddenPathError),
        ("/etc/hostname", ForbiddenPathError),
        ("out_link.jpg", ForbiddenPathError),
        ("a.jpg\x00.png", BadRequestError),
        ("  ", BadRequestError),
        ("nothing.jpg", NotFoundError),
    ],
)
def test_escapes_and_missing_files_are_refused(root: Path, raw: str, error: type) -> None:
    with pytest.raises(error):
        resolve_image_path(raw, root)


def test_read_refuses_large_files_and_non_files(root: Path) -> None:
    assert read_image_file(root / "a.jpg", max_bytes=10) == b"x" * 10
    with pytest.raises(PayloadTooLargeError, match="limit is 9"):
        read_image_file(root / "a.jpg", max_bytes=9)
    with pytest.raises(NotFoundError, match="not a regular file") as folder:
        read_image_file(root, max_bytes=10)
    assert (folder.value.status, folder.value.code) == (404, "not_a_file")
