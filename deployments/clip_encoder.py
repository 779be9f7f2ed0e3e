"""The encoders of the CLIP embeddings as deployments: CLIP's image side
(``clip-ViT-B-32``) and the multilingual text model aligned with it
(``clip-ViT-B-32-multilingual-v1``), both loaded by sentence-transformers from their Hub
layout, both answering 512 floats.

One class serves either modality; ``@serve.batch`` gathers concurrent requests into one
``encode`` call on the model thread (the replica skeleton of :mod:`deployments.replica`
owns the thread, loading and batching). Vectors leave raw (not normalized): the ingress
normalizes on request, so one cached vector serves both forms.
"""

from __future__ import annotations

from typing import Any, Literal

from ray import serve

from deployments.replica import ModelReplica, logger
from vlgraph.config import EncoderConfig
from vlgraph.errors import ServiceError
from vlgraph.images import decode_image
from vlgraph.messages import EmbeddingResult, EncodeRequest
from vlgraph.model_source import checkpoint_fingerprint

Modality = Literal["image", "text"]


class SentenceEncoder(ModelReplica):
    """Encodes images or texts with a ``SentenceTransformer``."""

    batched_methods = ("_encode_batch",)

    def __init__(
        self, config: EncoderConfig, checkpoint_cache_dir: str, name: str, modality: Modality
    ):
        self._modality = modality
        self.failure_message = f"the {modality} encoder failed"
        super().__init__(config, checkpoint_cache_dir, name)

    def load(self, path: str) -> None:
        """The sentence-transformers model in its Hub layout, and its vector size."""
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(path, device=self._device)
        self._model = model.to(self._dtype).eval()
        self.dimension = int(self._model.get_embedding_dimension())
        self.fingerprint = checkpoint_fingerprint(path)

    def warm_up(self) -> None:
        """Encode one blank image or one short text."""
        from PIL import Image

        sample = Image.new("RGB", (32, 32)) if self._modality == "image" else "warm up"
        self._model.encode([sample], show_progress_bar=False)

    async def encode(self, request: EncodeRequest) -> EmbeddingResult:
        """Encode one input; concurrent calls are batched together."""
        return await self._encode_batch(request)

    async def encode_many(self, requests: list[EncodeRequest]) -> list[EmbeddingResult]:
        """Encode a list of inputs as one batch (a bulk index sends its batch in one call)."""
        return await self.run_batch(EmbeddingResult, self._encode_all, requests)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _encode_batch(self, requests: list[EncodeRequest]) -> list[EmbeddingResult]:
        return await self.run_batch(EmbeddingResult, self._encode_all, requests)

    def encode_now(self, requests: list[EncodeRequest]) -> list[EmbeddingResult]:
        """Encode a list of inputs as one batch, waiting for the model thread."""
        return self.run_now(EmbeddingResult, self._encode_all, requests)

    def _encode_all(self, requests: list[EncodeRequest]) -> list[EmbeddingResult]:
        """Prepare each input (a bad one fails alone), then one ``encode`` call for the rest."""
        results: list[EmbeddingResult | None] = [None] * len(requests)
        inputs, positions = [], []
        for index, request in enumerate(requests):
            try:
                inputs.append(self._prepared(request.item))
                positions.append(index)
            except ServiceError as error:
                results[index] = EmbeddingResult(error=error.as_item_error())
        if inputs:
            encoded = self._encode_prepared(inputs)
            for index, vector in zip(positions, encoded, strict=True):
                results[index] = vector
        return [result for result in results if result is not None]

    def _encode_prepared(self, inputs: list[Any]) -> list[EmbeddingResult]:
        """One ``encode`` call: a vector per input, or the same 500 for all if it raises."""
        try:
            vectors = self._model.encode(
                inputs, batch_size=len(inputs), convert_to_numpy=True, show_progress_bar=False
            )
            tokens = self._token_counts(inputs)
        except Exception:
            logger.exception("%s failed on a batch of %d", self._name, len(inputs))
            return [EmbeddingResult(error=self.failure())] * len(inputs)
        return [
            EmbeddingResult(
                embedding=tuple(vector.astype(float).tolist()),
                tokens=count,
                fingerprint=self.fingerprint,
            )
            for vector, count in zip(vectors, tokens, strict=True)
        ]

    def _token_counts(self, inputs: list[Any]) -> list[int | None]:
        """Tokens the text encoder reads of each text (``None`` for images)."""
        if self._modality == "image":
            return [None] * len(inputs)
        features = self._model.tokenize(inputs)
        return [int(count) for count in features["attention_mask"].sum(dim=1).tolist()]

    def _prepared(self, item: bytes | str) -> Any:
        if self._modality == "image":
            if not isinstance(item, bytes):
                raise ServiceError("the image encoder takes image bytes", status=400)
            return decode_image(item)
        if not isinstance(item, str):
            raise ServiceError("the text encoder takes text", status=400)
        return item


ClipImageDeployment = serve.deployment(SentenceEncoder, name="clip_image_encoder")
ClipTextDeployment = serve.deployment(SentenceEncoder, name="clip_text_encoder")
