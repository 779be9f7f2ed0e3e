"""The deployment of an embedding model a profile names (task ``embed``): one replica embeds
images and texts of one space, with the encoder family derived from the checkpoint
(:mod:`vlgraph.embedding_families`: a transformers dual encoder such as SigLIP, or a
sentence-transformers model).

``@serve.batch`` gathers concurrent requests; a batch is split by modality into one image call
and one text call on the model thread (the replica skeleton of :mod:`deployments.replica`
owns the thread, loading and batching). A bad input fails alone. Vectors leave raw: the
ingress normalizes on request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import serve

from deployments.replica import ModelReplica, logger
from vlgraph.config import EmbeddingModelConfig
from vlgraph.embedding_families import IMAGE, TEXT, derive_encoder
from vlgraph.errors import BadRequestError, ServiceError
from vlgraph.images import decode_image
from vlgraph.messages import EmbeddingResult, EncodeRequest
from vlgraph.model_source import checkpoint_fingerprint


class NamedEncoder(ModelReplica):
    """Embeds images (bytes) and texts (str) with one derived encoder family."""

    batched_methods = ("_encode_batch",)

    def __init__(self, config: EmbeddingModelConfig, checkpoint_cache_dir: str, name: str):
        self.failure_message = f"the {name} encoder failed"
        super().__init__(config, checkpoint_cache_dir, name)

    def load(self, path: str) -> None:
        """The encoder family of the checkpoint, loaded, and its vector size."""
        self._encoder = derive_encoder(Path(path))
        self._encoder.load(Path(path), self._device, self._dtype)
        self.dimension = self._encoder.dimension
        self.fingerprint = checkpoint_fingerprint(path)

    def warm_up(self) -> None:
        """Embed one blank image and one short text (what the model reads of each)."""
        from PIL import Image

        if IMAGE in self._encoder.modalities:
            self._encoder.encode_images([Image.new("RGB", (32, 32))])
        if TEXT in self._encoder.modalities:
            self._encoder.encode_texts(["warm up"])

    async def encode(self, request: EncodeRequest) -> EmbeddingResult:
        """Embed one image or text; concurrent calls are batched together."""
        return await self._encode_batch(request)

    async def encode_many(self, requests: list[EncodeRequest]) -> list[EmbeddingResult]:
        """Embed a list of inputs as one batch (a bulk index sends its batch in one call)."""
        return await self.run_batch(EmbeddingResult, self._encode_all, requests)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _encode_batch(self, requests: list[EncodeRequest]) -> list[EmbeddingResult]:
        return await self.run_batch(EmbeddingResult, self._encode_all, requests)

    def encode_now(self, requests: list[EncodeRequest]) -> list[EmbeddingResult]:
        """Embed a list of inputs as one batch, waiting for the model thread."""
        return self.run_now(EmbeddingResult, self._encode_all, requests)

    def _encode_all(self, requests: list[EncodeRequest]) -> list[EmbeddingResult]:
        """Images decoded (a bad one fails alone), then one call per modality."""
        results: list[EmbeddingResult | None] = [None] * len(requests)
        images: list[tuple[int, Any]] = []
        texts: list[tuple[int, str]] = []
        for index, request in enumerate(requests):
            try:
                if isinstance(request.item, bytes):
                    self._check_reads(IMAGE)
                    images.append((index, decode_image(request.item)))
                else:
                    self._check_reads(TEXT)
                    texts.append((index, request.item))
            except ServiceError as error:
                results[index] = EmbeddingResult(error=error.as_item_error())
        if images:
            self._fill(results, images, lambda items: (self._encoder.encode_images(items), None))
        if texts:
            self._fill(results, texts, self._encoder.encode_texts)
        return [result for result in results if result is not None]

    def _check_reads(self, modality: str) -> None:
        if modality not in self._encoder.modalities:
            raise BadRequestError(f"{self._name} embeds no {modality}s", code="unsupported_input")

    def _fill(self, results: list[EmbeddingResult | None], rows: list, encode: Any) -> None:
        """One model call for ``rows`` (index, input); its vectors into ``results``, or the
        same 500 for every row if the call raises."""
        indices = [index for index, _ in rows]
        try:
            vectors, tokens = encode([item for _, item in rows])
        except Exception:
            logger.exception("%s failed on a batch of %d", self._name, len(rows))
            for index in indices:
                results[index] = EmbeddingResult(error=self.failure())
            return
        counts = tokens or [None] * len(rows)
        for index, vector, count in zip(indices, vectors, counts, strict=True):
            results[index] = EmbeddingResult(
                embedding=tuple(vector), tokens=count, fingerprint=self.fingerprint
            )


NamedEncoderDeployment = serve.deployment(NamedEncoder, name="named_encoder")
