"""Schemathesis hooks for fuzzing vlgraph: valid data for what JSON Schema cannot describe.

An upload's bytes, a base64 image and an image URL are "valid" only if they hold a real image
(and, for a URL, one the service may fetch). Schemathesis' positive phases draw them from here:
small random JPEG, PNG and WebP images of random sizes and modes, and URLs of the test's own
image server (``$VLGRAPH_FUZZ_IMAGE_HOST``, on the one address the test profile may fetch
from), which renders the image a URL names. Negative phases still send anything.
"""

from __future__ import annotations

import base64
import io
import os
import re

import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image

#: File extension of each media type the API takes, and its Pillow format.
IMAGE_TYPES = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}
PILLOW_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
_URL_PATH = re.compile(r"^/image/(\d+)-(\d+)x(\d+)\.(jpg|png|webp)$")


def image_bytes(seed: int, width: int, height: int, extension: str) -> bytes:
    """A reproducible noise image of ``width`` x ``height`` encoded as ``extension``."""
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if extension == "png" and seed % 2:
        image = image.convert("L")  # another mode, as clients send
    buffer = io.BytesIO()
    image.save(buffer, format=PILLOW_FORMATS[extension])
    return buffer.getvalue()


def image_for_url_path(path: str) -> bytes | None:
    """The image a URL path of :func:`image_urls` names, or None."""
    match = _URL_PATH.match(path)
    if match is None:
        return None
    seed, width, height, extension = match.groups()
    return image_bytes(int(seed), int(width), int(height), extension)


_SIZES = st.integers(min_value=8, max_value=80)
_SEEDS = st.integers(min_value=0, max_value=2**16)


def images_of(extension: str) -> st.SearchStrategy[bytes]:
    """Random images of one format."""
    return st.builds(image_bytes, _SEEDS, _SIZES, _SIZES, st.just(extension))


def image_urls(host: str) -> st.SearchStrategy[str]:
    """URLs of images on the test's image server."""
    return st.builds(
        "{}/image/{}-{}x{}.{}".format,
        st.just(host),
        _SEEDS,
        _SIZES,
        _SIZES,
        st.sampled_from(list(PILLOW_FORMATS)),
    )


for _media_type, _extension in IMAGE_TYPES.items():
    schemathesis.openapi.media_type(_media_type, images_of(_extension))

# A file part (format binary): any image the image routes take.
schemathesis.openapi.format("binary", st.one_of(*(images_of(ext) for ext in IMAGE_TYPES.values())))
schemathesis.openapi.format(
    "byte",
    st.one_of(*(images_of(ext) for ext in IMAGE_TYPES.values())).map(
        lambda data: base64.b64encode(data).decode("ascii")
    ),
)

if os.environ.get("VLGRAPH_FUZZ_IMAGE_HOST"):
    schemathesis.openapi.format("uri", image_urls(os.environ["VLGRAPH_FUZZ_IMAGE_HOST"]))
