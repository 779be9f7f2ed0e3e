"""Search over the stored images and the stored images themselves: ``POST /api/search`` (by
text in any language the text encoder reads, by a stored or uploaded image, or both),
``GET /images/{image_id}`` and ``GET /images/{image_id}/thumbnail``.

Every key sees the same store: there are no tenants. Image ids are uuid4 (unguessable), and a
result or an image route only ever reads the store's own records and files.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import math
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

from deployments.ingress.context import IngressContext
from deployments.ingress.errors import error_responses
from deployments.ingress.search import ImageSearch, SearchQuery
from deployments.ingress.uploads import (
    FORM_OR_JSON,
    form_fields,
    read_form_or_json,
    read_upload,
    validated,
)
from vlgraph.errors import BadRequestError, PayloadTooLargeError, ServiceError
from vlgraph.image_store import IMAGE_ID_PATTERN, ImageKind, to_micros
from vlgraph.images import inspect_image, thumbnail
from vlgraph.search_config import SearchConfig
from vlgraph.text_inputs import checked_text
from vlgraph.vector_index import SearchFilter

#: Longest side of a thumbnail: the default and the largest a client may ask.
THUMBNAIL_SIDE = 256
MAX_THUMBNAIL_SIDE = 1024
#: Stored bytes never change under their id.
_IMMUTABLE = "private, max-age=31536000, immutable"


def _parsed_instant(value: object) -> object:
    """An RFC 3339 string as a datetime; JSON bodies are validated strictly, where pydantic
    takes no strings for datetimes."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return value  # refused below, naming the field
    return value


#: An instant with its UTC offset, from an RFC 3339 string.
Instant = Annotated[AwareDatetime, BeforeValidator(_parsed_instant)]


class SearchBody(BaseModel):
    """What to look for (``text``, an image, or both), the filter and the page. The image is
    ``image_id`` (a stored image), ``image_b64``, or the ``image`` file of a multipart body."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(
        None, description="What the images show, in any language the text encoder reads."
    )
    image_id: str | None = Field(
        None, pattern=IMAGE_ID_PATTERN, description="Find images like this stored one."
    )
    image_b64: str | None = Field(
        None, description="Find images like this one: base64 of a PNG, JPEG or WebP."
    )
    text_weight: float | None = Field(
        None,
        ge=0,
        le=1,
        description="With a text and an image: the text's share of the query (the image "
        "gets the rest). Default: the profile's search.default_text_weight.",
    )
    kinds: list[ImageKind] | None = Field(
        None,
        min_length=1,
        max_length=3,
        description="Only these kinds: upload, generated, indexed (a file vlgraph-index "
        "added). In a form: comma-separated.",
    )
    created_after: Instant | None = Field(None, description="Stored at or after this.")
    created_before: Instant | None = Field(None, description="Stored before this.")
    model: str | None = Field(None, max_length=64, description="Only images this generator made.")
    min_score: float = Field(
        -1.0, ge=-1, le=1, description="Only results whose cosine similarity reaches this."
    )
    limit: int | None = Field(
        None,
        ge=1,
        description="Results in this page: default search.default_limit, at most search.max_limit.",
    )
    cursor: str | None = Field(
        None,
        max_length=2048,
        description="next_cursor of the previous page, with the same query and filters.",
    )


class SearchLinks(BaseModel):
    """Where to get the image, its thumbnail, and how to ask about it."""

    image: str = Field(examples=["/images/0f0e..."])
    thumbnail: str
    question: str = Field(description="POST this route with the image_id and a question.")


class SearchResult(BaseModel):
    """One stored image found, with its cosine similarity to the query."""

    image_id: str
    score: float = Field(description="Cosine similarity to the query, -1 to 1.")
    caption: str
    kind: ImageKind
    created_at: datetime
    model: str | None = Field(None, description="The generator of a generated image.")
    links: SearchLinks


class SearchResponse(BaseModel):
    """One page of results, best first, and the cursor of the next (null at the end)."""

    results: list[SearchResult]
    next_cursor: str | None


def _search_body_schema() -> dict:
    schema = SearchBody.model_json_schema()
    form = form_fields(schema)
    form["properties"]["image"] = {
        "type": "string",
        "contentMediaType": "application/octet-stream",
        "description": "The query image as a file: PNG, JPEG or WebP, judged by content.",
    }
    form["properties"]["kinds"] = {
        "type": "string",
        "pattern": r"^(upload|generated|indexed)(,(upload|generated|indexed)){0,2}$",
        "description": "Comma-separated kinds.",
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                kind: {"schema": schema if kind == "application/json" else form}
                for kind in FORM_OR_JSON
            },
        }
    }


def router(context: IngressContext) -> APIRouter:
    """The search and stored-image routes of one ingress replica."""
    routes = APIRouter()
    config = context.config
    store = context.store

    def search_or_refuse() -> ImageSearch:
        if context.search is None:
            raise BadRequestError(
                "search is off in this profile: it needs the image encoder named by "
                "search.image_encoder (clip_image by default), search.enabled true and, with "
                "the Redis store, search.engine pgvector",
                code="search_not_served",
            )
        return context.search

    async def read_body(request: Request) -> tuple[SearchBody, bytes | None]:
        """The fields (JSON, or a form) and the uploaded image file of a multipart body."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in ("multipart/form-data", "application/x-www-form-urlencoded"):
            return await read_form_or_json(request, SearchBody), None
        form = await request.form()
        fields: dict[str, object] = {k: v for k, v in form.items() if isinstance(v, str)}
        if isinstance(fields.get("kinds"), str):
            fields["kinds"] = [part.strip() for part in str(fields["kinds"]).split(",")]
        upload = form.get("image")
        data = None
        if upload is not None and not isinstance(upload, str):
            data = await read_upload(upload, config.max_image_bytes)
        return validated(SearchBody, fields), data

    def decoded(text: str) -> bytes:
        limit = config.max_image_bytes
        if math.ceil(len(text) * 3 / 4) > limit + 3:
            raise PayloadTooLargeError(
                f"the image is over the {limit}-byte limit", code="image_too_large"
            )
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequestError(
                "image_b64 is not valid base64 (standard alphabet, no line breaks)",
                code="invalid_base64",
            ) from None

    async def resolved(body: SearchBody, upload: bytes | None, search: SearchConfig):
        text = checked_text(
            body.text,
            what="the text",
            limit=search.max_query_chars,
            long_code="query_too_long",
            empty_code=None,
        )
        images = (("image_id", body.image_id), ("image_b64", body.image_b64), ("image", upload))
        given = [name for name, value in images if value is not None]
        if len(given) > 1:
            raise _unprocessable(
                f"send one query image, not {' and '.join(given)}", "too_many_images"
            )
        if text is None and not given:
            raise _unprocessable(
                "send text, image_id, image_b64 or an image file (or text and one image)",
                "empty_query",
            )
        if body.text_weight is not None and (text is None or not given):
            raise _unprocessable(
                "text_weight mixes a text and an image: send both, or leave it out",
                "text_weight_needs_both",
            )
        image, image_key = None, None
        if body.image_id is not None:
            stored = await store.get_image(body.image_id)
            image, image_key = await store.read_image(stored.image_id), stored.image_id
        elif body.image_b64 is not None or upload is not None:
            image = upload if upload is not None else decoded(body.image_b64 or "")
            if len(image) > config.max_image_bytes:
                raise PayloadTooLargeError(
                    f"the image is over the {config.max_image_bytes}-byte limit",
                    code="image_too_large",
                )
            if not image:
                raise BadRequestError("the image file is empty", code="empty_image")
            inspect_image(image, config.allowed_formats, config.max_image_pixels)
            image_key = hashlib.sha256(image).hexdigest()[:32]
        if (
            body.created_after is not None
            and body.created_before is not None
            and body.created_after >= body.created_before
        ):
            raise _unprocessable("created_after must be before created_before", "empty_range")
        limit = body.limit or search.default_limit
        if limit > search.max_limit:
            raise _unprocessable(
                f"limit {limit} is over the page size limit of {search.max_limit}",
                "page_too_large",
            )
        return SearchQuery(
            text=text,
            image=image,
            image_key=image_key,
            text_weight=(
                body.text_weight if body.text_weight is not None else search.default_text_weight
            ),
            search_filter=SearchFilter(
                kinds=frozenset(body.kinds or ()),
                created_from_us=_micros(body.created_after),
                created_until_us=_micros(body.created_before),
                model=body.model,
            ),
            min_score=body.min_score,
            limit=limit,
            cursor=body.cursor,
        )

    @routes.post(
        "/api/search",
        response_model=SearchResponse,
        summary="Find stored images by text (any language), by image, or both",
        responses=error_responses(400, 404, 409, 413, 415, 422, 503),
        openapi_extra=_search_body_schema(),
    )
    async def search(request: Request) -> SearchResponse:
        """Stored images closest to the query, best first, one page at a time."""
        searcher = search_or_refuse()
        body, upload = await read_body(request)
        query = await resolved(body, upload, searcher.config)
        page = await searcher.search(query)
        return SearchResponse(
            results=[
                SearchResult(
                    image_id=hit.record.image_id,
                    score=hit.score,
                    caption=hit.record.caption,
                    kind=hit.record.kind,
                    created_at=hit.record.created_at,
                    model=hit.record.model,
                    links=SearchLinks(
                        image=f"/images/{hit.record.image_id}",
                        thumbnail=f"/images/{hit.record.image_id}/thumbnail",
                        question="/question",
                    ),
                )
                for hit in page.hits
            ],
            next_cursor=page.next_cursor,
        )

    @routes.get(
        "/images/{image_id}",
        summary="A stored image (uploads, generated and indexed images)",
        responses={200: {"content": {"image/*": {}}}, **error_responses(404, 503)},
    )
    async def stored_image(image_id: str, request: Request) -> Response:
        """The stored bytes with their media type."""
        stored = await store.get_image(image_id)
        if _unchanged(request, stored.image_id):
            return _not_modified(stored.image_id)
        data = await store.read_image(stored.image_id)
        return Response(data, media_type=stored.media_type, headers=_cached(stored.image_id))

    @routes.get(
        "/images/{image_id}/thumbnail",
        summary="A stored image made small: a JPEG whose longest side is at most size",
        responses={200: {"content": {"image/jpeg": {}}}, **error_responses(404, 422, 503)},
    )
    async def stored_thumbnail(
        image_id: str,
        request: Request,
        size: int = Query(
            THUMBNAIL_SIDE,
            ge=16,
            le=MAX_THUMBNAIL_SIDE,
            description="Longest side in pixels (never enlarged).",
        ),
    ) -> Response:
        """The stored image scaled down, as JPEG."""
        stored = await store.get_image(image_id)
        tag = f"{stored.image_id}-{size}"
        if _unchanged(request, tag):
            return _not_modified(tag)
        data = await store.read_image(stored.image_id)
        small = await asyncio.to_thread(thumbnail, data, size, config.max_image_pixels)
        return Response(small, media_type="image/jpeg", headers=_cached(tag))

    return routes


def _micros(moment: datetime | None) -> int | None:
    return None if moment is None else to_micros(moment)


def _unprocessable(message: str, code: str) -> ServiceError:
    return ServiceError(message, code=code, status=422)


def _cached(tag: str) -> dict[str, str]:
    return {"Cache-Control": _IMMUTABLE, "ETag": f'"{tag}"'}


def _unchanged(request: Request, tag: str) -> bool:
    wanted = request.headers.get("if-none-match", "")
    return any(part.strip() in (f'"{tag}"', f'W/"{tag}"', "*") for part in wanted.split(","))


def _not_modified(tag: str) -> Response:
    return Response(status_code=304, headers=_cached(tag))
