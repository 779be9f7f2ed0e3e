"""Reading request bodies: JSON or form fields into a pydantic model, uploaded files with
their byte limit, and a multipart form's image (checked as every upload is)."""

from __future__ import annotations

import json
from typing import TypeVar

from fastapi import Request, UploadFile
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from vlgraph.errors import PayloadTooLargeError, UnsupportedMediaTypeError
from vlgraph.images import inspect_image

Body = TypeVar("Body", bound=BaseModel)

#: OpenAPI content types of routes that take their fields as JSON or as a form.
FORM_OR_JSON = ("application/json", "application/x-www-form-urlencoded", "multipart/form-data")


def form_or_json_body(schema: dict) -> dict:
    """``openapi_extra`` declaring a request body sent as JSON or as form fields."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                kind: {"schema": schema if kind == "application/json" else form_fields(schema)}
                for kind in FORM_OR_JSON
            },
        }
    }


def form_fields(schema: dict) -> dict:
    """``schema`` (an object's JSON schema) as form fields: a form cannot carry null, so an
    optional field is left out rather than sent empty."""
    properties = {}
    for name, field in schema.get("properties", {}).items():
        branches = [b for b in field.get("anyOf", []) if b.get("type") != "null"]
        if len(branches) == 1:
            field = {k: v for k, v in field.items() if k not in ("anyOf", "default")}
            field.update(branches[0])
        properties[name] = field
    return {**schema, "properties": properties}


def image_form(fields: type[BaseModel]) -> dict:
    """A multipart body's schema: a required ``image`` file part beside ``fields``."""
    schema = form_fields(fields.model_json_schema())
    schema["properties"]["image"] = {
        "type": "string",
        "contentMediaType": "application/octet-stream",
        "description": "JPEG, PNG or WebP, judged by content.",
    }
    schema["required"] = [*schema.get("required", []), "image"]
    return schema


async def read_form_or_json(request: Request, model: type[Body]) -> Body:
    """The body as ``model``, from JSON or from form fields (the question and generation
    routes take either); a 422 naming the field when it does not validate, 415 for other
    content types."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fields: object
    if content_type == "application/json":
        try:
            fields = json.loads(await request.body())
        except ValueError as error:
            raise RequestValidationError(
                [{"type": "json_invalid", "loc": ("body",), "msg": f"invalid JSON: {error}"}]
            ) from None
        return validated(model, fields, strict=True)  # JSON carries types: no coercion
    if content_type in FORM_OR_JSON:
        form = await request.form()
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
        return validated(model, fields)  # form fields are text: "64" is the number 64
    raise UnsupportedMediaTypeError(
        "send the fields as JSON (application/json) or as a form "
        f"(application/x-www-form-urlencoded, multipart/form-data); got {content_type!r}"
    )


def validated(model: type[Body], fields: object, strict: bool = False) -> Body:
    """``fields`` as ``model``; a 422 naming each bad field (``body.<name>``) otherwise."""
    try:
        return model.model_validate(fields, strict=strict)
    except ValidationError as error:
        raise RequestValidationError(
            [{**problem, "loc": ("body", *problem["loc"])} for problem in error.errors()]
        ) from None


async def read_upload(upload: UploadFile, max_bytes: int, name: str | None = None) -> bytes:
    """An uploaded file's bytes, reading at most one past ``max_bytes``: 413 when over."""
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLargeError(
            f"{name or upload.filename or 'the image'} is over the {max_bytes}-byte limit",
            code="image_too_large",
        )
    return data


async def read_image_form(
    request: Request, max_bytes: int, formats: tuple[str, ...], max_pixels: int
) -> tuple[bytes, dict[str, str]]:
    """A multipart form's ``image`` file, checked as uploads are (size, pixels, format by
    content), and its other fields."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        raise UnsupportedMediaTypeError(
            f"send a multipart/form-data body with an 'image' file; got {content_type!r}"
        )
    form = await request.form()
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body", "image"), "msg": "Field required"}]
        )
    data = await read_upload(upload, max_bytes)
    inspect_image(data, formats, max_pixels)
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    return data, fields
