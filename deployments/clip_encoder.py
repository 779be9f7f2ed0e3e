"""Document 003's encoders as deployments: CLIP's image side (``clip-ViT-B-32``) and the
multilingual text model aligned with it (``clip-ViT-B-32-multilingual-v1``), both loaded by
sentence-transformers from their Hub layout, both answering 512 floats.

One class serves either modality; ``@serve.batch`` gathers concurrent requests into one
``encode`` call on the model thread. Vectors leave raw (not normalized): the ingress
normalizes on request, so one cached vector serves both forms.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from ray import serve

from vlgraph.config import BatchingConfig, EncoderConfig
from vlgraph.errors import InferenceError, ServiceError
from vlgraph.images import decode_image
from vlgraph.messages import EmbeddingResult, EncodeRequest
from vlgraph.model_source import resolve_model_path
from vlgraph.model_thread import ModelThread
from vlgraph.torch_runtime import apply_thread_limit, select_device, select_dtype

logger = logging.getLogger("ray.serve")

Modality = Literal["image", "text"]


class SentenceEncoder:
    """Encodes images or texts with a ``SentenceTransformer``."""

    def __init__(
        self, config: EncoderConfig, checkpoint_cache_dir: str, name: str, modality: Modality
    ):
        self._name = name
        self._modality = modality
        self._model_thread = ModelThread(name)
        self._model_thread.call(self._load, config, checkpoint_cache_dir)
        self.reconfigure(config.user_config())

    def _load(self, config: EncoderConfig, checkpoint_cache_dir: str) -> None:
        from sentence_transformers import SentenceTransformer

        apply_thread_limit(config)
        path = resolve_model_path(
            self._name, config.source, Path(checkpoint_cache_dir), config.revision
        )
        device = select_device(config)
        model = SentenceTransformer(path, device=device)
        self._model = model.to(select_dtype(config, device)).eval()
        self.dimension = int(self._model.get_embedding_dimension())
        self._warm_up()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply batch size and wait time live (``user_config`` in the Serve config)."""
        BatchingConfig.model_validate(user_config.get("batching", {})).apply(self._encode_batch)

    async def encode(self, request: EncodeRequest) -> EmbeddingResult:
        """Encode one input; concurrent calls are batched together."""
        return await self._encode_batch(request)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _encode_batch(self, requests: list[EncodeRequest]) -> list[EmbeddingResult]:
        return await self._model_thread.run(self._encode_all, requests)

    def encode_now(self, requests: list[EncodeRequest]) -> list[EmbeddingResult]:
        """Encode a list of inputs as one batch, waiting for the model thread."""
        return self._model_thread.call(self._encode_all, requests)

    def _encode_all(self, requests: list[EncodeRequest]) -> list[EmbeddingResult]:
        results: list[EmbeddingResult | None] = [None] * len(requests)
        inputs, positions = [], []
        for index, request in enumerate(requests):
            try:
                inputs.append(self._prepared(request.item))
                positions.append(index)
            except ServiceError as error:
                results[index] = EmbeddingResult(error=error.as_item_error())
        if inputs:
            try:
                vectors = self._model.encode(
                    inputs, batch_size=len(inputs), convert_to_numpy=True, show_progress_bar=False
                )
                for index, vector in zip(positions, vectors, strict=True):
                    results[index] = EmbeddingResult(embedding=tuple(vector.astype(float).tolist()))
            except Exception:
                logger.exception("%s failed on a batch of %d", self._name, len(inputs))
                failure = InferenceError(f"the {self._modality} encoder failed").as_item_error()
                for index in positions:
                    results[index] = EmbeddingResult(error=failure)
        return [result for result in results if result is not None]

    def _prepared(self, item: bytes | str) -> Any:
        if self._modality == "image":
            if not isinstance(item, bytes):
                raise ServiceError("the image encoder takes image bytes", status=400)
            return decode_image(item)
        if not isinstance(item, str):
            raise ServiceError("the text encoder takes text", status=400)
        return item

    def _warm_up(self) -> None:
        from PIL import Image

        sample = Image.new("RGB", (32, 32)) if self._modality == "image" else "warm up"
        self._model.encode([sample], show_progress_bar=False)


ClipImageDeployment = serve.deployment(SentenceEncoder, name="clip_image_encoder")
ClipTextDeployment = serve.deployment(SentenceEncoder, name="clip_text_encoder")
