"""What ``vlgraph-index`` calls, behind the admin key: ``POST /api/admin/index/known`` (which
files are indexed already), ``POST /api/admin/index/files`` (store and index a batch of
files) and ``POST /api/admin/index/rebuild`` (re-encode what another encoder indexed)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Security
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field

from deployments.ingress.context import IngressContext
from deployments.ingress.errors import error_responses
from deployments.ingress.routes.admin import API_KEY_HEADER, authorize_admin
from deployments.ingress.search import ImageSearch
from deployments.ingress.uploads import read_form_or_json, read_upload
from vlgraph.errors import BadRequestError, ServiceError, UnsupportedMediaTypeError
from vlgraph.images import inspect_image
from vlgraph.search_config import MAX_REBUILD_BATCH

#: The most digests one ``known`` call checks, and files one ``files`` call indexes.
MAX_DIGESTS = 1000
MAX_FILES = 64


class KnownBody(BaseModel):
    """sha256 digests (hex) of files about to be sent."""

    model_config = ConfigDict(extra="forbid")

    digests: list[str] = Field(max_length=MAX_DIGESTS)


class KnownResponse(BaseModel):
    """Those of the digests an indexed file already has."""

    known: list[str]


class IndexedFile(BaseModel):
    """What became of one file: indexed (with its new id), already indexed, or refused."""

    name: str
    status: str = Field(examples=["indexed", "already_indexed", "refused"])
    image_id: str | None = None
    error: str | None = Field(None, description="Why it was refused.")


class IndexFilesResponse(BaseModel):
    """One outcome per file, in the order sent."""

    files: list[IndexedFile]


class RebuildBody(BaseModel):
    """How many stored images to encode again in this call."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(64, ge=1, le=MAX_REBUILD_BATCH)


class RebuildResponse(BaseModel):
    """Progress of a rebuild: done in this call, and left to do."""

    rebuilt: int
    remaining: int


def json_body(model: type[BaseModel]) -> dict:
    """``openapi_extra`` declaring a JSON body the route reads itself (after the admin key
    is checked, so that a caller without it gets 401/403, not a validation error)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def router(context: IngressContext) -> APIRouter:
    """The indexing routes of one ingress replica."""
    routes = APIRouter()
    config = context.config

    def authorized_search(api_key: str | None) -> ImageSearch:
        authorize_admin(context.settings.admin, api_key)
        if context.search is None:
            raise BadRequestError("search is off in this profile", code="search_not_served")
        return context.search

    @routes.post(
        "/api/admin/index/known",
        response_model=KnownResponse,
        summary="Which of these files (by sha256) are indexed already",
        responses=error_responses(400, 401, 403, 415, 422, 503),
        openapi_extra=json_body(KnownBody),
    )
    async def known(
        request: Request, api_key: str | None = Security(API_KEY_HEADER)
    ) -> KnownResponse:
        """The digests an indexed image already has: a resumed bulk index skips them."""
        authorized_search(api_key)  # before the body is read: no work for a caller without it
        body = await read_form_or_json(request, KnownBody)
        for digest in body.digests:
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ServiceError(
                    f"{digest[:80]!r} is not a sha256 in lowercase hex",
                    code="invalid_digest",
                    status=422,
                )
        found = await context.store.indexed_digests(body.digests)
        return KnownResponse(known=sorted(found))

    @routes.post(
        "/api/admin/index/files",
        response_model=IndexFilesResponse,
        summary="Store and index a batch of image files (multipart, one 'files' part each)",
        responses=error_responses(400, 401, 403, 413, 415, 422, 503),
    )
    async def index_files(
        request: Request, api_key: str | None = Security(API_KEY_HEADER)
    ) -> IndexFilesResponse:
        """Each file is checked as an upload is, then stored as an ``indexed`` image with
        its vector; a file already indexed (same bytes) is skipped; a bad file is refused
        alone."""
        search = authorized_search(api_key)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "multipart/form-data":
            raise UnsupportedMediaTypeError(
                f"send the files as multipart/form-data 'files' parts; got {content_type!r}"
            )
        form = await request.form(max_files=MAX_FILES + 1)
        uploads = [part for part in form.getlist("files") if not isinstance(part, str)]
        if not uploads:
            raise RequestValidationError(
                [{"type": "missing", "loc": ("body", "files"), "msg": "Field required"}]
            )
        if len(uploads) > MAX_FILES:
            raise ServiceError(
                f"{len(uploads)} files in one call; the limit is {MAX_FILES}",
                code="too_many_files",
                status=413,
            )
        outcomes: list[IndexedFile | None] = []
        accepted, positions = [], []
        for upload in uploads:
            name = (upload.filename or "")[:1024]
            try:
                data = await read_upload(upload, config.max_image_bytes, name)
                info = inspect_image(data, config.allowed_formats, config.max_image_pixels)
            except ServiceError as error:
                outcomes.append(IndexedFile(name=name, status="refused", error=error.message))
                continue
            positions.append(len(outcomes))
            outcomes.append(None)
            accepted.append((name, data, info.media_type))
        for position, outcome in zip(positions, await search.index_files(accepted), strict=True):
            outcomes[position] = IndexedFile(
                name=outcome.name,
                status=outcome.status,
                image_id=outcome.image_id,
                error=outcome.error,
            )
        return IndexFilesResponse(files=[outcome for outcome in outcomes if outcome is not None])

    @routes.post(
        "/api/admin/index/rebuild",
        response_model=RebuildResponse,
        summary="Encode again the stored images another encoder indexed (or none did)",
        responses=error_responses(400, 401, 403, 415, 422, 503),
        openapi_extra=json_body(RebuildBody),
    )
    async def rebuild(
        request: Request, api_key: str | None = Security(API_KEY_HEADER)
    ) -> RebuildResponse:
        """Up to ``limit`` images per call; call again until ``remaining`` is 0."""
        search = authorized_search(api_key)
        body = await read_form_or_json(request, RebuildBody)
        rebuilt, remaining = await search.rebuild(body.limit)
        return RebuildResponse(rebuilt=rebuilt, remaining=remaining)

    return routes
