"""The OpenAPI description of the running service, complete enough to fuzz against.

FastAPI describes routes from their Python signatures, which know types but not this
deployment's limits (prompt lengths, images per request, served models, generation bounds:
all from the profile), nor what every route can answer past its own code (the request guards'
408 and 413, the error mapper's 500 and 503). :func:`service_openapi` starts from FastAPI's
description and states those: each field named in :data:`FIELD_LIMITS` gets the constraints
the service enforces, wherever it appears (JSON body, form, query); ``model`` gets the models
this profile serves on that route; every operation lists every error it can answer, all with
the one error body; uploads declare the image types they take; links tell clients (and
fuzzers) that an uploaded or generated image's ``image_id`` feeds the question and image
routes.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi.openapi.utils import get_openapi
from starlette.routing import BaseRoute

from deployments.ingress.access import needs_key
from deployments.ingress.errors import ERROR_STATUS_TEXT, speaks_openai
from vlgraph.config import DiffusionConfig, IngressConfig
from vlgraph.generation_params import MAX_SEED, MIN_SIZE, SIZE_MULTIPLE
from vlgraph.image_store import IMAGE_ID_PATTERN
from vlgraph.images import ImageInfo
from vlgraph.search_config import MAX_REBUILD_BATCH, SearchConfig
from vlgraph.served_models import Capability, ModelCatalog
from vlgraph.text_inputs import BLANK_CLASS, NOT_BLANK_PATTERN

#: What a path must look like: no NUL byte, something other than white space (the character
#: that is not blank must not be NUL either).
IMAGE_PATH_PATTERN = rf"^[^\x00]*[^\x00{BLANK_CLASS}][^\x00]*$"
MAX_IMAGE_PATH_CHARS = 4096
#: An absolute http(s) URL without credentials (the fetcher refuses anything else).
IMAGE_URL_PATTERN = rf"^[Hh][Tt][Tt][Pp][Ss]?://[^/?#@{BLANK_CLASS}]+([/?#][^{BLANK_CLASS}]*)?$"
MAX_IMAGE_URL_CHARS = 2048
BASE64_PATTERN = r"^[A-Za-z0-9+/]*={0,2}$"
MAX_HISTORY_OFFSET = 2**31 - 1

ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorResponse"}
#: The error body under /v1 (OpenAI's shape).
OPENAI_ERROR_SCHEMA = {"$ref": "#/components/schemas/OpenAIErrorResponse"}
#: The two ways to send an API key (docs/access.md); an operation takes either.
SECURITY_SCHEMES = {
    "bearerKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key as Authorization: Bearer KEY (the openai client's way).",
    },
    "headerKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "The same API key in X-API-Key.",
    },
}
#: What the access control answers, described on every protected operation.
ACCESS_ERRORS = {
    "401": "No API key, a malformed one, or one that is not valid (revoked or rotated).",
    "429": "Past this key's rate limit or requests in flight; retry after Retry-After.",
}


@dataclass(frozen=True)
class ServiceLimits:
    """The running service's limits and served models, as the description states them."""

    ingress: IngressConfig
    catalog: ModelCatalog
    generators: dict[str, DiffusionConfig]
    overload_statuses: tuple[int, ...] = (503,)
    #: Search's limits (its defaults when the profile has search off: the routes still
    #: answer, with 400 search_not_served).
    search: SearchConfig = dataclasses.field(default_factory=SearchConfig)

    def largest(self, field: str, fallback: float) -> Any:
        """The most any served generator allows for ``field`` (a model's own bound may be
        tighter: 422 generation_limit names it)."""
        values = [getattr(config, field) for config in self.generators.values()]
        return max(values) if values else fallback

    @property
    def max_image_b64_chars(self) -> int:
        """Base64 characters of the largest image accepted."""
        return 4 * -(-self.ingress.max_image_bytes // 3)


def _text(limit: int, required: bool = False) -> dict[str, Any]:
    return {"maxLength": limit, **({"pattern": NOT_BLANK_PATTERN} if required else {})}


@dataclass(frozen=True)
class FieldLimits:
    """Constraints of one named field: on its string values (``string``; also each item of a
    list of strings), on the list itself (``array``), or on an integer or number
    (``number``)."""

    string: Callable[[ServiceLimits], dict[str, Any]] | None = None
    array: Callable[[ServiceLimits], dict[str, Any]] | None = None
    number: Callable[[ServiceLimits], dict[str, Any]] | None = None


def _size(field: str) -> FieldLimits:
    return FieldLimits(
        number=lambda limits: {
            "minimum": MIN_SIZE,
            "maximum": limits.largest(field, MIN_SIZE),
            "multipleOf": SIZE_MULTIPLE,
        }
    )


#: Every request field whose limits the service enforces, by name (the same name means the
#: same thing on every route that takes it).
FIELD_LIMITS: dict[str, FieldLimits] = {
    "image_path": FieldLimits(
        string=lambda _: {
            "minLength": 1,
            "maxLength": MAX_IMAGE_PATH_CHARS,
            "pattern": IMAGE_PATH_PATTERN,
        }
    ),
    # Any string is a valid item: a bad path gets its own error entry in a 200 answer.
    "image_paths": FieldLimits(
        array=lambda limits: {"minItems": 1, "maxItems": limits.ingress.max_batch_images},
    ),
    "images": FieldLimits(
        array=lambda limits: {"minItems": 1, "maxItems": limits.ingress.max_upload_images}
    ),
    "caption_prompt": FieldLimits(string=lambda limits: _text(limits.ingress.max_prompt_chars)),
    "flag_caption_prompt": FieldLimits(
        string=lambda limits: _text(limits.ingress.max_prompt_chars)
    ),
    "question": FieldLimits(
        string=lambda limits: _text(limits.ingress.max_question_chars, required=True)
    ),
    "image_id": FieldLimits(string=lambda _: {"pattern": IMAGE_ID_PATTERN}),
    "offset": FieldLimits(number=lambda _: {"minimum": 0, "maximum": MAX_HISTORY_OFFSET}),
    "limit": FieldLimits(
        number=lambda limits: {"minimum": 1, "maximum": limits.ingress.max_history_page}
    ),
    "text": FieldLimits(
        string=lambda limits: _text(limits.ingress.max_text_chars, required=True),
        array=lambda limits: {"minItems": 1, "maxItems": limits.ingress.max_encode_items},
    ),
    "image_url": FieldLimits(
        string=lambda _: {
            "format": "uri",
            "pattern": IMAGE_URL_PATTERN,
            "maxLength": MAX_IMAGE_URL_CHARS,
        },
        array=lambda limits: {"minItems": 1, "maxItems": limits.ingress.max_encode_items},
    ),
    "image_b64": FieldLimits(
        string=lambda limits: {
            "format": "byte",
            "contentEncoding": "base64",
            "contentMediaType": "image/*",
            "pattern": BASE64_PATTERN,
            "minLength": 4,
            "maxLength": limits.max_image_b64_chars,
        },
        array=lambda limits: {"minItems": 1, "maxItems": limits.ingress.max_encode_items},
    ),
    "description": FieldLimits(
        string=lambda limits: _text(limits.ingress.max_prompt_chars, required=True)
    ),
    "prompt": FieldLimits(
        string=lambda limits: _text(limits.ingress.max_prompt_chars, required=True)
    ),
    "negative_prompt": FieldLimits(string=lambda limits: _text(limits.ingress.max_prompt_chars)),
    "height": _size("max_height"),
    "width": _size("max_width"),
    "num_inference_steps": FieldLimits(
        number=lambda limits: {"minimum": 1, "maximum": limits.largest("max_steps", 1)}
    ),
    "guidance_scale": FieldLimits(
        number=lambda limits: {"minimum": 0, "maximum": limits.largest("max_guidance_scale", 0)}
    ),
    "seed": FieldLimits(number=lambda _: {"minimum": 0, "maximum": MAX_SEED}),
}

#: Fields whose limits differ on one operation, by (path, name); they win over FIELD_LIMITS.
OPERATION_FIELD_LIMITS: dict[tuple[str, str], FieldLimits] = {
    ("/api/search", "text"): FieldLimits(
        string=lambda limits: {"maxLength": limits.search.max_query_chars}
    ),
    ("/api/search", "limit"): FieldLimits(
        number=lambda limits: {"minimum": 1, "maximum": limits.search.max_limit}
    ),
    ("/api/admin/index/rebuild", "limit"): FieldLimits(
        number=lambda _: {"minimum": 1, "maximum": MAX_REBUILD_BATCH}
    ),
}

#: The OpenAPI extension by which a route says what its ``model`` picks (a capability).
MODEL_CAPABILITY = "x-model-capability"
#: The extension by which a route lists the served models its ``model`` picks, where no one
#: capability says it (the /v1 routes).
MODEL_NAMES = "x-model-names"

#: Image types each single-file upload route takes, by route and multipart field. (The
#: encoding object names a part's type; for a list of files the field's description does.)
UPLOAD_FIELDS = {
    "/upload": ("image", "upload_formats"),
    "/api/similar-image": ("image", "allowed_formats"),
    "/api/similar-image/stream": ("image", "allowed_formats"),
    "/v1/images/variations": ("image", "allowed_formats"),
}
FILE_PART = {"contentMediaType": "application/octet-stream"}

#: Where an ``image_id`` answered by one operation can be used next.
IMAGE_ID_SOURCES = {("/upload", "post"), ("/generate", "post")}


def service_openapi(
    title: str,
    version: str,
    description: str,
    routes: list[BaseRoute],
    limits: ServiceLimits,
    root_path: str = "",
    keys_required: bool = False,
) -> dict[str, Any]:
    """The OpenAPI description of this service with ``limits`` stated, and, when
    ``keys_required``, the API key every protected operation asks for."""
    document = get_openapi(
        title=title,
        version=version,
        description=description,
        routes=routes,
        servers=[{"url": root_path}] if root_path else None,
    )
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    operation_ids = {}
    for path, method, operation in _operations(document):
        operation_ids[(path, method)] = operation.get("operationId")
        capability = operation.pop(MODEL_CAPABILITY, None)
        served = limits.catalog.names(Capability(capability)) if capability else ()
        served = tuple(operation.pop(MODEL_NAMES, served))
        for parameter in operation.get("parameters", []):
            # FastAPI's "no example" placeholder loses its identity when Serve copies the app
            # and comes out as {}: not an example of any parameter.
            if parameter.get("example") == {}:
                del parameter["example"]
            _limit_field(path, parameter["name"], parameter["schema"], limits)
            if parameter["name"] == "model":
                _limit_models(parameter["schema"], served)
        for media_type, content in operation.get("requestBody", {}).get("content", {}).items():
            body = _resolved(content.get("schema", {}), schemas)
            for name, field in body.get("properties", {}).items():
                _mark_files(field)
                _limit_field(path, name, field, limits)
                if name == "model":
                    _limit_models(field, served)
            if media_type == "multipart/form-data" and path in UPLOAD_FIELDS:
                field, formats = UPLOAD_FIELDS[path]
                types = ", ".join(
                    ImageInfo(format=name, width=0, height=0).media_type
                    for name in getattr(limits.ingress, formats)
                )
                content.setdefault("encoding", {})[field] = {"contentType": types}
        _describe_errors(
            operation, limits, OPENAI_ERROR_SCHEMA if speaks_openai(path) else ERROR_SCHEMA
        )
    _link_image_ids(document, operation_ids)
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    if keys_required:
        _require_keys(document)
    return document


def _require_keys(document: dict[str, Any]) -> None:
    """Declare the API key on every operation the access control guards."""
    document["components"]["securitySchemes"] = SECURITY_SCHEMES
    for path, _, operation in _operations(document):
        if not needs_key(path):
            continue
        operation["security"] = [{"bearerKey": []}, {"headerKey": []}]
        schema = OPENAI_ERROR_SCHEMA if speaks_openai(path) else ERROR_SCHEMA
        for status, text in ACCESS_ERRORS.items():
            described = operation["responses"].setdefault(
                status, {"description": text, "content": {"application/json": {"schema": schema}}}
            )
            if text not in described["description"]:
                described["description"] += " Or: " + text


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            yield path, method, operation


def _resolved(schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    """``schema``, or the component it refers to (changed in place either way)."""
    reference = schema.get("$ref", "")
    if reference.startswith("#/components/schemas/"):
        return schemas[reference.rpartition("/")[2]]
    return schema


def _branches(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return schema.get("anyOf", [schema])


def _mark_files(schema: dict[str, Any]) -> None:
    """Spell a file part both ways OpenAPI 3.1 allows (``contentMediaType`` and the 3.0
    ``format: binary`` many clients and tools still read)."""
    for candidate in (schema, schema.get("items", {})):
        if FILE_PART.items() <= candidate.items():
            candidate["format"] = "binary"


def _limit_field(path: str, name: str, schema: dict[str, Any], limits: ServiceLimits) -> None:
    field = OPERATION_FIELD_LIMITS.get((path, name)) or FIELD_LIMITS.get(name)
    if field is None:
        return
    for branch in _branches(schema):
        kind = branch.get("type")
        if kind == "string" and field.string is not None:
            branch.update(field.string(limits))
        elif kind == "array":
            if field.array is not None:
                branch.update(field.array(limits))
            items = branch.get("items", {})
            if items.get("type") == "string" and field.string is not None:
                items.update(field.string(limits))
        elif kind in ("integer", "number") and field.number is not None:
            branch.update(field.number(limits))


def _limit_models(schema: dict[str, Any], served: tuple[str, ...]) -> None:
    """A ``model`` field takes the served models that do what its route asks."""
    for branch in _branches(schema):
        if branch.get("type") == "string" or "enum" in branch:
            branch.pop("const", None)
            branch["type"] = "string"
            branch["enum"] = list(served)
    if schema.get("default") not in (None, *served):
        schema.pop("default")


def _describe_errors(
    operation: dict[str, Any], limits: ServiceLimits, error_schema: dict[str, Any]
) -> None:
    """Every error this operation can answer, each with the one error body (OpenAI's under
    /v1): its own, the request guards' (408, 413) and validation's (422) when it takes input,
    and the error mapper's (500, overload and deadlines 503, or 429 where a queue is set
    to)."""
    responses = operation.setdefault("responses", {})
    statuses = {500, 503, *limits.overload_statuses}
    takes_body = "requestBody" in operation
    if takes_body:  # a malformed body, the guards' deadline and size limit, validation
        statuses |= {400, 408, 413, 422}
    if operation.get("parameters"):
        statuses.add(422)
    for status in sorted(statuses | {int(code) for code in responses if code[0] in "45"}):
        answer = responses.setdefault(str(status), {})
        answer.setdefault("description", ERROR_STATUS_TEXT[status])
        content = answer.setdefault("content", {})
        own = content.get("application/json", {}).get("schema")
        if own is None or status == 422:  # FastAPI's own 422 body is not the one we send
            content["application/json"] = {"schema": copy.deepcopy(error_schema)}
        elif own != error_schema:  # the route's own answer, or the guards' and mapper's
            content["application/json"] = {"schema": {"anyOf": [own, copy.deepcopy(error_schema)]}}
        if status in limits.overload_statuses:
            answer.setdefault("headers", {})["Retry-After"] = {
                "description": "Seconds to wait before retrying.",
                "schema": {"type": "integer"},
            }


def _link_image_ids(document: dict[str, Any], operation_ids: dict[tuple[str, str], str]) -> None:
    targets = {
        "AskAboutTheImage": (
            operation_ids.get(("/question", "post")),
            {"requestBody": {"image_id": "$response.body#/image_id", "question": "what is it"}},
        ),
        "GetTheStoredImage": (
            operation_ids.get(("/images/{image_id}", "get")),
            {"parameters": {"path.image_id": "$response.body#/image_id"}},
        ),
    }
    for path, method in IMAGE_ID_SOURCES:
        operation = document.get("paths", {}).get(path, {}).get(method)
        if operation is None:
            continue
        links = operation["responses"]["200"].setdefault("links", {})
        for name, (target, fields) in targets.items():
            if target is not None:
                links[name] = {
                    "operationId": target,
                    **fields,
                    "description": "The image_id just answered, used at once.",
                }
