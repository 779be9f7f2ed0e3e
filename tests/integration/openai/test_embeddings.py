"""POST /v1/embeddings through the official ``openai`` client: texts and images in one
space, infinity's ``modality`` and vLLM's ``messages`` forms, float and base64 encodings,
batches, and the same vectors as /encode_text and /encode_image."""

from __future__ import annotations

import base64

import httpx
import jsonschema
import numpy as np
import pytest

from tests.support.common import RunningApp, jpeg_bytes, world_image, world_scene
from tests.support.openai_api import check_openai_error, image_message, sync_client, world_uri

pytestmark = pytest.mark.integration


def embeddings(app: RunningApp, **body) -> httpx.Response:
    with app.client() as http:
        return http.post("/v1/embeddings", json=body)


def test_texts_match_encode_text_in_both_encodings(app: RunningApp) -> None:
    texts = ["a red circle on a white background", "ein blauer Stern auf grauem Hintergrund"]
    client = sync_client(app)
    answer = client.embeddings.create(model="clip_text", input=texts)  # base64 on the wire
    floats = client.embeddings.create(model="clip_text", input=texts, encoding_format="float")
    with app.client() as http:
        reference = http.post("/encode_text", json={"text": texts, "normalize": True}).json()
    assert [item.index for item in answer.data] == [0, 1]
    for ours, plain, expected in zip(
        answer.data, floats.data, reference["embeddings"], strict=True
    ):
        assert np.allclose(ours.embedding, expected, atol=1e-6)
        assert np.allclose(plain.embedding, expected, atol=1e-6)
        assert abs(np.linalg.norm(ours.embedding) - 1) < 1e-5
    assert answer.model == "clip_text" and answer.usage.prompt_tokens >= 10
    assert answer.usage.total_tokens == answer.usage.prompt_tokens


def test_base64_is_little_endian_float32(app: RunningApp) -> None:
    body = embeddings(app, model="clip_text", input="a red star", encoding_format="base64").json()
    vector = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    floats = embeddings(app, model="clip_text", input="a red star").json()["data"][0]["embedding"]
    assert vector.shape == (512,) and np.allclose(vector, floats, atol=1e-6)


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_answers_match_the_published_schema(app: RunningApp, encoding_format: str) -> None:
    with app.client() as http:
        described = http.get("/openapi.json").json()
    operation = described["paths"]["/v1/embeddings"]["post"]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    validator = jsonschema.Draft202012Validator({**schema, "components": described["components"]})
    body = embeddings(app, model="clip_text", input="a red star", encoding_format=encoding_format)
    validator.validate(body.json())


def test_images_in_both_forms_match_encode_image(app: RunningApp) -> None:
    client = sync_client(app)
    uris = [world_uri(40), world_uri(41)]
    infinity = client.embeddings.create(
        model="clip_image", input=uris, extra_body={"modality": "image"}
    )
    vllm = client.embeddings.create(
        model="clip_image", input=None, extra_body={"messages": [image_message(None, uris[0])]}
    )
    raw = [base64.b64encode(jpeg_bytes(world_image(i))).decode() for i in (40, 41)]
    with app.client() as http:
        reference = http.post("/encode_image", json={"image_b64": raw, "normalize": True}).json()
    for item, expected in zip(infinity.data, reference["embeddings"], strict=True):
        assert np.allclose(item.embedding, expected, atol=1e-6)
    assert np.allclose(vllm.data[0].embedding, reference["embeddings"][0], atol=1e-6)
    assert infinity.usage.prompt_tokens == 0


def test_texts_and_images_share_one_space(app: RunningApp) -> None:
    client = sync_client(app)
    indices = [42, 43, 44, 45]
    images = client.embeddings.create(
        model="clip_text", input=[world_uri(i) for i in indices], extra_body={"modality": "image"}
    )
    captions = client.embeddings.create(
        model="clip_image", input=[world_scene(i).caption for i in indices]
    )
    similarity = (
        np.array([c.embedding for c in captions.data])
        @ np.array([i.embedding for i in images.data]).T
    )
    assert list(similarity.argmax(axis=1)) == [0, 1, 2, 3], similarity


def test_text_messages_are_a_text(app: RunningApp) -> None:
    vllm = embeddings(
        app, model="clip_text", messages=[{"role": "user", "content": "a green square"}]
    ).json()
    plain = embeddings(app, model="clip_text", input="a green square").json()
    assert np.allclose(vllm["data"][0]["embedding"], plain["data"][0]["embedding"], atol=1e-6)


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"input": [1, 2, 3]}, 400, "token_ids_not_supported", "input"),
        ({"input": "x", "dimensions": 3}, 400, "unsupported_dimensions", "dimensions"),
        ({"model": "gemma", "input": "x"}, 400, "embeddings_not_supported", "model"),
        ({"model": "nope", "input": "x"}, 422, "unknown_model", None),
        ({"input": ["x"] * 7}, 413, "too_many_inputs", None),
        ({"input": []}, 422, "empty_input", None),
        ({"input": "   "}, 422, "empty_text", "input"),
        ({"input": ["ok", "y" * 301]}, 422, "text_too_long", "input[1]"),
        ({}, 400, "invalid_input", "input"),
        (
            {"input": "x", "messages": [{"role": "user", "content": "x"}]},
            400,
            "invalid_input",
            None,
        ),
        (
            {"messages": [image_message("and text", "data:image/png;base64,AAAA")]},
            400,
            "mixed_embedding_input",
            "messages",
        ),
        ({"input": "x", "truncate": True}, 400, "unsupported_field", "truncate"),
        (
            {"input": ["ftp://example.com/x.jpg"], "modality": "image"},
            400,
            "unsupported_url_scheme",
            "input[0]",
        ),
        ({"input": "x", "encoding_format": "int8"}, 422, "invalid_request", "encoding_format"),
    ],
)
def test_refusals_name_the_field(
    app: RunningApp, body: dict, status: int, code: str, param: str | None
) -> None:
    check_openai_error(embeddings(app, **{"model": "clip_text", **body}), status, code, param)
