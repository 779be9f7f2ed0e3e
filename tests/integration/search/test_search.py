"""Semantic search through HTTP on the trained world encoders: 60 held-out uploads found by
their descriptions in four languages and by other pictures of the same thing, filters and
cursors exact (also while images are being added), the stored bytes and thumbnails, the
duplicate check on upload, and every refusal a client can provoke."""

from __future__ import annotations

import asyncio
import base64
import io
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from PIL import Image

from tests.support.common import RunningApp, noise_image
from tests.support.world_checks import HeldOut, held_out, record, share, uploadable
from vlgraph.config import AppConfig
from vlgraph.image_store import ImageVector
from vlgraph.sqlite_image_store import SqliteImageStore
from vlgraph.tiny.world import LANGUAGES

pytestmark = [pytest.mark.integration, pytest.mark.semantic]


UPLOADS = uploadable(held_out(60, offset=90, distinct=True))
TOP_1 = 0.90
#: Another drawing of a scene (other place, size, resolution and format) finds a picture of
#: the same colour and shape first about 90% of the time with the tiny CLIP (92.5% on two
#: held-out sets of 40); the bar leaves room for the sample.
IMAGE_TOP_1 = 0.85


def post_upload(app: RunningApp, image: HeldOut) -> dict:
    with app.client(timeout=120) as client:
        response = client.post(
            "/upload", files={"image": (image.filename, image.data, "application/octet-stream")}
        )
    assert response.status_code == 200, response.text
    return response.json()


def search(app: RunningApp, **body) -> dict:
    with app.client(timeout=60) as client:
        response = client.post("/api/search", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def refused(app: RunningApp, status: int, code: str, **request) -> dict:
    with app.client(timeout=60) as client:
        response = client.post("/api/search", **request)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    return error


@pytest.fixture(scope="module")
def uploaded(app: RunningApp) -> tuple[dict[str, str], dict[str, HeldOut]]:
    """The 60 held-out images uploaded by four clients at once: the creation-time filter
    that admits exactly them (other tests here add images after), and each image by the id
    the service gave it."""
    started = datetime.now(UTC) - timedelta(milliseconds=1)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda image: post_upload(app, image), UPLOADS))
    window = {
        "created_after": started.isoformat(),
        "created_before": (datetime.now(UTC) + timedelta(milliseconds=1)).isoformat(),
    }
    return window, {a["image_id"]: image for a, image in zip(answers, UPLOADS, strict=True)}


def same_thing(found: HeldOut, wanted: HeldOut) -> bool:
    return (found.scene.colour, found.scene.shape) == (wanted.scene.colour, wanted.scene.shape)


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_description_finds_an_image_of_its_colour_and_shape_first(
    app: RunningApp, uploaded, language: str
) -> None:
    window, images = uploaded

    def first_found(image: HeldOut) -> HeldOut:
        text = image.scene.caption_in(language)
        results = search(app, text=text, limit=1, **window)["results"]
        return images[results[0]["image_id"]]

    with ThreadPoolExecutor(4) as pool:
        found = list(pool.map(first_found, UPLOADS))
    top_1 = share([same_thing(hit, image) for hit, image in zip(found, UPLOADS, strict=True)])
    record(f"search: text -> image, colour and shape first among 60 ({language})", top_1, TOP_1)
    assert top_1 >= TOP_1


def test_another_picture_finds_its_colour_and_shape_first(app: RunningApp, uploaded) -> None:
    """Held-out pictures never uploaded, of the scenes that were (other positions, sizes
    and formats), sent as base64 and as a multipart file."""
    window, images = uploaded
    scenes = {image.scene for image in images.values()}
    queries = [image for image in held_out(80, offset=300) if image.scene in scenes][:48]

    def first_found(pair: tuple[int, HeldOut]) -> HeldOut:
        index, image = pair
        if index % 2:
            body = {"image_b64": base64.b64encode(image.data).decode(), **window}
            results = search(app, limit=1, **body)["results"]
        else:
            with app.client(timeout=60) as client:
                response = client.post(
                    "/api/search",
                    data={**window, "limit": "1"},
                    files={"image": (image.filename, image.data, "application/octet-stream")},
                )
            assert response.status_code == 200, response.text
            results = response.json()["results"]
        return images[results[0]["image_id"]]

    with ThreadPoolExecutor(4) as pool:
        found = list(pool.map(first_found, enumerate(queries)))
    top_1 = share([same_thing(hit, image) for hit, image in zip(found, queries, strict=True)])
    record("search: image -> image, colour and shape first among 60", top_1, IMAGE_TOP_1, 48)
    assert top_1 >= IMAGE_TOP_1


def test_a_stored_image_finds_itself_first_and_results_carry_their_record(
    app: RunningApp, uploaded
) -> None:
    window, images = uploaded
    image_id = next(iter(images))
    results = search(app, image_id=image_id, limit=3, **window)["results"]
    assert results[0]["image_id"] == image_id and results[0]["score"] == pytest.approx(1, abs=2e-3)
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    first = results[0]
    assert first["kind"] == "upload" and first["model"] is None and first["caption"]
    assert first["links"] == {
        "image": f"/images/{image_id}",
        "thumbnail": f"/images/{image_id}/thumbnail",
        "question": "/question",
    }


def test_text_and_image_together_lean_as_the_weight_says(app: RunningApp, uploaded) -> None:
    """A description of one scene and a picture of another: all text finds the described
    scene first, all image the pictured one, and the score of each moves with the weight."""
    window, images = uploaded
    ids = list(images)
    text_image, picture_id = images[ids[0]], ids[1]
    body = {"text": text_image.scene.caption, "image_id": picture_id, **window}
    by_text = search(app, text_weight=1.0, limit=1, **body)["results"][0]
    by_image = search(app, text_weight=0.0, limit=1, **body)["results"][0]
    assert same_thing(images[by_text["image_id"]], text_image)
    assert by_image["image_id"] == picture_id
    mixed = {r["image_id"]: r["score"] for r in search(app, limit=60, **body)["results"]}
    assert mixed[picture_id] < by_image["score"]


def test_paging_is_exact_and_stays_so_while_images_are_added(app: RunningApp, uploaded) -> None:
    """Pages of 7 give the one-page ranking with no duplicates or gaps; images uploaded
    between pages do not move the pages of a search already started, and a new search
    finds them."""
    window, images = uploaded
    query = {"text": "a red circle on a white background", "created_after": window["created_after"]}
    whole = [r["image_id"] for r in search(app, limit=100, **query)["results"]]
    assert set(images) <= set(whole)  # other tests here may have added a few

    paged, cursor, added = [], None, []
    while True:
        page = (
            search(app, limit=7, cursor=cursor, **query)
            if cursor
            else search(app, limit=7, **query)
        )
        paged += [r["image_id"] for r in page["results"]]
        if not added:
            extra = uploadable(held_out(4, offset=400))
            with ThreadPoolExecutor(4) as pool:
                added = [a["image_id"] for a in pool.map(lambda i: post_upload(app, i), extra)]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert paged == whole
    fresh = [r["image_id"] for r in search(app, limit=100, **query)["results"]]
    assert set(added) <= set(fresh) and len(fresh) == len(whole) + 4


def test_filters_by_kind_time_and_generator(app: RunningApp, uploaded) -> None:
    window, images = uploaded
    started = window["created_after"]
    with app.client(timeout=120) as client:
        response = client.post("/generate", json={"description": "a red square", "seed": 5})
    assert response.status_code == 200, response.text
    drawn = response.json()
    text = "a red square on a blue background"
    generated = search(app, text=text, kinds=["generated"], created_after=started, limit=60)
    ids = {r["image_id"]: r for r in generated["results"]}
    assert drawn["image_id"] in ids
    assert all(r["kind"] == "generated" for r in ids.values())
    assert ids[drawn["image_id"]]["model"] == drawn["model"]
    by_model = search(app, text=text, model=drawn["model"], created_after=started, limit=60)
    assert drawn["image_id"] in {r["image_id"] for r in by_model["results"]}
    assert search(app, text=text, model="no-such-generator", limit=60)["results"] == []

    uploads = search(app, text=text, kinds=["upload"], created_after=started, limit=60)
    assert drawn["image_id"] not in {r["image_id"] for r in uploads["results"]}
    assert {r["kind"] for r in uploads["results"]} == {"upload"}

    before = search(app, text=text, created_before=started, limit=60)["results"]
    assert not set(images) & {r["image_id"] for r in before}
    scored = search(app, text=text, created_after=started, min_score=0.5, limit=60)["results"]
    assert all(r["score"] >= 0.5 for r in scored)


def test_stored_images_and_thumbnails_are_served_with_their_type(app: RunningApp, uploaded) -> None:
    _, images = uploaded
    image_id, image = next(iter(images.items()))
    with app.client() as client:
        whole = client.get(f"/images/{image_id}")
        assert whole.status_code == 200 and whole.content == image.data
        assert whole.headers["content-type"] == image.media_type
        tag = whole.headers["etag"]
        again = client.get(f"/images/{image_id}", headers={"If-None-Match": tag})
        assert again.status_code == 304 and again.content == b""

        small = client.get(f"/images/{image_id}/thumbnail", params={"size": 32})
        assert small.status_code == 200 and small.headers["content-type"] == "image/jpeg"
        picture = Image.open(io.BytesIO(small.content))
        assert picture.format == "JPEG" and max(picture.size) == 32
        default = Image.open(io.BytesIO(client.get(f"/images/{image_id}/thumbnail").content))
        assert max(default.size) == max(Image.open(io.BytesIO(image.data)).size)  # never enlarged

        assert client.get(f"/images/{image_id}/thumbnail", params={"size": 8}).status_code == 422
        for unknown in ("0" * 32, "../../etc/passwd", "a" * 31):
            assert client.get(f"/images/{unknown}").status_code == 404
            assert client.get(f"/images/{unknown}/thumbnail").status_code == 404


def test_an_upload_of_a_stored_picture_names_the_original(app: RunningApp, uploaded) -> None:
    _, images = uploaded
    image_id, image = next(iter(images.items()))
    again = post_upload(app, image)
    assert again["duplicate_of"] == image_id and again["image_id"] != image_id
    buffer = io.BytesIO()
    noise_image(7777).save(buffer, format="PNG")
    fresh = post_upload(app, HeldOut(UPLOADS[0].scene, buffer.getvalue(), "image/png", "n.png"))
    assert fresh["duplicate_of"] is None


def test_bad_searches_are_refused_with_what_to_fix(app: RunningApp, uploaded) -> None:
    window, images = uploaded
    started = window["created_after"]
    image_id = next(iter(images))
    png = base64.b64encode(UPLOADS[0].data).decode()
    refused(app, 422, "empty_query", json={})
    refused(app, 422, "empty_query", json={"text": "   "})
    refused(app, 422, "too_many_images", json={"image_id": image_id, "image_b64": png})
    refused(app, 422, "text_weight_needs_both", json={"text": "a star", "text_weight": 0.3})
    refused(app, 422, "query_too_long", json={"text": "a" * 501})
    refused(app, 422, "page_too_large", json={"text": "a star", "limit": 101})
    refused(
        app,
        422,
        "empty_range",
        json={"text": "x", "created_after": started, "created_before": started},
    )
    refused(app, 404, "unknown_image_id", json={"image_id": "0" * 32})
    refused(app, 400, "invalid_base64", json={"image_b64": "not base64!"})
    refused(app, 400, "invalid_cursor", json={"text": "a star", "cursor": "bm90IGEgY3Vyc29y"})
    cursor = search(app, text="a star", limit=1)["next_cursor"]
    refused(app, 400, "cursor_mismatch", json={"text": "a circle", "cursor": cursor})
    refused(
        app,
        415,
        "unsupported_media_type",
        content=b"text=x",
        headers={"content-type": "text/plain"},
    )
    for body in ({"text": 5}, {"kinds": ["photos"]}, {"min_score": 2}, {"surprise": 1}):
        with app.client() as client:
            assert client.post("/api/search", json=body).status_code == 422, body


def test_vectors_of_another_encoder_make_search_ask_for_a_rebuild(
    app: RunningApp, uploaded
) -> None:
    """A stored vector with another fingerprint (as after changing the encoder) turns search
    into a 409 naming vlgraph-index --rebuild; giving it the served encoder's vector again
    (what the rebuild does) ends it."""
    _, images = uploaded
    image_id = next(iter(images))
    config: AppConfig = app.config
    store = SqliteImageStore(config.store.resolved_data_dir())
    (current,) = [v for v in asyncio.run(store.vectors_since(0, 100_000)) if v.image_id == image_id]
    try:
        asyncio.run(store.set_vector(image_id, ImageVector(current.vector, "another-encoder")))
        with app.client() as client:
            # Replicas trust their last check for a few seconds: wait for it to lapse.
            for _ in range(40):
                response = client.post("/api/search", json={"text": "a star"})
                if response.status_code == 409:
                    break
                asyncio.run(asyncio.sleep(0.25))
        assert response.status_code == 409, response.text
        error = response.json()["error"]
        assert error["code"] == "search_index_needs_rebuild"
        assert (
            "vlgraph-index --rebuild" in error["message"] and "1 were indexed" in error["message"]
        )
    finally:
        asyncio.run(store.set_vector(image_id, ImageVector(current.vector, current.fingerprint)))
    search(app, text="a star")
