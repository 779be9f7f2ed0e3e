"""Semantic search over the stored images, as one ingress replica runs it: the search vector of
an image about to be stored, and a search (query vectors from the served encoders, the index
caught up with the store, one page of results and the cursor of the next).

The store keeps every vector; the index (:mod:`vlgraph.vector_index`) is derived from it and
caught up before each search, so an image is found exactly when its record exists. Vectors of
two encoders are never compared: while the store holds vectors of an encoder other than the
one served (or images with none), search answers 409 naming ``vlgraph-index --rebuild``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from deployments.ingress.gateway import ModelGateway
from vlgraph.config import StoreConfig
from vlgraph.errors import BadRequestError, ItemError, ServiceError
from vlgraph.image_store import (
    IMAGE_ID_PATTERN,
    ImageStore,
    ImageVector,
    NewImage,
    StoredImage,
    content_digest,
)
from vlgraph.messages import EmbeddingResult, EncodeRequest
from vlgraph.search_config import SearchConfig
from vlgraph.search_engines import make_vector_index
from vlgraph.served_models import Capability
from vlgraph.vector_index import (
    IndexNeedsRebuildError,
    IndexUnavailableError,
    Ranked,
    SearchFilter,
    VectorIndex,
    catch_up,
    unit,
)

logger = logging.getLogger("ray.serve")

#: How long a replica trusts what it last read of the store's census and of the served
#: encoder's fingerprint: a rebuild or a new encoder is noticed within this time.
_CHECK_TTL_S = 5.0
_CURSOR_VERSION = 1
#: Images per call to the encoder when many are encoded at once (bulk index, rebuild).
ENCODE_CHUNK = 32


@dataclass(frozen=True)
class SearchQuery:
    """A resolved search: what to look for (a text, an image or both), how to mix them, the
    filter and the page."""

    text: str | None = None
    image: bytes | None = None
    #: Which image the query image is, for the cursor: its id, or a digest of the upload.
    image_key: str | None = None
    text_weight: float = 0.5
    search_filter: SearchFilter = field(default_factory=SearchFilter)
    min_score: float = -1.0
    limit: int = 20
    cursor: str | None = None

    def digest(self) -> str:
        """What a cursor is bound to: everything but the page size and the cursor."""
        described = {
            "text": self.text,
            "image": self.image_key,
            "weight": self.text_weight if self.text is not None and self.image else None,
            "filter": [
                sorted(self.search_filter.kinds),
                self.search_filter.created_from_us,
                self.search_filter.created_until_us,
                self.search_filter.model,
            ],
            "min_score": self.min_score,
        }
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


class _Cursor(BaseModel):
    """Where the next page starts: after the last result given, in the same snapshot."""

    v: int
    score: float = Field(ge=-1.0, le=1.0)
    image_id: str = Field(pattern=IMAGE_ID_PATTERN)
    up_to_seq: int = Field(ge=0)
    depth: int = Field(ge=0)
    query: str


@dataclass(frozen=True)
class SearchHit:
    """One result: the image's record and its score."""

    record: StoredImage
    score: float


@dataclass(frozen=True)
class IndexOutcome:
    """What became of one file sent to be indexed."""

    name: str
    image_id: str | None
    status: str
    error: str | None = None


@dataclass(frozen=True)
class SearchPage:
    """One page of results, best first, and the cursor of the next page (None at the end)."""

    hits: list[SearchHit]
    next_cursor: str | None


class ImageSearch:
    """Search vectors and searches for one ingress replica."""

    def __init__(
        self,
        config: SearchConfig,
        index: VectorIndex,
        store: ImageStore,
        gateway: ModelGateway,
    ):
        self.config = config
        self._index = index
        self._store = store
        self._gateway = gateway
        self._catch_up_lock = asyncio.Lock()
        self._checked_at = -_CHECK_TTL_S
        self._served_fingerprint: str | None = None

    @classmethod
    def create(
        cls,
        config: SearchConfig,
        store_config: StoreConfig,
        store: ImageStore,
        gateway: ModelGateway,
    ) -> ImageSearch:
        """The search of a replica whose store and gateway are built."""
        return cls(config, make_vector_index(config, store_config), store, gateway)

    async def vector_of(self, image: bytes) -> ImageVector:
        """The search vector of an image about to be stored, from the served image encoder
        (never cached: the vector must be the served encoder's, with its fingerprint)."""
        name = self.config.image_encoder
        handle = self._gateway.handle(name, Capability.EMBED_IMAGE)
        result = await self._gateway.call(name, handle.encode.remote(EncodeRequest(item=image)))
        return self._vector(result)

    async def vectors_of(self, images: list[bytes]) -> list[ImageVector | ServiceError]:
        """The search vectors of several images, ``ENCODE_CHUNK`` per call to the encoder
        (one batch on its model thread, each call within the model's timeout); an image the
        encoder refuses gets its error in its place."""
        name = self.config.image_encoder
        handle = self._gateway.handle(name, Capability.EMBED_IMAGE)
        results: list[EmbeddingResult] = []
        for start in range(0, len(images), ENCODE_CHUNK):
            requests = [EncodeRequest(item=image) for image in images[start : start + ENCODE_CHUNK]]
            results.extend(await self._gateway.call(name, handle.encode_many.remote(requests)))
        vectors: list[ImageVector | ServiceError] = []
        for result in results:
            try:
                vectors.append(self._vector(result))
            except ServiceError as error:
                if error.status >= 500:
                    raise
                vectors.append(error)
        return vectors

    def _vector(self, result: EmbeddingResult) -> ImageVector:
        if result.error is not None:
            raise ServiceError.from_item_error(result.error)
        if result.fingerprint is None:
            name = self.config.image_encoder
            raise ServiceError(f"the encoder {name} gave no checkpoint fingerprint", status=500)
        return ImageVector(unit(result.embedding), result.fingerprint)

    async def duplicate_of(self, vector: ImageVector) -> str | None:
        """The stored image closest to ``vector`` when it reaches ``duplicate_threshold``;
        None when the option is off, nothing is that close, or the index cannot tell now (an
        upload is never refused for want of this check)."""
        threshold = self.config.duplicate_threshold
        if threshold is None:
            return None
        try:
            await self._caught_up()
            await self._check_one_encoder()
            nearest = await self._index.nearest(
                vector.values, SearchFilter(), 1, min_score=threshold
            )
        except (IndexUnavailableError, IndexNeedsRebuildError) as error:
            logger.warning("search: no duplicate check for this upload: %s", error.message)
            return None
        return nearest[0].image_id if nearest else None

    async def search(self, query: SearchQuery) -> SearchPage:
        """One page of the images closest to the query, best first."""
        digest = query.digest()
        cursor = self._read_cursor(query.cursor, digest) if query.cursor else None
        vector = await self._query_vector(query)
        await self._caught_up()
        await self._check_one_encoder()
        up_to_seq = cursor.up_to_seq if cursor else await self._index.last_seq()
        depth = cursor.depth if cursor else 0
        limit = min(query.limit, self.config.max_depth - depth)
        if limit <= 0:
            return SearchPage([], None)
        after = Ranked(cursor.score, cursor.image_id) if cursor else None
        search_filter = SearchFilter(
            kinds=query.search_filter.kinds,
            created_from_us=query.search_filter.created_from_us,
            created_until_us=query.search_filter.created_until_us,
            model=query.search_filter.model,
            up_to_seq=up_to_seq,
        )
        ranked = await self._index.nearest(vector, search_filter, limit, after, query.min_score)
        records = await self._store.get_images([item.image_id for item in ranked])
        hits = [
            SearchHit(records[item.image_id], item.score)
            for item in ranked
            if item.image_id in records
        ]
        next_cursor = None
        if len(ranked) == limit and depth + limit < self.config.max_depth:
            last = ranked[-1]
            next_cursor = _write_cursor(
                _Cursor(
                    v=_CURSOR_VERSION,
                    score=last.score,
                    image_id=last.image_id,
                    up_to_seq=up_to_seq,
                    depth=depth + limit,
                    query=digest,
                )
            )
        return SearchPage(hits, next_cursor)

    async def index_files(self, files: list[tuple[str, bytes, str]]) -> list[IndexOutcome]:
        """Store ``files`` (name, bytes, media type; each already checked as an image) as
        indexed images with their vectors, encoded together (the encoder batches them). A
        file whose bytes an indexed image already has is skipped, which makes a bulk index
        resumable."""
        digests = [content_digest(data) for _, data, _ in files]
        known = await self._store.indexed_digests(digests)
        # The same bytes twice in one batch are indexed once.
        first_of = {digest: index for index, digest in reversed(list(enumerate(digests)))}
        fresh = [
            index
            for index, digest in enumerate(digests)
            if digest not in known and first_of[digest] == index
        ]
        vectors = await self.vectors_of([files[index][1] for index in fresh])
        outcomes = [IndexOutcome(name, None, "already_indexed") for name, _, _ in files]
        stored, new_images = [], []
        for index, vector in zip(fresh, vectors, strict=True):
            name, data, media_type = files[index]
            if isinstance(vector, ServiceError):
                outcomes[index] = IndexOutcome(name, None, "refused", vector.message)
                continue
            stored.append(index)
            new_images.append(
                NewImage(data, media_type, "", filename=name, kind="indexed", vector=vector)
            )
        records = await self._store.add_images(new_images) if new_images else []
        for index, record in zip(stored, records, strict=True):
            outcomes[index] = IndexOutcome(files[index][0], record.image_id, "indexed")
        return outcomes

    async def rebuild(self, limit: int) -> tuple[int, int]:
        """Encode again, with the served image encoder, up to ``limit`` stored images whose
        vector is missing or another encoder's; how many were done and how many are left."""
        served = await self._served_image_fingerprint()
        ids = await self._store.images_without_vector(served or "", limit)
        images = await asyncio.gather(*(self._store.read_image(image_id) for image_id in ids))
        for image_id, vector in zip(ids, await self.vectors_of(list(images)), strict=True):
            if isinstance(vector, ServiceError):
                raise vector
            await self._store.set_vector(image_id, vector)
        self._checked_at = -_CHECK_TTL_S
        census = await self._store.census()
        left = census.without_vector + sum(
            count for fingerprint, count in census.by_fingerprint.items() if fingerprint != served
        )
        return len(ids), left

    async def close(self) -> None:
        """Save the index (the embedded engine) and release connections."""
        await self._index.close()

    async def _query_vector(self, query: SearchQuery) -> np.ndarray:
        parts: list[tuple[float, np.ndarray]] = []
        if query.text is not None:
            name = self.config.text_encoder
            if name not in self._gateway.served(Capability.EMBED_TEXT):
                raise BadRequestError(
                    f"text search needs the text encoder {name}, which this profile does not "
                    "serve; search by image instead",
                    code="text_search_not_served",
                )
            text_vector = await self._encode(name, Capability.EMBED_TEXT, query.text)
            parts.append((query.text_weight if query.image is not None else 1.0, text_vector))
        if query.image is not None:
            name = self.config.image_encoder
            weight = 1.0 - query.text_weight if query.text is not None else 1.0
            parts.append((weight, await self._encode(name, Capability.EMBED_IMAGE, query.image)))
        return unit(sum(weight * vector for weight, vector in parts))

    async def _encode(self, name: str, capability: Capability, item: bytes | str) -> np.ndarray:
        """A query's unit vector, through the result cache as the embedding routes use it."""
        handle = self._gateway.handle(name, capability)

        async def compute() -> dict | ItemError:
            result = await self._gateway.call(name, handle.encode.remote(EncodeRequest(item=item)))
            return result.error or {"embedding": list(result.embedding), "tokens": result.tokens}

        outcome = await self._gateway.cached(name, item, compute)
        if isinstance(outcome, ItemError):
            raise ServiceError.from_item_error(outcome)
        return unit(outcome[0]["embedding"])

    async def _caught_up(self) -> None:
        async with self._catch_up_lock:
            await catch_up(self._index, self._store)

    async def _check_one_encoder(self) -> None:
        """409 while the stored vectors do not all come from the served image encoder."""
        if time.monotonic() - self._checked_at < _CHECK_TTL_S:
            return
        census = await self._store.census()
        served = await self._served_image_fingerprint()
        stale = {fp: n for fp, n in census.by_fingerprint.items() if fp != served}
        if census.without_vector or stale:
            problems = []
            if census.without_vector:
                problems.append(f"{census.without_vector} stored images have no search vector")
            if stale:
                problems.append(
                    f"{sum(stale.values())} were indexed by another encoder than the served "
                    f"{self.config.image_encoder}"
                )
            raise IndexNeedsRebuildError(
                f"{' and '.join(problems)} (of {census.images}); their scores cannot be "
                "compared with this encoder's: run `vlgraph-index --rebuild` against this "
                "service, then search again"
            )
        self._checked_at = time.monotonic()

    async def _served_image_fingerprint(self) -> str | None:
        name = self.config.image_encoder
        handle = self._gateway.handle(name, Capability.EMBED_IMAGE)
        self._served_fingerprint = await self._gateway.call(
            name, handle.checkpoint_fingerprint.remote()
        )
        return self._served_fingerprint

    @staticmethod
    def _read_cursor(text: str, digest: str) -> _Cursor:
        try:
            cursor = _Cursor.model_validate_json(base64.urlsafe_b64decode(text.encode("ascii")))
        except (ValidationError, ValueError, binascii.Error, UnicodeEncodeError):
            raise BadRequestError(
                "cursor is not one this service gave: send next_cursor from the previous page "
                "as it was",
                code="invalid_cursor",
            ) from None
        if cursor.v != _CURSOR_VERSION or cursor.query != digest:
            raise BadRequestError(
                "cursor belongs to another search: send the same text, image, filters and "
                "min_score as the search that gave it",
                code="cursor_mismatch",
            )
        return cursor


def _write_cursor(cursor: _Cursor) -> str:
    return base64.urlsafe_b64encode(cursor.model_dump_json().encode()).decode("ascii")


async def search_vector(search: ImageSearch | None, image: bytes) -> ImageVector | None:
    """The search vector an image about to be stored is written with; None when search is
    off. A failing encoder fails the store (nothing is stored without its vector)."""
    return None if search is None else await search.vector_of(image)
