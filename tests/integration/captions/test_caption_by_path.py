"""BLIP captioning by path's routes through a real ``serve.run`` on tiny checkpoints."""

from __future__ import annotations

import concurrent.futures

import pytest

from tests.support.common import TEST_MAX_BATCH_IMAGES, RunningApp

pytestmark = pytest.mark.integration


def caption(app: RunningApp, image_path: str):
    with app.client() as client:
        return client.post("/caption", json={"image_path": image_path})


def assert_error(response, status: int, code: str, *fragments: str) -> None:
    """The standard error body, with the request id of the response header."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    assert body["error"]["request_id"] == response.headers["x-request-id"]
    for fragment in fragments:
        assert fragment in body["error"]["message"]


def test_health_check_answers_json(app: RunningApp) -> None:
    with app.client() as client:
        response = client.get("/")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    served = ["blip", "blip2", "gemma", "intern_vlm", "vqa", "clip_image", "clip_text"]
    assert body["models"] == sorted([*served, "sd", "sdxl", "similar_image"])
    assert body["reachable"] == dict.fromkeys(body["models"], True)
    assert body["random_weights"] is True  # every test model is a tiny checkpoint
    assert response.headers["x-request-id"]


def test_browsers_get_the_web_page_at_the_same_url(app: RunningApp) -> None:
    """The test page of multi-model captioning lives at ``/`` too: a browser's Accept gets it,
    its assets come from the app; API clients keep the JSON above."""
    browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    with app.client() as client:
        page = client.get("/", headers={"Accept": browser})
        script = client.get("/static/app.js")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<title>vlgraph</title>" in page.text and "static/app.js" in page.text
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]


def test_caption_response_has_the_original_fields(app: RunningApp) -> None:
    response = caption(app, "red.jpg")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"image_path", "caption", "processing_time"}
    assert body["image_path"] == "red.jpg"
    assert isinstance(body["caption"], str) and body["caption"]
    assert 0 < body["processing_time"] < 60


def test_absolute_path_inside_root_and_inner_symlink_are_accepted(app: RunningApp) -> None:
    absolute = caption(app, str(app.image_root / "nested" / "blue.png"))
    assert absolute.status_code == 200, absolute.text
    assert absolute.json()["image_path"] == str(app.image_root / "nested" / "blue.png")
    linked = caption(app, "inside_link.jpg")
    assert linked.status_code == 200
    assert linked.json()["caption"] == caption(app, "red.jpg").json()["caption"]


def test_format_is_judged_by_content_not_extension(app: RunningApp) -> None:
    assert caption(app, "really_png.jpg").status_code == 200
    assert caption(app, "noise.webp").status_code == 200
    assert_error(caption(app, "not_an_image.jpg"), 415, "unsupported_media_type", "JPEG, PNG")
    assert_error(caption(app, "animated.gif"), 415, "unsupported_media_type", "found GIF")
    assert_error(caption(app, "fake_magic.png"), 415, "unsupported_media_type", "header")


def test_different_images_get_different_captions(app: RunningApp) -> None:
    captions = {caption(app, f"world{index}.jpg").json()["caption"] for index in range(4)}
    assert len(captions) > 1


@pytest.mark.parametrize(
    ("image_path", "status", "code"),
    [
        ("../outside.jpg", 403, "path_outside_image_root"),
        ("nested/../../outside.jpg", 403, "path_outside_image_root"),
        ("/etc/passwd", 403, "path_outside_image_root"),
        ("escape_link.jpg", 403, "path_outside_image_root"),
        ("red\u0000.jpg", 400, "invalid_path"),
        ("missing.jpg", 404, "image_not_found"),
        ("nested", 404, "not_a_file"),
        ("big_file.png", 413, "image_too_large"),
        ("many_pixels.png", 413, "image_too_many_pixels"),
        ("truncated.jpg", 422, "undecodable_image"),
    ],
)
def test_caption_refuses_bad_paths_and_files(
    app: RunningApp, image_path: str, status: int, code: str
) -> None:
    assert_error(caption(app, image_path), status, code)


def test_outside_path_under_absolute_form_is_refused(app: RunningApp) -> None:
    outside = app.image_root.parent / "outside.jpg"
    assert outside.exists()
    assert_error(caption(app, str(outside)), 403, "path_outside_image_root", "image root")


@pytest.mark.parametrize(
    "body",
    [{}, {"image_path": ""}, {"image_path": 3}, {"image_paths": ["red.jpg"]}, []],
)
def test_caption_body_errors_are_422_naming_the_field(app: RunningApp, body) -> None:
    with app.client() as client:
        response = client.post("/caption", json=body)
    assert_error(response, 422, "invalid_request", "invalid request")


def test_malformed_json_is_422(app: RunningApp) -> None:
    with app.client() as client:
        response = client.post(
            "/caption", content=b"{not json", headers={"content-type": "application/json"}
        )
    assert_error(response, 422, "invalid_request")


@pytest.mark.parametrize("route", ["/batch-caption", "/async-batch-caption"])
def test_batch_gives_bad_items_errors_and_good_items_captions(app: RunningApp, route: str) -> None:
    paths = ["red.jpg", "../outside.jpg", "missing.jpg", "truncated.jpg", "noise1.jpg"]
    with app.client() as client:
        response = client.post(route, json={"image_paths": paths})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"results", "total_processing_time"}
    results = body["results"]
    assert [item["image_path"] for item in results] == paths
    assert [item["error"]["status"] if item["error"] else 200 for item in results] == [
        200,
        403,
        404,
        422,
        200,
    ]
    for item in (results[0], results[4]):
        assert item["caption"] and item["processing_time"] > 0
    assert results[0]["caption"] == caption(app, "red.jpg").json()["caption"]
    assert body["total_processing_time"] > 0


@pytest.mark.parametrize("route", ["/batch-caption", "/async-batch-caption"])
def test_batch_limits(app: RunningApp, route: str) -> None:
    with app.client() as client:
        too_many = client.post(
            route, json={"image_paths": ["red.jpg"] * (TEST_MAX_BATCH_IMAGES + 1)}
        )
        empty = client.post(route, json={"image_paths": []})
        wrong = client.post(route, json={"image_path": "red.jpg"})
    assert_error(too_many, 413, "too_many_images", str(TEST_MAX_BATCH_IMAGES))
    assert_error(empty, 422, "invalid_request", "image_paths")
    assert_error(wrong, 422, "invalid_request", "image_paths")


def test_batched_captions_equal_single_captions(app: RunningApp) -> None:
    paths = [f"noise{index}.jpg" for index in range(6)] + ["red.jpg", "nested/blue.png"]
    singles = [caption(app, path).json()["caption"] for path in paths]
    with app.client() as client:
        batch = client.post("/batch-caption", json={"image_paths": paths}).json()
    assert [item["caption"] for item in batch["results"]] == singles
    # Concurrent single requests are batched by @serve.batch on the replica.
    with concurrent.futures.ThreadPoolExecutor(len(paths)) as pool:
        concurrent_captions = list(pool.map(lambda p: caption(app, p).json()["caption"], paths))
    assert concurrent_captions == singles


def test_unknown_route_and_method(app: RunningApp) -> None:
    with app.client() as client:
        assert_error(client.get("/nope"), 404, "route_not_found")
        assert_error(client.get("/caption"), 405, "method_not_allowed")


def test_docs_and_openapi_are_live(app: RunningApp) -> None:
    with app.client() as client:
        docs = client.get("/docs")
        schema = client.get("/openapi.json").json()
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    for route in ("/", "/caption", "/batch-caption", "/async-batch-caption"):
        assert route in schema["paths"]
    assert "413" in schema["paths"]["/batch-caption"]["post"]["responses"]


def test_client_request_id_is_echoed(app: RunningApp) -> None:
    with app.client() as client:
        response = client.post(
            "/caption", json={"image_path": "missing.jpg"}, headers={"x-request-id": "abc-123"}
        )
    assert response.headers["x-request-id"] == "abc-123"
    assert response.json()["error"]["request_id"] == "abc-123"
