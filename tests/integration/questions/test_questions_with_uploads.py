"""Visual question answering with uploads through a real serve.run: upload (captioned, stored),
questions about the upload, the history; each error case, and nothing stored by a request that
failed."""

from __future__ import annotations

import base64
import io
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.support.common import (
    TEST_MAX_HISTORY_PAGE,
    TEST_MAX_IMAGE_BYTES,
    TEST_MAX_QUESTION_CHARS,
    RunningApp,
    jpeg_bytes,
    noise_image,
)

pytestmark = pytest.mark.integration


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def encoded(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def upload(app: RunningApp, data: bytes, name: str = "photo.png") -> httpx.Response:
    with app.client() as client:
        return client.post("/upload", files={"image": (name, data, "application/octet-stream")})


def uploaded(app: RunningApp, data: bytes, name: str = "photo.png") -> dict:
    response = upload(app, data, name)
    assert response.status_code == 200, response.text
    return response.json()


def ask(app: RunningApp, image_id: str, question: str, as_form: bool = False) -> httpx.Response:
    fields = {"question": question, "image_id": image_id}
    with app.client() as client:
        if as_form:
            return client.post("/question", data=fields)
        return client.post("/question", json=fields)


def history_total(app: RunningApp) -> int:
    with app.client() as client:
        return client.get("/history", params={"limit": 1}).json()["total"]


def stored_files(app: RunningApp) -> set[str]:
    folder = Path(app.config.store.resolved_data_dir()) / "images"
    return {path.name for path in folder.iterdir()} if folder.exists() else set()


def assert_error(response: httpx.Response, status: int, code: str, *fragments: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    for fragment in fragments:
        assert fragment in error["message"], error


def test_upload_question_history_round_trip(app: RunningApp) -> None:
    data = png_bytes(noise_image(40))
    stored = uploaded(app, data, "cat.png")
    assert re.fullmatch(r"[0-9a-f]{32}", stored["image_id"])
    assert base64.b64decode(stored["image"]) == data
    assert stored["media_type"] == "image/png" and stored["filename"] == "cat.png"
    assert isinstance(stored["caption"], str) and stored["caption"]

    first = ask(app, stored["image_id"], "what is this")
    assert first.status_code == 200, first.text
    second = ask(app, stored["image_id"], "is it a dog", as_form=True)
    assert second.status_code == 200, second.text
    body = second.json()
    assert body["caption"] == stored["caption"] and body["image_id"] == stored["image_id"]
    assert [entry["question"] for entry in body["history"]] == ["what is this", "is it a dog"]
    assert [entry["answer"] for entry in body["history"]] == [
        first.json()["answer"],
        body["answer"],
    ]

    with app.client() as client:
        page = client.get("/history", params={"limit": TEST_MAX_HISTORY_PAGE}).json()
    item = next(entry for entry in page["items"] if entry["image_id"] == stored["image_id"])
    assert item["caption"] == stored["caption"]
    assert [entry["question"] for entry in item["questions"]] == ["what is this", "is it a dog"]


def test_the_type_is_judged_by_the_bytes(app: RunningApp) -> None:
    png_named_jpg = uploaded(app, png_bytes(noise_image(41)), "really_png.jpg")
    assert png_named_jpg["media_type"] == "image/png"
    jpeg = uploaded(app, jpeg_bytes(noise_image(42)), "photo.jpeg")
    assert jpeg["media_type"] == "image/jpeg"


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (encoded(noise_image(43), "GIF"), 415, "unsupported_media_type"),
        (encoded(noise_image(44), "WEBP"), 415, "unsupported_media_type"),
        (b"this is text, not a picture", 415, "unsupported_media_type"),
        (b"", 400, "empty_image"),
        (png_bytes(noise_image(45, (400, 400))), 413, "image_too_large"),
    ],
)
def test_refused_uploads_store_nothing(
    app: RunningApp, data: bytes, status: int, code: str
) -> None:
    if code == "image_too_large":
        assert len(data) > TEST_MAX_IMAGE_BYTES
    before, files_before = history_total(app), stored_files(app)
    assert_error(upload(app, data), status, code)
    assert history_total(app) == before and stored_files(app) == files_before


def test_an_image_that_fails_to_decode_stores_nothing(app: RunningApp) -> None:
    whole = png_bytes(noise_image(46, (200, 150)))
    before, files_before = history_total(app), stored_files(app)
    assert_error(upload(app, whole[: len(whole) // 2]), 422, "undecodable_image")
    assert history_total(app) == before and stored_files(app) == files_before


def test_upload_without_the_image_field_is_422(app: RunningApp) -> None:
    with app.client() as client:
        response = client.post("/upload", files={"picture": ("a.png", b"x", "image/png")})
    assert response.status_code == 422
    assert "image" in response.text


def test_question_errors_record_nothing(app: RunningApp) -> None:
    stored = uploaded(app, png_bytes(noise_image(47)))
    image_id = stored["image_id"]
    assert_error(ask(app, "0" * 32, "what is this"), 404, "unknown_image_id", "0" * 32)
    assert_error(ask(app, "../../etc/passwd", "what is this"), 404, "unknown_image_id")
    assert_error(ask(app, image_id, "   "), 422, "empty_question")
    too_long = "why " * (TEST_MAX_QUESTION_CHARS // 4 + 1)
    assert_error(
        ask(app, image_id, too_long), 422, "question_too_long", str(TEST_MAX_QUESTION_CHARS)
    )
    with app.client() as client:
        missing = client.post("/question", json={"question": "what is this"})
        assert missing.status_code == 422 and "image_id" in missing.text
        broken = client.post(
            "/question", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert broken.status_code == 422
        plain = client.post(
            "/question", content=b"question=hi", headers={"content-type": "text/plain"}
        )
        assert_error(plain, 415, "unsupported_media_type", "application/json")
    answered = ask(app, image_id, "what is this")
    assert answered.status_code == 200, answered.text
    assert [entry["question"] for entry in answered.json()["history"]] == ["what is this"]


def test_history_pages_newest_first(app: RunningApp) -> None:
    ids = [uploaded(app, png_bytes(noise_image(50 + index)))["image_id"] for index in range(3)]
    with app.client() as client:
        newest = client.get("/history", params={"limit": 2}).json()
        assert [item["image_id"] for item in newest["items"]] == ids[::-1][:2]
        assert newest["total"] >= 3 and newest["limit"] == 2 and newest["offset"] == 0
        following = client.get("/history", params={"offset": 2, "limit": 1}).json()
        assert following["items"][0]["image_id"] == ids[0]
        past_the_end = client.get("/history", params={"offset": newest["total"]}).json()
        assert past_the_end["items"] == []
        too_many = client.get("/history", params={"limit": TEST_MAX_HISTORY_PAGE + 1})
        assert_error(too_many, 422, "page_too_large", str(TEST_MAX_HISTORY_PAGE))
        assert client.get("/history", params={"offset": -1}).status_code == 422


def test_concurrent_questions_get_the_sequential_answers(app: RunningApp) -> None:
    """Questions of mixed lengths arrive together and are batched; each answer equals the
    answer the same question gets alone."""
    image_id = uploaded(app, png_bytes(noise_image(60)))["image_id"]
    questions = [
        "what is this",
        "is it a dog",
        "what colour is the car near the tree",
        "is this red",
        "how many people are in the room",
        "what",
    ]

    def answer(question: str) -> str:
        response = ask(app, image_id, question)
        assert response.status_code == 200, response.text
        return response.json()["answer"]

    with ThreadPoolExecutor(len(questions)) as pool:
        together = list(pool.map(answer, questions))
    alone = [answer(question) for question in questions]
    assert together == alone
    assert len(set(alone)) > 1, "different questions should get different tiny answers"
