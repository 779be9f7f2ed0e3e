"""Text and image vectors share one space that means something: held-out world images
(base64 JPEG, PNG and WebP) are found by their captions in English, German, French and
Spanish through ``POST /encode_image`` and ``POST /encode_text``."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.support.common import TEST_MAX_ENCODE_ITEMS, RunningApp
from tests.support.world_checks import held_out, record, share

pytestmark = [pytest.mark.integration, pytest.mark.semantic]

#: 24 different scenes, so that each caption has exactly one right image.
IMAGES = held_out(24, offset=30, distinct=True)
TOP_1 = 0.90
FOREIGN_COLOUR_AND_BACKGROUND = 0.85


def chunks(items: list, size: int = TEST_MAX_ENCODE_ITEMS) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def embeddings(app: RunningApp, route: str, field: str, items: list) -> np.ndarray:
    """Vectors of ``items``, requests of the route's maximum size sent by concurrent clients,
    normalized by the server."""

    def post(chunk: list) -> list:
        with app.client(timeout=120) as client:
            response = client.post(route, json={field: chunk, "normalize": True})
        assert response.status_code == 200, response.text
        return response.json()["embeddings"]

    with ThreadPoolExecutor(4) as pool:
        return np.array([vector for part in pool.map(post, chunks(items)) for vector in part])


@pytest.fixture(scope="module")
def image_vectors(app: RunningApp) -> np.ndarray:
    encoded = [base64.b64encode(image.data).decode() for image in IMAGES]
    return embeddings(app, "/encode_image", "image_b64", encoded)


def best_images(app: RunningApp, image_vectors: np.ndarray, language: str) -> list[int]:
    texts = [image.scene.caption_in(language) for image in IMAGES]
    text_vectors = embeddings(app, "/encode_text", "text", texts)
    return list((text_vectors @ image_vectors.T).argmax(axis=1))


def test_english_captions_find_their_image_among_24(app: RunningApp, image_vectors) -> None:
    found = best_images(app, image_vectors, "en")
    top_1 = share([best == index for index, best in enumerate(found)])
    record("clip text -> image top-1 among 24 (English)", top_1, TOP_1, len(IMAGES))
    assert top_1 >= TOP_1


@pytest.mark.parametrize("language", ["de", "fr", "es"])
def test_foreign_captions_find_the_colour_and_background(
    app: RunningApp, image_vectors, language: str
) -> None:
    found = best_images(app, image_vectors, language)
    scenes = [image.scene for image in IMAGES]
    right = share(
        [
            (scenes[best].colour, scenes[best].background) == (scene.colour, scene.background)
            for scene, best in zip(scenes, found, strict=True)
        ]
    )
    top_1 = share([best == index for index, best in enumerate(found)])
    record(
        f"clip {language} -> image: colour and background", right, FOREIGN_COLOUR_AND_BACKGROUND, 24
    )
    record(f"clip {language} -> image: top-1", top_1, count=24)
    assert right >= FOREIGN_COLOUR_AND_BACKGROUND
