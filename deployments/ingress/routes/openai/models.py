"""``GET /v1/models`` and ``GET /v1/models/{id}``: every served model, as OpenAI's ``model``
object with vlgraph's fields: what it can do, and how it chats."""

from __future__ import annotations

import time

from fastapi import APIRouter
from pydantic import BaseModel, Field

from deployments.ingress.context import IngressContext
from deployments.ingress.errors import error_responses
from vlgraph.errors import NotFoundError
from vlgraph.served_models import Capability, ChatMode, ServedModel, chat_mode

#: Capabilities of the /v1 operations, beside those of the documents' routes.
IMAGE_VARIATION = "image_variation"


class ChatSupport(BaseModel):
    """What ``POST /v1/chat/completions`` takes for this model."""

    mode: ChatMode = Field(
        description="conversation: messages, several images, text alone; one_image: "
        "messages about exactly one image; question: one user message with one image and "
        "a question; caption: one user message with one image and optional text the "
        "caption starts with."
    )
    max_images: int = Field(description="Most images in one conversation.")
    multi_turn: bool = Field(description="Whether earlier turns and system messages are read.")
    sampling: bool = Field(description="Whether temperature, top_p and seed apply.")
    usage: bool = Field(description="Whether answers count their tokens.")


class OpenAIModel(BaseModel):
    """OpenAI's ``model`` object (``openai.types.Model``) with vlgraph's fields."""

    id: str = Field(examples=["gemma"])
    object: str = "model"
    created: int
    owned_by: str = "vlgraph"
    label: str = Field(examples=["Gemma 3"])
    capabilities: list[str] = Field(
        examples=[["caption", "chat", "collective", "flag"]],
        description="What the model does: chat, embed_image, embed_text, generate, "
        "image_variation, and the documents' routes' caption, flag, collective, answer.",
    )
    chat: ChatSupport | None = Field(None, description="Present when the model chats.")
    random_weights: bool
    offline_world: bool


class ModelList(BaseModel):
    """OpenAI's list of models."""

    object: str = "list"
    data: list[OpenAIModel]


def describe(
    model: ServedModel, created: int, max_images: int, variations: str | None
) -> OpenAIModel:
    """``model`` as ``GET /v1/models`` lists it; ``variations`` is the generator that draws
    image variations (the pipeline's), if any."""
    capabilities = {str(capability) for capability in model.capabilities}
    mode = chat_mode(model.capabilities)
    if mode is not None:
        capabilities.add(Capability.CHAT.value)
    if model.name == variations:
        capabilities.add(IMAGE_VARIATION)
    chat = None
    if mode is not None:
        several = mode is ChatMode.CONVERSATION
        chat = ChatSupport(
            mode=mode,
            max_images=max_images if several else 1,
            multi_turn=mode in (ChatMode.CONVERSATION, ChatMode.ONE_IMAGE),
            sampling=mode in (ChatMode.CONVERSATION, ChatMode.ONE_IMAGE),
            usage=mode in (ChatMode.CONVERSATION, ChatMode.ONE_IMAGE),
        )
    return OpenAIModel(
        id=model.name,
        created=created,
        label=model.label,
        capabilities=sorted(capabilities),
        chat=chat,
        random_weights=model.random_weights,
        offline_world=model.offline_world,
    )


def router(context: IngressContext) -> APIRouter:
    """The model list of one ingress replica."""
    routes = APIRouter()
    created = int(time.time())
    listed = [
        describe(
            model, created, context.config.max_upload_images, context.gateway.pipeline_generator()
        )
        for model in context.settings.catalog.served
    ]
    by_id = {model.id: model for model in listed}

    @routes.get(
        "/v1/models",
        response_model=ModelList,
        response_model_exclude_none=True,
        summary="The served models (OpenAI's model list) and what each can do",
    )
    async def list_models() -> ModelList:
        """Every served model, in the registry's order."""
        return ModelList(data=listed)

    @routes.get(
        "/v1/models/{model_id}",
        response_model=OpenAIModel,
        response_model_exclude_none=True,
        summary="One served model",
        responses=error_responses(404, openai=True),
    )
    async def get_model(model_id: str) -> OpenAIModel:
        """The model called ``model_id``; 404 ``model_not_found`` when none is served."""
        found = by_id.get(model_id)
        if found is None:
            raise NotFoundError(
                f"no served model {model_id!r}; served: {', '.join(by_id)}",
                code="model_not_found",
                param="model",
            )
        return found

    return routes
