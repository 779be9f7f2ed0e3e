"""The OpenAI-compatible API under ``/v1``, beside the documents' routes: models, chat
completions about images, embeddings, and image generation and variations.

One module per operation group, each with its own ``router(context)``; request bodies follow
the ``openai`` package's types (``openai.types``), responses are built from them, and errors
take OpenAI's shape in the one error mapper (:mod:`deployments.ingress.errors`).
"""

from fastapi import APIRouter

from deployments.ingress.context import IngressContext
from deployments.ingress.routes.openai import chat, embeddings, images, models


def router(context: IngressContext) -> APIRouter:
    """Every ``/v1`` route of one ingress replica."""
    routes = APIRouter(tags=["OpenAI-compatible"])
    for area in (models, chat, embeddings, images):
        routes.include_router(area.router(context))
    return routes
