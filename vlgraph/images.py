"""Image checks that cost nothing for bad input: format by magic bytes, size from the header.

The ingress calls :func:`inspect_image` before anything is sent to a model (no pixel is
decoded); model replicas call :func:`decode_image`, which repeats the pixel check so that a
deployment called directly through a handle is just as safe.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from vlgraph.errors import PayloadTooLargeError, UnprocessableImageError, UnsupportedMediaTypeError

_MAGIC_PREFIXES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)

#: Pixel limit used when a caller gives none (about 40 megapixels, e.g. 8000 x 5000).
DEFAULT_MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class ImageInfo:
    """What the header of an accepted image says."""

    format: str
    width: int
    height: int

    @property
    def media_type(self) -> str:
        """The format's MIME type, e.g. ``image/png``."""
        return _MEDIA_TYPES.get(self.format, "application/octet-stream")


_MEDIA_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}


def sniff_format(data: bytes) -> str | None:
    """The image format named by the first bytes of ``data``, or None."""
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for prefix, name in _MAGIC_PREFIXES:
        if data.startswith(prefix):
            return name
    return None


def inspect_image(
    data: bytes, allowed_formats: tuple[str, ...], max_pixels: int = DEFAULT_MAX_PIXELS
) -> ImageInfo:
    """Check format and dimensions of an encoded image without decoding its pixels."""
    detected = sniff_format(data)
    if detected is None or detected not in allowed_formats:
        found = f"found {detected}" if detected else "the content is not a known image format"
        raise UnsupportedMediaTypeError(
            f"expected an image of type {', '.join(allowed_formats)} (judged by the file's "
            f"content, not its name); {found}"
        )
    try:
        with Image.open(io.BytesIO(data), formats=[detected]) as image:
            width, height = image.size
    except Image.DecompressionBombError:
        raise _too_many_pixels(max_pixels) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise UnsupportedMediaTypeError(
            f"the file starts like a {detected} image but its header is unreadable: {error}"
        ) from None
    _check_pixels(width, height, max_pixels)
    return ImageInfo(format=detected, width=width, height=height)


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image to RGB, honouring its EXIF orientation; refuse oversize images first."""
    try:
        image = Image.open(io.BytesIO(data))
        _check_pixels(image.width, image.height, max_pixels)
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")
    except PayloadTooLargeError:
        raise
    except Image.DecompressionBombError:
        raise _too_many_pixels(max_pixels) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise UnprocessableImageError(
            "the image could not be decoded (truncated or corrupt file)"
        ) from None


def thumbnail(data: bytes, longest_side: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """A JPEG of the image whose longest side is at most ``longest_side`` pixels (never
    enlarged), upright as its EXIF orientation says."""
    image = decode_image(data, max_pixels)
    image.thumbnail((longest_side, longest_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85, optimize=True)
    return buffer.getvalue()


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise _too_many_pixels(max_pixels, f"{width}x{height} = {width * height} pixels")


def _too_many_pixels(
    max_pixels: int, size: str = "over Pillow's safety limit"
) -> PayloadTooLargeError:
    # Pillow refuses headers past twice its own limit in Image.open, before we see the size.
    return PayloadTooLargeError(
        f"the image is {size}; the limit is {max_pixels} pixels", code="image_too_many_pixels"
    )
