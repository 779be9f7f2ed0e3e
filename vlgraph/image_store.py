"""The image store: uploaded, generated and indexed images, their captions, their search
vectors and the questions asked about them, kept across restarts.

Two backends behind one async interface, :class:`ImageStore`:

* :class:`~vlgraph.sqlite_image_store.SqliteImageStore` (the default): ``vlgraph.sqlite3``
  plus one file per image under ``images/`` in the data folder. SQLite runs in worker
  threads (never on the event loop), one connection per call, WAL journal,
  ``synchronous=FULL`` and a busy timeout, so several ingress replicas on one machine may
  share the folder.
* :class:`~vlgraph.redis_image_store.RedisImageStore`: a Redis server every ingress replica
  reaches. Keys (``{ns}`` is ``StoreConfig.namespace``, distinct from the cache's so a cache
  reset never touches them)::

      {ns}:v1:image:{id}      hash: record (StoredImage as JSON), data (the image bytes)
      {ns}:v1:questions:{id}  list of QuestionRecord JSON, oldest first
      {ns}:v1:images          sorted set of ids scored by creation time (epoch microseconds)

  Every write is one MULTI/EXEC transaction. With ``require_fsync`` a write answers only once
  Redis has its append-only file on disk (``WAITAOF``), else it is rolled back and refused.

A record is written whole or not at all, with its search vector (:class:`ImageVector`), and is
durable before the call returns; search indexes read the vectors back in the order they were
written (:meth:`ImageStore.vectors_since`). Image ids are uuid4 hex strings; anything else is
refused as unknown before it can reach a file path or a Redis key.
"""

from __future__ import annotations

import abc
import hashlib
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import numpy as np
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from vlgraph.errors import BadRequestError, NotFoundError, ServiceError, ServiceUnavailableError
from vlgraph.vector_index import IndexedVector

logger = logging.getLogger("ray.serve")

KEY_VERSION = "v1"
SCHEMA_VERSION = 2
#: The largest page a store hands out; routes apply their own, smaller limit from config.
MAX_HISTORY_LIMIT = 1000
DB_FILE_NAME = "vlgraph.sqlite3"
IMAGES_FOLDER = "images"
SQLITE_BUSY_TIMEOUT_S = 5.0
#: An image file without its row is an orphan once it is this old (a write takes milliseconds).
ORPHAN_AGE_S = 600.0

#: upload: POST /upload; generated: an image the service drew and kept; indexed: a file that
#: ``vlgraph-index DIR`` copied into the store.
ImageKind = Literal["upload", "generated", "indexed"]
IMAGE_KINDS: tuple[str, ...] = ("upload", "generated", "indexed")

#: An image id: a uuid4 in hex.
IMAGE_ID_PATTERN = r"^[0-9a-f]{32}$"
IMAGE_ID = re.compile(IMAGE_ID_PATTERN)
_EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "image/bmp": ".bmp",
    "image/tiff": ".tiff",
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]


class UnknownImageError(NotFoundError):
    """404: no stored image has this id (or the id is not a valid image id at all)."""

    code = "unknown_image_id"

    def __init__(self, image_id: object):
        shown = repr(image_id)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"no stored image has the id {shown}")
        self.image_id = image_id


class StoreUnavailableError(ServiceUnavailableError):
    """503: the store cannot be reached or failed to read or write; retry later."""

    code = "store_unavailable"


class StoreNotDurableError(ServiceError):
    """503: the store cannot confirm writes on disk (Redis without its append-only file)."""

    status = 503
    code = "store_not_durable"


NOT_DURABLE_MESSAGE = (
    "the Redis image store does not persist writes to disk: enable 'appendonly yes' on the "
    "Redis server, or set store.require_fsync to false to accept losing images on a restart"
)


class QuestionRecord(BaseModel):
    """One question asked about a stored image, with the answer it got."""

    model_config = ConfigDict(frozen=True)

    question: str
    answer: str
    asked_at: UtcDatetime = Field(description="When it was asked (UTC).")


class StoredImage(BaseModel):
    """A stored image's record (the bytes are read separately with ``read_image``)."""

    model_config = ConfigDict(frozen=True)

    image_id: str = Field(pattern=IMAGE_ID_PATTERN, description="uuid4 hex.")
    filename: str | None = Field(None, description="The client's file name, if it sent one.")
    media_type: str = Field(pattern=r"^[A-Za-z0-9][\w.+-]*/[\w.+-]+$", examples=["image/png"])
    caption: str
    created_at: UtcDatetime = Field(description="When it was stored (UTC).")
    kind: ImageKind = "upload"
    prompt: str | None = Field(None, description="The description a generated image was made from.")
    model: str | None = Field(None, description="The model that generated it (generated images).")


class ImageHistory(StoredImage):
    """A stored image with every question asked about it, oldest first."""

    questions: list[QuestionRecord] = Field(default_factory=list)


class HistoryPage(BaseModel):
    """One page of the history: stored images, newest first, and how many there are in all."""

    total: int
    offset: int
    limit: int
    items: list[ImageHistory]


@dataclass(frozen=True)
class ImageVector:
    """An image's search vector, written with its record: unit-length float32 values and the
    fingerprint of the encoder that made them."""

    values: np.ndarray
    fingerprint: str

    def to_bytes(self) -> bytes:
        """The values as little-endian float32 bytes."""
        return np.asarray(self.values, dtype="<f4").tobytes()

    @staticmethod
    def values_from(data: bytes) -> np.ndarray:
        """Values written by :meth:`to_bytes`."""
        return np.frombuffer(data, dtype="<f4").astype(np.float32)


@dataclass(frozen=True)
class NewImage:
    """An image about to be stored: its bytes and what its record and vector will say."""

    data: bytes
    media_type: str
    caption: str
    filename: str | None = None
    kind: ImageKind = "upload"
    prompt: str | None = None
    model: str | None = None
    vector: ImageVector | None = None

    def record(self) -> StoredImage:
        """Its record, with a fresh id, created now."""
        return new_record(
            self.media_type, self.caption, self.filename, self.kind, self.prompt, self.model
        )


@dataclass(frozen=True)
class IndexCensus:
    """What the store's vectors look like: how many images have none, and how many each
    encoder fingerprint made."""

    images: int
    without_vector: int
    by_fingerprint: dict[str, int]


class ImageStore(abc.ABC):
    """Persistent images, captions and questions. Every method is async and safe to call
    concurrently; unknown or malformed ids raise :class:`UnknownImageError`."""

    async def add_image(
        self,
        data: bytes,
        media_type: str,
        caption: str,
        filename: str | None = None,
        kind: ImageKind = "upload",
        prompt: str | None = None,
        model: str | None = None,
        vector: ImageVector | None = None,
    ) -> StoredImage:
        """Store an image, its record and its search vector, all or none, durably; the new
        record."""
        image = NewImage(data, media_type, caption, filename, kind, prompt, model, vector)
        (record,) = await self.add_images([image])
        return record

    @abc.abstractmethod
    async def add_images(self, images: Sequence[NewImage]) -> list[StoredImage]:
        """Store several images with their records and vectors in one durable write, all or
        none (a bulk index pays one commit per batch); the new records, in order."""

    @abc.abstractmethod
    async def get_image(self, image_id: str) -> StoredImage:
        """The record of ``image_id``."""

    @abc.abstractmethod
    async def get_images(self, image_ids: Sequence[str]) -> dict[str, StoredImage]:
        """The records of those of ``image_ids`` that exist, by id, in one read."""

    @abc.abstractmethod
    async def read_image(self, image_id: str) -> bytes:
        """The stored bytes of ``image_id``."""

    @abc.abstractmethod
    async def add_question(self, image_id: str, question: str, answer: str) -> QuestionRecord:
        """Append a question and its answer to the image's history, durably."""

    @abc.abstractmethod
    async def questions(self, image_id: str) -> list[QuestionRecord]:
        """The questions asked about ``image_id``, oldest first."""

    @abc.abstractmethod
    async def history(self, offset: int = 0, limit: int = 20) -> HistoryPage:
        """A page of stored images, newest first, each with its questions."""

    @abc.abstractmethod
    async def set_vector(self, image_id: str, vector: ImageVector) -> None:
        """Replace the search vector of ``image_id`` (a rebuild with another encoder); it gets
        a new sequence number, so that indexes pick it up."""

    @abc.abstractmethod
    async def vectors_since(self, after_seq: int, limit: int) -> list[IndexedVector]:
        """Vectors with a sequence number above ``after_seq``, lowest first, ``limit`` at
        most: what a search index has not seen yet."""

    @abc.abstractmethod
    async def indexed_digests(self, digests: Sequence[str]) -> set[str]:
        """Those of ``digests`` (sha256 hex of file bytes) that an indexed file already has:
        what a resumed ``vlgraph-index DIR`` need not send again."""

    @abc.abstractmethod
    async def images_without_vector(self, fingerprint: str, limit: int) -> list[str]:
        """Up to ``limit`` ids of images whose vector is missing or not ``fingerprint``'s:
        what a rebuild for that encoder still has to do."""

    @abc.abstractmethod
    async def census(self) -> IndexCensus:
        """How many images have no vector, and how many vectors each fingerprint has."""

    @abc.abstractmethod
    async def ping(self) -> bool:
        """Whether the store answers right now (never raises)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; the object is unusable afterwards."""


def checked_image_id(image_id: object) -> str:
    """``image_id`` if it is an image id (uuid4 hex); else 404 unknown_image_id."""
    if not isinstance(image_id, str) or IMAGE_ID.fullmatch(image_id) is None:
        raise UnknownImageError(image_id)
    return image_id


def check_page(offset: int, limit: int) -> None:
    """400 unless ``offset`` and ``limit`` make a page a store hands out."""
    if offset < 0:
        raise BadRequestError(f"offset must be 0 or more, got {offset}")
    if not 1 <= limit <= MAX_HISTORY_LIMIT:
        raise BadRequestError(f"limit must be between 1 and {MAX_HISTORY_LIMIT}, got {limit}")


def utc_now() -> datetime:
    """Now, in UTC."""
    return datetime.now(UTC)


def to_micros(moment: datetime) -> int:
    """``moment`` as microseconds since the epoch."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


def from_micros(micros: int) -> datetime:
    """The UTC instant ``micros`` microseconds after the epoch."""
    return _EPOCH + timedelta(microseconds=micros)


def content_digest(data: bytes) -> str:
    """The sha256 of an image's bytes, in hex."""
    return hashlib.sha256(data).hexdigest()


def file_extension(media_type: str) -> str:
    """The file extension an image of ``media_type`` is stored under."""
    return _EXTENSIONS.get(media_type.lower(), ".bin")


def new_record(
    media_type: str,
    caption: str,
    filename: str | None,
    kind: ImageKind,
    prompt: str | None,
    model: str | None,
) -> StoredImage:
    """A new image's record, with a fresh unguessable id, created now."""
    return StoredImage(
        image_id=uuid.uuid4().hex,
        filename=filename,
        media_type=media_type,
        caption=caption,
        created_at=utc_now(),
        kind=kind,
        prompt=prompt,
        model=model,
    )
