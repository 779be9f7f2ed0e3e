"""Answers mean what the images show: held-out world images uploaded with ``POST /upload``
(JPEG and PNG, what the route accepts), then asked the world's questions with
``POST /question``, one client at a time and eight at once."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.common import RunningApp
from tests.support.world_checks import FORMATS, held_out, record, share

pytestmark = [pytest.mark.integration, pytest.mark.semantic]

#: JPEG and PNG only: /upload refuses WebP, as the document it serves did.
IMAGES = [image for image in held_out(45, offset=20) if image.media_type != "image/webp"]
#: The world's questions in Scene.questions order, each with the share of right answers it
#: needs (None: the harder shape question, reported). Yes/no rests on the shape too: 85%,
#: well above chance (50%).
KINDS = (
    ("what color is the <shape>?", 0.90),
    ("what shape is in the picture?", None),
    ("what color is the background?", 0.90),
    ("is there a <shape>?", 0.85),
)


@pytest.fixture(scope="module")
def stored(app: RunningApp) -> list[str]:
    """The images' ids after upload."""
    assert {image.media_type for image in IMAGES} < {media for _, media, _ in FORMATS}
    with app.client(timeout=120) as client:
        ids = []
        for image in IMAGES:
            response = client.post(
                "/upload", files={"image": (image.filename, image.data, image.media_type)}
            )
            assert response.status_code == 200, response.text
            ids.append(response.json()["image_id"])
    return ids


def ask(app: RunningApp, image_id: str, question: str) -> str:
    with app.client(timeout=120) as client:
        response = client.post("/question", json={"image_id": image_id, "question": question})
    assert response.status_code == 200, response.text
    return response.json()["answer"]


@pytest.mark.parametrize("kind", range(len(KINDS)), ids=[label for label, _ in KINDS])
def test_answers_are_right_alone_and_batched(app: RunningApp, stored: list[str], kind: int) -> None:
    rng = random.Random(kind)
    asked = [image.scene.questions(rng)[kind] for image in IMAGES]
    alone = [ask(app, image_id, q) for image_id, (q, _) in zip(stored, asked, strict=True)]
    with ThreadPoolExecutor(8) as pool:
        batched = list(
            pool.map(lambda pair: ask(app, pair[0], pair[1][0]), zip(stored, asked, strict=True))
        )
    assert batched == alone
    right = share([answer == truth for answer, (_, truth) in zip(alone, asked, strict=True)])
    label, threshold = KINDS[kind]
    record(f"blip vqa: {label}", right, threshold, len(IMAGES))
    if threshold is not None:
        assert right >= threshold, list(zip(alone, asked, strict=True))
