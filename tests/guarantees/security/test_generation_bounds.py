"""Security, section 7: diffusion sizes, steps, guidance and seeds past their bounds."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.support.common import TEST_MAX_IMAGE_SIDE, TEST_MAX_STEPS, RunningApp
from tests.support.security import SIMILAR_IMAGE, case_ids, check, client

pytestmark = pytest.mark.integration

SIDE, MAX_SEED = TEST_MAX_IMAGE_SIDE, 2**63 - 1
SIZE_RULE = f"must be a multiple of 8 between 64 and {SIDE}"
#: (id, field, value, status, code, fragment)
GENERATION_CASES = [
    *(
        (f"{name}-{kind}", name, value, 422, "generation_limit", f"{name} {SIZE_RULE}, not {value}")
        for name in ("height", "width")
        for kind, value in (
            ("not-multiple-of-8", 100),
            ("below-64", 56),
            ("above-max", SIDE + 8),
            ("zero", 0),
            ("negative", -64),
            ("huge", 2**31),
        )
    ),
    *(
        (
            f"steps-{kind}",
            "num_inference_steps",
            value,
            422,
            "generation_limit",
            f"between 1 and {TEST_MAX_STEPS}, not {value}",
        )
        for kind, value in (("zero", 0), ("above-max", TEST_MAX_STEPS + 1), ("negative", -5))
    ),
    *(
        (f"guidance-{kind}", "guidance_scale", value, 422, "generation_limit", "between 0 and 20")
        for kind, value in (
            ("above-max", 20.5),
            ("negative", -0.1),
            ("nan", float("nan")),
            ("inf", float("inf")),
        )
    ),
    *(
        (f"seed-{kind}", "seed", value, 422, "generation_limit", f"between 0 and {MAX_SEED}")
        for kind, value in (("negative", -1), ("2^63", MAX_SEED + 1), ("2^64", 2**64 + 1))
    ),
    ("height-text", "height", "tall", 422, "invalid_request", "height"),
    ("steps-fraction", "num_inference_steps", 2.5, 422, "invalid_request", "num_inference_steps"),
    ("seed-text", "seed", "lucky", 422, "invalid_request", "seed"),
    ("seed-5000-digits", "seed", "9" * 5000, 422, "invalid_request", "seed"),
    ("guidance-text", "guidance_scale", "strong", 422, "invalid_request", "guidance_scale"),
    ("unknown-field", "strength", 0.5, 422, "invalid_request", "strength"),
]


def generation_request(app: RunningApp, route: str, field_name: str, value: Any) -> httpx.Response:
    """One generation request with ``field_name`` set to ``value``, as ``route`` takes it:
    JSON (NaN and Infinity as JavaScript writes them), query string, or form fields."""
    with client(app) as http:
        if route == "generate":
            body = json.dumps({"description": "a red square", field_name: value})
            return http.post(
                "/generate", content=body, headers={"Content-Type": "application/json"}
            )
        if route == "generate-image":
            return http.get("/generate-image", params={"prompt": "a red square", field_name: value})
        return http.post("/api/similar-image", files=SIMILAR_IMAGE, data={field_name: str(value)})


@pytest.mark.parametrize("route", ["generate", "generate-image", "similar-image"])
@pytest.mark.parametrize(
    ("case", "field_name", "value", "status", "code", "fragment"),
    GENERATION_CASES,
    ids=case_ids(GENERATION_CASES),
)
def test_generation_settings_are_bounded(
    app: RunningApp,
    route: str,
    case: str,
    field_name: str,
    value: Any,
    status: int,
    code: str,
    fragment: str,
) -> None:
    check(generation_request(app, route, field_name, value), status, code, fragment)
