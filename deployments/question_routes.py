"""Document 002's routes: upload an image (captioned and stored), ask questions about it,
read the history. A mixin of the ingress class, whose ``__init__`` sets the attributes used
here (``_store``, ``_vqa``, ``_config``, ``_cache``) and whose ``_answer`` captions.

Nothing is stored unless all of it is: an upload is captioned first and stored after, in one
atomic store write; a question is answered first and recorded after.
"""

import base64
from datetime import datetime

from fastapi import File, Query, Request, UploadFile
from pydantic import BaseModel, ConfigDict, Field
from ray.serve.handle import DeploymentHandle

from deployments.api import (
    api,
    form_or_json_body,
    read_form_or_json,
    read_upload,
)
from deployments.http_errors import error_responses
from deployments.openapi import MAX_HISTORY_OFFSET
from vlgraph.errors import (
    BadRequestError,
    ItemError,
    ServiceError,
)
from vlgraph.image_store import HistoryPage, ImageStore, QuestionRecord
from vlgraph.images import ImageInfo, inspect_image
from vlgraph.messages import QuestionRequest
from vlgraph.text_inputs import checked_text

_DEFAULT_HISTORY_PAGE = 20

_IMAGE_FILE = File(description="PNG or JPEG (judged by content), 16 MB at most.")


class UploadResponse(BaseModel):
    """The stored upload: its id for later questions, its caption and the image itself."""

    image_id: str = Field(description="Use it in POST /question.")
    caption: str
    image: str = Field(description="The uploaded image, base64 of its bytes as stored.")
    media_type: str = Field(examples=["image/png"])
    filename: str | None
    created_at: datetime
    cache: bool = Field(description="The caption came from the result cache.")


class QuestionBody(BaseModel):
    """POST /question's fields, sent as a form or as JSON."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(description="A question about the image.")
    image_id: str = Field(description="The id POST /upload answered.")


class QuestionResponse(BaseModel):
    """The answer, the image's caption and every question asked about it so far."""

    image_id: str
    question: str
    answer: str
    caption: str
    history: list[QuestionRecord] = Field(description="Oldest first, this question included.")
    cache: bool = Field(description="The answer came from the result cache.")


class QuestionRoutes:
    """POST /upload, POST /question, GET /history (document 002)."""

    _store: ImageStore
    _vqa: DeploymentHandle | None

    @api.post(
        "/upload",
        response_model=UploadResponse,
        summary="Upload an image: captioned, stored, given an image_id (document 002)",
        responses=error_responses(413, 415, 422, 503),
    )
    async def upload(self, image: UploadFile = _IMAGE_FILE) -> UploadResponse:
        """Caption the image with BLIP and store both; answers the new ``image_id``."""
        data, image_info = await self._read_upload(image)
        outcome = await self._answer("blip", data, None, None)
        if isinstance(outcome, ItemError):
            raise ServiceError.from_item_error(outcome)
        answer, cached = outcome
        stored = await self._store.add_image(
            data, image_info.media_type, answer["caption"], filename=image.filename
        )
        return UploadResponse(
            image_id=stored.image_id,
            caption=stored.caption,
            image=base64.b64encode(data).decode("ascii"),
            media_type=stored.media_type,
            filename=stored.filename,
            created_at=stored.created_at,
            cache=cached,
        )

    @api.post(
        "/question",
        response_model=QuestionResponse,
        summary="Ask a question about an uploaded image (document 002)",
        responses=error_responses(404, 415, 422, 503),
        openapi_extra=form_or_json_body(QuestionBody.model_json_schema()),
    )
    async def question(self, request: Request) -> QuestionResponse:
        """Answer ``question`` about the image ``image_id`` (form fields or JSON) and record
        it in the image's history."""
        body = await read_form_or_json(request, QuestionBody)
        question = self._checked_question(body.question)
        stored = await self._store.get_image(body.image_id)
        data = await self._store.read_image(stored.image_id)
        answer, cached = await self._answer_question(data, question)
        await self._store.add_question(stored.image_id, question, answer)
        return QuestionResponse(
            image_id=stored.image_id,
            question=question,
            answer=answer,
            caption=stored.caption,
            history=await self._store.questions(stored.image_id),
            cache=cached,
        )

    @api.get(
        "/history",
        response_model=HistoryPage,
        summary="Every stored image with its caption and questions, newest first (document 002)",
        responses=error_responses(422, 503),
    )
    async def history(
        self,
        offset: int = Query(
            0, ge=0, le=MAX_HISTORY_OFFSET, description="Images to skip, newest first."
        ),
        limit: int | None = Query(
            None, ge=1, description="Images in this page: default 20, at most max_history_page."
        ),
    ) -> HistoryPage:
        """One page of the stored images, each with its questions and answers."""
        most = self._config.max_history_page
        limit = limit or min(_DEFAULT_HISTORY_PAGE, most)
        if limit > most:
            raise ServiceError(
                f"limit {limit} is over the page size limit of {most}",
                code="page_too_large",
                status=422,
            )
        return await self._store.history(offset=offset, limit=limit)

    async def _read_upload(self, upload: UploadFile) -> tuple[bytes, ImageInfo]:
        """The upload's bytes and what their header says, checked: size, pixels, and a
        format of ``upload_formats`` (PNG, JPEG) by content."""
        data = await read_upload(upload, self._config.max_image_bytes)
        if not data:
            raise BadRequestError("the image file is empty", code="empty_image")
        info = inspect_image(data, self._config.upload_formats, self._config.max_image_pixels)
        return data, info

    def _checked_question(self, question: str) -> str:
        return checked_text(
            question,
            what="the question",
            limit=self._config.max_question_chars,
            long_code="question_too_long",
            empty_code="empty_question",
        )

    async def _answer_question(self, data: bytes, question: str) -> tuple[str, bool]:
        if self._vqa is None:
            raise BadRequestError(
                "question answering is not served by this profile (vqa: null)",
                code="model_not_served",
            )
        key = None
        if self._cache is not None:
            params = self._result_params("vqa", q=question)
            key = self._cache.image_key(data, "vqa", params)
            cached = await self._cache.get(key)
            if cached is not None:
                return cached["answer"], True
        result = await self._call_models(
            "vqa", self._vqa.answer.remote(QuestionRequest(image=data, question=question))
        )
        if result.error is not None:
            raise ServiceError.from_item_error(result.error)
        if key is not None:
            await self._cache.put(key, {"answer": result.answer})
        return result.answer, False
