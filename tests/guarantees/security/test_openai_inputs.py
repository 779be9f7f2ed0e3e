"""Security, section 10: what only the /v1 routes take. data: URIs through chat and
embeddings (malformed, mislabelled, oversized, too many), bodies past the limit, and
conversations past the model's context or the character limit; every refusal in OpenAI's
error shape, naming the field. (URL fetching through /v1 runs the whole SSRF battery in
test_ssrf.py; bombs, byte limits and mislabelled files run through /v1 in their sections.)"""

from __future__ import annotations

import base64

import pytest

from tests.support.common import (
    TEST_MAX_IMAGE_BYTES,
    TEST_MAX_UPLOAD_IMAGES,
    RunningApp,
    jpeg_bytes,
    noise_image,
)
from tests.support.security import (
    GOOD_JPEG,
    check,
    client,
    data_uri,
    encoded,
    openai_image_request,
)

pytestmark = pytest.mark.integration

GOOD = base64.b64encode(GOOD_JPEG).decode("ascii")
BIG_PNG = encoded(noise_image(33, (400, 400)), "PNG")

#: (id, data URI, status, code, message fragment)
DATA_URI_CASES = [
    ("no-comma", f"data:image/jpeg;base64{GOOD}", 400, "invalid_data_uri", "comma"),
    ("not-base64", "data:image/jpeg," + "%FF%D8" * 10, 400, "invalid_data_uri", ";base64"),
    ("text-type", "data:text/plain;base64,aGVsbG8=", 400, "invalid_data_uri", "'text/plain'"),
    ("no-type", f"data:;base64,{GOOD}", 400, "invalid_data_uri", "'text/plain'"),
    ("html-type", f"data:text/html;base64,{GOOD}", 400, "invalid_data_uri", "'text/html'"),
    ("bad-alphabet", "data:image/png;base64,@@@@", 400, "invalid_base64", "not valid base64"),
    ("line-breaks", f"data:image/jpeg;base64,{GOOD[:40]}\n{GOOD[40:]}", 400, "invalid_base64", ""),
    ("url-safe-alphabet", "data:image/png;base64,-_-_", 400, "invalid_base64", ""),
    ("empty-payload", "data:image/jpeg;base64,", 415, "unsupported_media_type", ""),
    ("text-as-image", "data:image/png;base64,aGVsbG8gd29ybGQ=", 415, "unsupported_media_type", ""),
    (
        "jpeg-cut-in-its-header",
        "data:image/jpeg;base64," + base64.b64encode(GOOD_JPEG[:200]).decode(),
        415,
        "unsupported_media_type",
        "header is unreadable",
    ),
    (
        "over-the-byte-limit",
        data_uri(BIG_PNG, "image/png"),
        413,
        "image_too_large",
        str(TEST_MAX_IMAGE_BYTES),
    ),
    (
        "mislabelled-but-an-image",  # judged by content: a JPEG labelled PNG is a JPEG
        data_uri(GOOD_JPEG, "image/png"),
        200,
        None,
        "",
    ),
]


@pytest.mark.parametrize("route", ["v1-chat", "v1-embed"])
@pytest.mark.parametrize(
    ("case", "uri", "status", "code", "fragment"),
    DATA_URI_CASES,
    ids=[case[0] for case in DATA_URI_CASES],
)
def test_data_uris_are_checked_like_uploads(
    app: RunningApp, route: str, case: str, uri: str, status: int, code: str | None, fragment: str
) -> None:
    with client(app) as http:
        response = openai_image_request(http, route, uri)
    body = check(response, status, code, fragment)
    if code is not None:
        param = "input[0]" if route == "v1-embed" else "messages[0].content[0].image_url"
        assert body["error"]["param"] == param, body
        assert body["error"]["message"].startswith(param), body


def test_too_many_images_are_refused_before_any_is_read(app: RunningApp) -> None:
    uri = data_uri(GOOD_JPEG, "image/jpeg")
    over = TEST_MAX_UPLOAD_IMAGES + 1
    parts = [{"type": "image_url", "image_url": {"url": uri}}] * over
    with client(app) as http:
        chat = http.post(
            "/v1/chat/completions",
            json={"model": "gemma", "messages": [{"role": "user", "content": parts}]},
        )
        embed = http.post(
            "/v1/embeddings",
            json={"model": "clip_image", "input": [uri] * over, "modality": "image"},
        )
    for response in (chat, embed):
        body = check(response, 413, "too_many_images", f"the limit is {TEST_MAX_UPLOAD_IMAGES}")
        assert body["error"]["type"] == "invalid_request_error"


def test_a_body_over_the_limit_is_refused_in_openai_shape(app: RunningApp) -> None:
    uri = data_uri(jpeg_bytes(noise_image(5)), "image/jpeg")
    huge = {"model": "gemma", "messages": [{"role": "user", "content": "x" * 3_000_000}]}
    with client(app) as http:
        response = http.post("/v1/chat/completions", json=huge)
    check(response, 413, "body_too_large", "ingress.max_body_bytes")
    assert uri  # the small image of the next case still passes
    with client(app) as http:
        check(openai_image_request(http, "v1-chat", uri), 200, None)


def test_conversations_past_the_context_or_the_character_limit(app: RunningApp) -> None:
    uri = data_uri(GOOD_JPEG, "image/jpeg")
    image = {"type": "image_url", "image_url": {"url": uri}}
    cases = [
        (
            [{"role": "user", "content": [image, {"type": "text", "text": "circle " * 600}]}],
            {},
            "prompt_too_long_for_model",
            ("takes", "gemma reads at most 512", "shorten it"),
        ),
        (
            [{"role": "user", "content": [image, {"type": "text", "text": "hi"}]}],
            {"max_tokens": 100_000},
            "prompt_too_long_for_model",
            ("including the 100000 it generates",),
        ),
        (
            [{"role": "user", "content": "y" * 32_001}],
            {},
            "conversation_too_long",
            ("32001 characters", "ingress.max_chat_chars"),
        ),
    ]
    for messages, extra, code, fragments in cases:
        for stream in (False, True):
            body = {"model": "gemma", "messages": messages, "stream": stream, **extra}
            with client(app) as http:
                response = http.post("/v1/chat/completions", json=body)
            check(response, 422, code, *fragments)
