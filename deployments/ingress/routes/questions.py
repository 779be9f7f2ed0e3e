"""Visual question answering with stored uploads: upload an image (captioned and stored),
ask questions about it, read the history (``POST /upload``, ``POST /question``,
``GET /history``).

Nothing is stored unless all of it is: an upload is captioned first and stored after, in one
atomic store write; a question is answered first and recorded after.
"""

import asyncio
import base64
from datetime import datetime

from fastapi import APIRouter, File, Query, Request, UploadFile
from pydantic import BaseModel, ConfigDict, Field

from deployments.ingress.context import IngressContext
from deployments.ingress.errors import error_responses
from deployments.ingress.openapi import MAX_HISTORY_OFFSET
from deployments.ingress.routes.captions import PATH_CAPTIONER, Captioning
from deployments.ingress.search import search_vector
from deployments.ingress.uploads import form_or_json_body, read_form_or_json, read_upload
from vlgraph.errors import BadRequestError, ItemError, ServiceError
from vlgraph.image_store import HistoryPage, QuestionRecord
from vlgraph.images import ImageInfo, inspect_image
from vlgraph.messages import QuestionRequest
from vlgraph.served_models import Capability
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
    duplicate_of: str | None = Field(
        None,
        description="A stored image this one nearly repeats (search.duplicate_threshold); "
        "null when none is that close or the check is off. The upload is stored either way.",
    )


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


def router(context: IngressContext) -> APIRouter:
    """The question-answering routes of one ingress replica. Nothing is stored unless all
    of it is: an upload is captioned first and stored after, in one atomic store write; a
    question is answered first and recorded after."""
    routes = APIRouter()
    config = context.config
    store = context.store
    gateway = context.gateway
    captioning = Captioning(context)

    async def read_image(upload: UploadFile) -> tuple[bytes, ImageInfo]:
        """The upload's bytes and what their header says, checked: size, pixels, and a
        format of ``upload_formats`` (PNG, JPEG) by content."""
        data = await read_upload(upload, config.max_image_bytes)
        if not data:
            raise BadRequestError("the image file is empty", code="empty_image")
        info = inspect_image(data, config.upload_formats, config.max_image_pixels)
        return data, info

    async def answer_question(data: bytes, question: str) -> tuple[str, bool]:
        handle = gateway.handle("vqa", Capability.ANSWER)

        async def compute() -> dict | ItemError:
            result = await gateway.call(
                "vqa", handle.answer.remote(QuestionRequest(image=data, question=question))
            )
            return result.error or {"answer": result.answer}

        outcome = await gateway.cached("vqa", data, compute, q=question)
        if isinstance(outcome, ItemError):
            raise ServiceError.from_item_error(outcome)
        answer, cached = outcome
        return answer["answer"], cached

    @routes.post(
        "/upload",
        response_model=UploadResponse,
        summary="Upload an image: captioned, stored, given an image_id",
        responses=error_responses(413, 415, 422, 503),
    )
    async def upload(image: UploadFile = _IMAGE_FILE) -> UploadResponse:
        """Caption the image with BLIP and store both; answers the new ``image_id``."""
        data, image_info = await read_image(image)
        outcome, vector = await asyncio.gather(
            captioning.answer(PATH_CAPTIONER, data, None, None),
            search_vector(context.search, data),
        )
        if isinstance(outcome, ItemError):
            raise ServiceError.from_item_error(outcome)
        answer, cached = outcome
        duplicate = await context.search.duplicate_of(vector) if context.search and vector else None
        stored = await store.add_image(
            data,
            image_info.media_type,
            answer["caption"],
            filename=image.filename,
            vector=vector,
        )
        return UploadResponse(
            image_id=stored.image_id,
            caption=stored.caption,
            image=base64.b64encode(data).decode("ascii"),
            media_type=stored.media_type,
            filename=stored.filename,
            created_at=stored.created_at,
            cache=cached,
            duplicate_of=duplicate,
        )

    @routes.post(
        "/question",
        response_model=QuestionResponse,
        summary="Ask a question about an uploaded image",
        responses=error_responses(404, 415, 422, 503),
        openapi_extra=form_or_json_body(QuestionBody.model_json_schema()),
    )
    async def question(request: Request) -> QuestionResponse:
        """Answer ``question`` about the image ``image_id`` (form fields or JSON) and record
        it in the image's history."""
        body = await read_form_or_json(request, QuestionBody)
        asked = checked_text(
            body.question,
            what="the question",
            limit=config.max_question_chars,
            long_code="question_too_long",
            empty_code="empty_question",
        )
        stored = await store.get_image(body.image_id)
        data = await store.read_image(stored.image_id)
        answer, cached = await answer_question(data, asked)
        await store.add_question(stored.image_id, asked, answer)
        return QuestionResponse(
            image_id=stored.image_id,
            question=asked,
            answer=answer,
            caption=stored.caption,
            history=await store.questions(stored.image_id),
            cache=cached,
        )

    @routes.get(
        "/history",
        response_model=HistoryPage,
        summary="Every stored image with its caption and questions, newest first",
        responses=error_responses(422, 503),
    )
    async def history(
        offset: int = Query(
            0, ge=0, le=MAX_HISTORY_OFFSET, description="Images to skip, newest first."
        ),
        limit: int | None = Query(
            None, ge=1, description="Images in this page: default 20, at most max_history_page."
        ),
    ) -> HistoryPage:
        """One page of the stored images, each with its questions and answers."""
        most = config.max_history_page
        limit = limit or min(_DEFAULT_HISTORY_PAGE, most)
        if limit > most:
            raise ServiceError(
                f"limit {limit} is over the page size limit of {most}",
                code="page_too_large",
                status=422,
            )
        return await store.history(offset=offset, limit=limit)

    return routes
