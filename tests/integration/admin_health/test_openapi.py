"""The OpenAPI description states the running service: its limits, the models it serves on
each route, every error an operation can answer (all with the one error body), the image types
uploads take, the admin key, and the links from a new image_id to the routes that use it."""

from __future__ import annotations

import pytest

from deployments.ingress.app import DESCRIPTION, TITLE, create_api
from deployments.ingress.context import IngressContext
from deployments.ingress.openapi import ServiceLimits, service_openapi
from deployments.ingress.settings import GuardSettings, IngressSettings
from graphs.registry import REGISTRY
from tests.support.common import (
    TEST_MAX_BATCH_IMAGES,
    TEST_MAX_ENCODE_ITEMS,
    TEST_MAX_HISTORY_PAGE,
    TEST_MAX_IMAGE_SIDE,
    TEST_MAX_PROMPT_CHARS,
    TEST_MAX_QUESTION_CHARS,
    TEST_MAX_STEPS,
    TEST_MAX_TEXT_CHARS,
    TEST_MAX_UPLOAD_IMAGES,
    RunningApp,
)
from vlgraph.config import DiffusionConfig, IngressConfig, StoreConfig
from vlgraph.served_models import ModelCatalog
from vlgraph.text_inputs import NOT_BLANK_PATTERN

ERROR = {"$ref": "#/components/schemas/ErrorResponse"}
OPENAI_ERROR = {"$ref": "#/components/schemas/OpenAIErrorResponse"}


def parameter(spec: dict, path: str, name: str, method: str = "post") -> dict:
    (found,) = [p for p in spec["paths"][path][method]["parameters"] if p["name"] == name]
    return found["schema"]


def body(spec: dict, path: str, media: str = "application/json") -> dict:
    schema = spec["paths"][path]["post"]["requestBody"]["content"][media]["schema"]
    if "$ref" in schema:
        return spec["components"]["schemas"][schema["$ref"].rpartition("/")[2]]
    return schema


def string_branch(schema: dict) -> dict:
    return next(b for b in schema.get("anyOf", [schema]) if b.get("type") == "string")


@pytest.mark.integration
def test_the_live_description_states_the_profiles_limits(app: RunningApp) -> None:
    with app.client() as client:
        spec = client.get("/openapi.json").json()
    prompt = string_branch(parameter(spec, "/api/caption-images", "caption_prompt"))
    assert prompt["maxLength"] == TEST_MAX_PROMPT_CHARS
    images = body(spec, "/api/caption-images", "multipart/form-data")["properties"]["images"]
    assert (images["minItems"], images["maxItems"]) == (1, TEST_MAX_UPLOAD_IMAGES)
    assert images["items"]["format"] == "binary"
    assert body(spec, "/batch-caption")["properties"]["image_paths"]["maxItems"] == (
        TEST_MAX_BATCH_IMAGES
    )
    question = body(spec, "/question")["properties"]["question"]
    assert (question["maxLength"], question["pattern"]) == (
        TEST_MAX_QUESTION_CHARS,
        NOT_BLANK_PATTERN,
    )
    text = body(spec, "/encode_text")["properties"]["text"]
    assert string_branch(text)["maxLength"] == TEST_MAX_TEXT_CHARS
    (array,) = [b for b in text["anyOf"] if b.get("type") == "array"]
    assert array["maxItems"] == TEST_MAX_ENCODE_ITEMS
    assert body(spec, "/encode_image")["oneOf"], "exactly one of image_url and image_b64"
    limit = parameter(spec, "/history", "limit", "get")["anyOf"][0]
    assert limit["maximum"] == TEST_MAX_HISTORY_PAGE
    height = parameter(spec, "/generate-image", "height", "get")["anyOf"][0]
    assert (height["minimum"], height["maximum"], height["multipleOf"]) == (
        64,
        TEST_MAX_IMAGE_SIDE,
        8,
    )
    steps = body(spec, "/generate")["properties"]["num_inference_steps"]["anyOf"][0]
    assert steps["maximum"] == TEST_MAX_STEPS
    assert parameter(spec, "/api/caption-images", "model")["enum"] == [
        "blip",
        "blip2",
        "gemma",
        "intern_vlm",
    ]
    collective = parameter(spec, "/api/caption-collective-images", "model")
    assert next(b for b in collective["anyOf"] if "enum" in b)["enum"] == ["gemma", "intern_vlm"]
    upload = spec["paths"]["/upload"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert upload["encoding"]["image"]["contentType"] == "image/jpeg, image/png"


def undescribed_bounds(schema: object, where: str = "") -> list[str]:
    """Where ``schema`` holds ``ge``/``le``/``gt``/``lt`` beside ``type``: pydantic's names of
    bounds it failed to translate, which JSON Schema (and every client) ignores."""
    if isinstance(schema, dict):
        found = [f"{where}.{key}" for key in ("ge", "le", "gt", "lt") if key in schema]
        found = found if "type" in schema else []
        for key, value in schema.items():
            found += undescribed_bounds(value, f"{where}.{key}")
        return found
    if isinstance(schema, list):
        return [
            hit
            for i, item in enumerate(schema)
            for hit in undescribed_bounds(item, f"{where}[{i}]")
        ]
    return []


@pytest.mark.integration
def test_every_operation_lists_every_error_with_the_one_body(app: RunningApp) -> None:
    with app.client() as client:
        spec = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            assert {"500", "503"} <= set(responses), (method, path)
            if "requestBody" in operation:
                assert {"400", "408", "413", "422"} <= set(responses), (method, path)
            assert "Retry-After" in responses["503"]["headers"], (method, path)
            body = OPENAI_ERROR if path.startswith("/v1/") else ERROR
            for status, answer in responses.items():
                if status[0] in "45":
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == body or body in schema.get("anyOf", []), (path, status)
    assert undescribed_bounds(spec) == [], "bounds JSON Schema ignores (pydantic's ge/le)"
    admin = spec["paths"]["/api/admin/reset-cache"]["post"]
    assert admin["security"] == [{"APIKeyHeader": []}]
    links = spec["paths"]["/upload"]["post"]["responses"]["200"]["links"]
    assert {link["operationId"] for link in links.values()} == {
        spec["paths"]["/question"]["post"]["operationId"],
        spec["paths"]["/images/{image_id}"]["get"]["operationId"],
    }


def test_a_profile_without_some_models_describes_only_the_served_ones(tmp_path) -> None:
    """Without Ray: the description of a profile that serves BLIP, InternVL and SDXL only,
    with its own limits and a 429 for overload."""
    sdxl = DiffusionConfig(family="sdxl", source="tiny:sdxl", max_height=1024, max_width=512)
    entries = {entry.name: entry for entry in REGISTRY}
    catalog = ModelCatalog(
        known={entry.name: entry.capabilities for entry in REGISTRY},
        served=tuple(entries[name].served_as(sdxl) for name in ("blip", "intern_vlm", "sdxl")),
    )
    ingress = IngressConfig(max_prompt_chars=77, max_upload_images=3)
    settings = IngressSettings(
        profile="test",
        config=ingress,
        catalog=catalog,
        store=StoreConfig(backend="sqlite", data_dir=tmp_path),
        generators={"sdxl": sdxl},
    )
    api = create_api(IngressContext.create({}, settings), GuardSettings.from_config(ingress))
    limits = ServiceLimits(
        ingress=ingress, catalog=catalog, generators={"sdxl": sdxl}, overload_statuses=(429, 503)
    )
    spec = service_openapi(TITLE, "0", DESCRIPTION, api.routes, limits)
    assert parameter(spec, "/api/caption-images", "model")["enum"] == ["blip", "intern_vlm"]
    generate = body(spec, "/generate")["properties"]
    assert generate["model"]["enum"] == ["sdxl"]
    assert "default" not in generate["model"], "sd is the route's default but is not served"
    assert generate["height"]["anyOf"][0]["maximum"] == 1024
    assert generate["width"]["anyOf"][0]["maximum"] == 512
    assert string_branch(generate["description"])["maxLength"] == 77
    caption = spec["paths"]["/caption"]["post"]["responses"]
    assert "Retry-After" in caption["429"]["headers"]
