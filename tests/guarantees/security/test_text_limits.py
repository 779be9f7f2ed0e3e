"""Security, section 6: overlong and empty prompts, questions and texts, counted as sent."""

from __future__ import annotations

import pytest

from tests.support.common import (
    TEST_MAX_PROMPT_CHARS,
    TEST_MAX_QUESTION_CHARS,
    TEST_MAX_TEXT_CHARS,
    RunningApp,
)
from tests.support.security import GOOD_JPEG, SIMILAR_IMAGE, case_ids, check, client

pytestmark = pytest.mark.integration

P, Q, T = TEST_MAX_PROMPT_CHARS, TEST_MAX_QUESTION_CHARS, TEST_MAX_TEXT_CHARS
ONE_IMAGE = [("images", ("x.jpg", GOOD_JPEG, "image/jpeg"))]
TWO_IMAGES = ONE_IMAGE * 2

#: (id, method, route, request keywords, status, code, fragment); limits count characters
#: as sent, whitespace included.
TEXT_CASES = [
    *(
        (
            f"{route.rsplit('/', 1)[1]}-{field_name}-{kind}",
            "POST",
            route,
            {"params": {"model": model, field_name: text}, "files": files},
            422,
            "prompt_too_long",
            f"has {P + 1} characters; the limit is {P}",
        )
        for route, model, files in (
            ("/api/caption-images", "blip", ONE_IMAGE),
            ("/api/caption-collective-images", "gemma", TWO_IMAGES),
        )
        for field_name in ("caption_prompt", "flag_caption_prompt")
        for kind, text in (("long", "a" * (P + 1)), ("spaces", " " * (P + 1)))
    ),
    *(
        (
            f"question-{kind}-{encoding}",
            "POST",
            "/question",
            {encoding: {"question": text, "image_id": "0" * 32}},
            status,
            code,
            fragment,
        )
        for encoding in ("json", "data")
        for kind, text, status, code, fragment in (
            ("long", "q" * (Q + 1), 422, "question_too_long", f"has {Q + 1} characters"),
            ("spaces", " " * (Q + 1), 422, "question_too_long", f"has {Q + 1} characters"),
            ("padded", " " + "q" * Q, 422, "question_too_long", f"the limit is {Q}"),
            ("blank", "   ", 422, "empty_question", "empty"),
            # separators and BOM: blank to Python or to JSON Schema, so blank here
            ("separators", "\x1d\x1f\u3000\ufeff", 422, "empty_question", "empty"),
            ("empty", "", 422, "empty_question", "empty"),
            # control: exactly the limit passes the check, and only the id is unknown
            ("at-limit", "q" * Q, 404, "unknown_image_id", "no stored image"),
        )
    ),
    (
        "encode-text-long",
        "POST",
        "/encode_text",
        {"json": {"text": "t" * (T + 1)}},
        422,
        "text_too_long",
        f"has {T + 1} characters; the limit is {T}",
    ),
    (
        "encode-text-spaces",
        "POST",
        "/encode_text",
        {"json": {"text": " " * (T + 1)}},
        422,
        "text_too_long",
        f"has {T + 1} characters",
    ),
    (
        "encode-text-long-item",
        "POST",
        "/encode_text",
        {"json": {"text": ["fine", "t" * (T + 1)]}},
        422,
        "text_too_long",
        "item 1",
    ),
    ("encode-text-blank", "POST", "/encode_text", {"json": {"text": "  "}}, 422, "empty_text", ""),
    ("encode-text-empty", "POST", "/encode_text", {"json": {"text": ""}}, 422, "empty_text", ""),
    *(
        (
            f"{route_id}-{field_name}-{kind}",
            method,
            route,
            {
                carrier: {
                    prompt_key: "x",
                    (prompt_key if field_name == "prompt" else field_name): text,
                }
            },
            422,
            "generation_limit",
            fragment,
        )
        for route_id, method, route, carrier, prompt_key in (
            ("generate", "POST", "/generate", "json", "description"),
            ("generate-form", "POST", "/generate", "data", "description"),
            ("generate-stream", "POST", "/generate/stream", "json", "description"),
            ("generate-image", "GET", "/generate-image", "params", "prompt"),
            ("generate-image-stream", "GET", "/generate-image/stream", "params", "prompt"),
        )
        for field_name in ("prompt", "negative_prompt")
        for kind, text, fragment in (
            ("long", "p" * (P + 1), f"has {P + 1} characters; the limit is {P}"),
            ("spaces", " " * (P + 1), f"has {P + 1} characters"),
        )
    ),
    *(
        (
            f"{route.rsplit('/', 1)[1]}-negative_prompt-long",
            "POST",
            route,
            {"files": SIMILAR_IMAGE, "data": {"negative_prompt": "n" * (P + 1)}},
            422,
            "generation_limit",
            f"negative_prompt has {P + 1} characters",
        )
        for route in ("/api/similar-image", "/api/similar-image/stream")
    ),
    *(
        (
            f"{name}-blank-prompt",
            method,
            route,
            request,
            422,
            "generation_limit",
            "prompt is empty",
        )
        for name, method, route, request in (
            ("generate", "POST", "/generate", {"json": {"description": "   "}}),
            ("generate-image", "GET", "/generate-image", {"params": {"prompt": "\t\n"}}),
        )
    ),
]


@pytest.mark.parametrize(
    ("case", "method", "route", "keywords", "status", "code", "fragment"),
    TEXT_CASES,
    ids=case_ids(TEXT_CASES),
)
def test_text_inputs_are_bounded_as_sent(
    app: RunningApp,
    case: str,
    method: str,
    route: str,
    keywords: dict,
    status: int,
    code: str,
    fragment: str,
) -> None:
    with client(app) as http:
        check(http.request(method, route, **keywords), status, code, fragment)
