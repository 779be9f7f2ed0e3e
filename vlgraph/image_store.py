"""The image store of visual question answering with uploads: uploaded (and generated)
images, their captions and the questions asked about them, kept across restarts.

Two backends behind one async interface, :class:`ImageStore`:

* :class:`SqliteImageStore` (the default): ``vlgraph.sqlite3`` plus one file per image under
  ``images/`` in the data folder. SQLite runs in worker threads (never on the event loop), one
  connection per call, WAL journal, ``synchronous=FULL`` and a busy timeout, so several ingress
  replicas on one machine may share the folder.
* :class:`RedisImageStore`: a Redis server every ingress replica reaches. Keys (``{ns}`` is
  ``StoreConfig.namespace``, distinct from the cache's so a cache reset never touches them)::

      {ns}:v1:image:{id}      hash: record (StoredImage as JSON), data (the image bytes)
      {ns}:v1:questions:{id}  list of QuestionRecord JSON, oldest first
      {ns}:v1:images          sorted set of ids scored by creation time (epoch microseconds)

  Every write is one MULTI/EXEC transaction. With ``require_fsync`` a write answers only once
  Redis has its append-only file on disk (``WAITAOF``), else it is rolled back and refused.

A record is written whole or not at all, and is durable before the call returns. Image ids
are uuid4 hex strings; anything else is refused as unknown before it can reach a file path or
a Redis key.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from vlgraph.errors import BadRequestError, NotFoundError, ServiceError, ServiceUnavailableError

if TYPE_CHECKING:
    from vlgraph.config import StoreConfig

logger = logging.getLogger("ray.serve")

KEY_VERSION = "v1"
SCHEMA_VERSION = 1
#: The largest page a store hands out; routes apply their own, smaller limit from config.
MAX_HISTORY_LIMIT = 1000
DB_FILE_NAME = "vlgraph.sqlite3"
IMAGES_FOLDER = "images"
SQLITE_BUSY_TIMEOUT_S = 5.0
#: An image file without its row is an orphan once it is this old (a write takes milliseconds).
ORPHAN_AGE_S = 600.0

ImageKind = Literal["upload", "generated"]

#: An image id: a uuid4 in hex.
IMAGE_ID_PATTERN = r"^[0-9a-f]{32}$"
_IMAGE_ID = re.compile(IMAGE_ID_PATTERN)
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


class ImageHistory(StoredImage):
    """A stored image with every question asked about it, oldest first."""

    questions: list[QuestionRecord] = Field(default_factory=list)


class HistoryPage(BaseModel):
    """One page of the history: stored images, newest first, and how many there are in all."""

    total: int
    offset: int
    limit: int
    items: list[ImageHistory]


class ImageStore(abc.ABC):
    """Persistent images, captions and questions. Every method is async and safe to call
    concurrently; unknown or malformed ids raise :class:`UnknownImageError`."""

    @abc.abstractmethod
    async def add_image(
        self,
        data: bytes,
        media_type: str,
        caption: str,
        filename: str | None = None,
        kind: ImageKind = "upload",
        prompt: str | None = None,
    ) -> StoredImage:
        """Store an image and its record, both or neither, durably; the new record."""

    @abc.abstractmethod
    async def get_image(self, image_id: str) -> StoredImage:
        """The record of ``image_id``."""

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
    async def ping(self) -> bool:
        """Whether the store answers right now (never raises)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; the object is unusable afterwards."""


def make_image_store(config: StoreConfig) -> ImageStore:
    """The store a :class:`~vlgraph.config.StoreConfig` describes."""
    if config.backend == "redis":
        return RedisImageStore(
            host=config.redis_host,
            port=config.redis_port,
            db=config.redis_db,
            timeout_s=config.timeout_s,
            namespace=config.namespace,
            require_fsync=config.require_fsync,
        )
    if config.backend == "sqlite":
        return SqliteImageStore(config.resolved_data_dir())
    raise ValueError(f"unknown image store backend {config.backend!r}")


def _checked_id(image_id: object) -> str:
    if not isinstance(image_id, str) or _IMAGE_ID.fullmatch(image_id) is None:
        raise UnknownImageError(image_id)
    return image_id


def _check_page(offset: int, limit: int) -> None:
    if offset < 0:
        raise BadRequestError(f"offset must be 0 or more, got {offset}")
    if not 1 <= limit <= MAX_HISTORY_LIMIT:
        raise BadRequestError(f"limit must be between 1 and {MAX_HISTORY_LIMIT}, got {limit}")


def _now() -> datetime:
    return datetime.now(UTC)


def _to_micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def _extension(media_type: str) -> str:
    return _EXTENSIONS.get(media_type.lower(), ".bin")


def _new_record(
    media_type: str, caption: str, filename: str | None, kind: ImageKind, prompt: str | None
) -> StoredImage:
    return StoredImage(
        image_id=uuid.uuid4().hex,
        filename=filename,
        media_type=media_type,
        caption=caption,
        created_at=_now(),
        kind=kind,
        prompt=prompt,
    )


# --------------------------------------------------------------------------------------------
# SQLite


_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS images (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        image_id TEXT NOT NULL UNIQUE,
        filename TEXT,
        media_type TEXT NOT NULL,
        caption TEXT NOT NULL,
        created_us INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('upload', 'generated')),
        prompt TEXT,
        file_name TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS images_newest ON images (created_us DESC, seq DESC)",
    """CREATE TABLE IF NOT EXISTS questions (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        image_id TEXT NOT NULL REFERENCES images (image_id) ON DELETE CASCADE,
        question TEXT NOT NULL,
        answer TEXT NOT NULL,
        asked_us INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS questions_of_image ON questions (image_id, seq)",
)

_IMAGE_COLUMNS = "image_id, filename, media_type, caption, created_us, kind, prompt"


class SqliteImageStore(ImageStore):
    """SQLite database plus image files in one folder, shared safely by the processes of one
    machine. Folders and schema are created on first use."""

    def __init__(self, data_dir: Path, busy_timeout_s: float = SQLITE_BUSY_TIMEOUT_S):
        self.data_dir = Path(data_dir)
        self.db_path = self.data_dir / DB_FILE_NAME
        self.images_dir = self.data_dir / IMAGES_FOLDER
        self._busy_timeout_s = busy_timeout_s
        self._ready = False
        self._ready_lock = threading.Lock()

    async def add_image(
        self,
        data: bytes,
        media_type: str,
        caption: str,
        filename: str | None = None,
        kind: ImageKind = "upload",
        prompt: str | None = None,
    ) -> StoredImage:
        """Write the file (fsynced, renamed into place), then commit the row; a failed commit
        removes the file again."""
        record = _new_record(media_type, caption, filename, kind, prompt)
        await self._in_thread(self._add_image, record, bytes(data))
        return record

    async def get_image(self, image_id: str) -> StoredImage:
        """The record of ``image_id``."""
        image_id = _checked_id(image_id)
        return await self._in_thread(self._get_image, image_id)

    async def read_image(self, image_id: str) -> bytes:
        """The stored bytes of ``image_id``."""
        image_id = _checked_id(image_id)
        return await self._in_thread(self._read_image, image_id)

    async def add_question(self, image_id: str, question: str, answer: str) -> QuestionRecord:
        """Append a question in its own committed transaction."""
        image_id = _checked_id(image_id)
        record = QuestionRecord(question=question, answer=answer, asked_at=_now())
        await self._in_thread(self._add_question, image_id, record)
        return record

    async def questions(self, image_id: str) -> list[QuestionRecord]:
        """The questions asked about ``image_id``, oldest first."""
        image_id = _checked_id(image_id)
        return await self._in_thread(self._questions, image_id)

    async def history(self, offset: int = 0, limit: int = 20) -> HistoryPage:
        """A page of stored images, newest first, read in one consistent snapshot."""
        _check_page(offset, limit)
        return await self._in_thread(self._history, offset, limit)

    async def ping(self) -> bool:
        """Whether the database opens and answers a query."""
        try:
            await self._in_thread(self._ping)
        except Exception as error:
            logger.warning("image store ping failed: %r", error)
            return False
        return True

    async def close(self) -> None:
        """Nothing to release: every call opens and closes its own connection."""

    # The methods below run in worker threads.

    async def _in_thread(self, function: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(function, *args)
        except (sqlite3.Error, OSError) as error:
            raise StoreUnavailableError(
                f"the image store at {self.data_dir} failed: {error}"
            ) from error

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.db_path, timeout=self._busy_timeout_s, isolation_level=None
        )
        try:
            connection.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
            connection.execute("PRAGMA synchronous = FULL")
            connection.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            connection.close()
            raise
        return connection

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        self._ensure_ready()
        connection = self._connect()
        try:
            yield connection
        finally:
            connection.close()

    def _ensure_ready(self) -> None:
        if self._ready:
            return
        with self._ready_lock:
            if not self._ready:
                self._initialize()
                self._ready = True

    def _initialize(self) -> None:
        created = not self.images_dir.is_dir()
        self.images_dir.mkdir(parents=True, exist_ok=True)
        if created:
            _fsync_dir(self.data_dir)
        connection = self._connect()
        try:
            mode = _retry_while_locked(
                lambda: connection.execute("PRAGMA journal_mode = WAL").fetchone()[0],
                self._busy_timeout_s,
            )
            if str(mode).lower() != "wal":
                logger.warning("image store %s is in %s journal mode, not WAL", self.db_path, mode)
            connection.execute("BEGIN IMMEDIATE")
            try:
                version = connection.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise StoreUnavailableError(
                        f"the image store {self.db_path} has schema version {version}; this "
                        f"vlgraph reads version {SCHEMA_VERSION} (downgrade is not supported)"
                    )
                # Later schema versions migrate here, one step per version.
                for statement in _SCHEMA:
                    connection.execute(statement)
                if version < SCHEMA_VERSION:
                    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
        finally:
            connection.close()
        _fsync_dir(self.data_dir)
        self._sweep_orphans()

    def _sweep_orphans(self) -> None:
        """Remove image files that no row names, left by a process killed between writing
        the file and committing its row. Only files older than ``ORPHAN_AGE_S``: a younger
        one may belong to another replica's write that is about to commit."""
        with contextlib.closing(self._connect()) as connection:
            named = {row[0] for row in connection.execute("SELECT file_name FROM images")}
        cutoff = time.time() - ORPHAN_AGE_S
        for path in self.images_dir.iterdir():
            if path.name not in named and path.is_file() and path.stat().st_mtime < cutoff:
                logger.warning("image store: removing %s, written but never committed", path)
                path.unlink(missing_ok=True)

    def _add_image(self, record: StoredImage, data: bytes) -> None:
        self._ensure_ready()
        file_name = record.image_id + _extension(record.media_type)
        path = self.images_dir / file_name
        _write_file_durably(path, data)
        committed = False
        try:
            with self._connection() as connection:
                connection.execute("BEGIN IMMEDIATE")
                try:
                    self._insert_image_row(connection, record, file_name)
                    connection.execute("COMMIT")
                    committed = True
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
        finally:
            if not committed:
                path.unlink(missing_ok=True)

    def _insert_image_row(
        self, connection: sqlite3.Connection, record: StoredImage, file_name: str
    ) -> None:
        connection.execute(
            f"INSERT INTO images ({_IMAGE_COLUMNS}, file_name) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.image_id,
                record.filename,
                record.media_type,
                record.caption,
                _to_micros(record.created_at),
                record.kind,
                record.prompt,
                file_name,
            ),
        )

    def _get_image(self, image_id: str) -> StoredImage:
        with self._connection() as connection:
            row = connection.execute(
                f"SELECT {_IMAGE_COLUMNS} FROM images WHERE image_id = ?", (image_id,)
            ).fetchone()
        if row is None:
            raise UnknownImageError(image_id)
        return _image_from_row(row)

    def _read_image(self, image_id: str) -> bytes:
        with self._connection() as connection:
            row = connection.execute(
                "SELECT file_name FROM images WHERE image_id = ?", (image_id,)
            ).fetchone()
        if row is None:
            raise UnknownImageError(image_id)
        return (self.images_dir / row[0]).read_bytes()

    def _add_question(self, image_id: str, record: QuestionRecord) -> None:
        with self._connection() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                known = connection.execute(
                    "SELECT 1 FROM images WHERE image_id = ?", (image_id,)
                ).fetchone()
                if known is None:
                    raise UnknownImageError(image_id)
                connection.execute(
                    "INSERT INTO questions (image_id, question, answer, asked_us) "
                    "VALUES (?, ?, ?, ?)",
                    (image_id, record.question, record.answer, _to_micros(record.asked_at)),
                )
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise

    def _questions(self, image_id: str) -> list[QuestionRecord]:
        with self._connection() as connection:
            connection.execute("BEGIN")
            try:
                if (
                    connection.execute(
                        "SELECT 1 FROM images WHERE image_id = ?", (image_id,)
                    ).fetchone()
                    is None
                ):
                    raise UnknownImageError(image_id)
                rows = connection.execute(
                    "SELECT question, answer, asked_us FROM questions "
                    "WHERE image_id = ? ORDER BY seq",
                    (image_id,),
                ).fetchall()
            finally:
                connection.execute("COMMIT")
        return [_question_from_row(row) for row in rows]

    def _history(self, offset: int, limit: int) -> HistoryPage:
        with self._connection() as connection:
            connection.execute("BEGIN")
            try:
                total = connection.execute("SELECT COUNT(*) FROM images").fetchone()[0]
                rows = connection.execute(
                    f"SELECT {_IMAGE_COLUMNS} FROM images "
                    "ORDER BY created_us DESC, seq DESC LIMIT ? OFFSET ?",
                    (limit, offset),
                ).fetchall()
                ids = [row[0] for row in rows]
                asked: dict[str, list[QuestionRecord]] = {image_id: [] for image_id in ids}
                if ids:
                    marks = ", ".join("?" * len(ids))
                    for row in connection.execute(
                        "SELECT image_id, question, answer, asked_us FROM questions "
                        f"WHERE image_id IN ({marks}) ORDER BY seq",
                        ids,
                    ):
                        asked[row[0]].append(_question_from_row(row[1:]))
            finally:
                connection.execute("COMMIT")
        items = [
            ImageHistory(**_image_from_row(row).model_dump(), questions=asked[row[0]])
            for row in rows
        ]
        return HistoryPage(total=total, offset=offset, limit=limit, items=items)

    def _ping(self) -> None:
        with self._connection() as connection:
            connection.execute("SELECT 1").fetchone()


def _image_from_row(row: tuple[Any, ...]) -> StoredImage:
    image_id, filename, media_type, caption, created_us, kind, prompt = row
    return StoredImage(
        image_id=image_id,
        filename=filename,
        media_type=media_type,
        caption=caption,
        created_at=_from_micros(created_us),
        kind=kind,
        prompt=prompt,
    )


def _question_from_row(row: tuple[Any, ...]) -> QuestionRecord:
    question, answer, asked_us = row
    return QuestionRecord(question=question, answer=answer, asked_at=_from_micros(asked_us))


def _write_file_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that after a crash it is either whole or absent: a temp
    file in the same folder, fsynced, renamed into place, then the folder fsynced."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    renamed = False
    try:
        descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temp, path)
        renamed = True
        _fsync_dir(path.parent)
    except BaseException:
        (path if renamed else temp).unlink(missing_ok=True)
        raise


def _fsync_dir(folder: Path) -> None:
    """Make a folder's entries (a rename, a new file) durable."""
    descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _retry_while_locked(action: Any, timeout_s: float) -> Any:
    """Run ``action``, retrying while another process holds the lock it needs. Switching the
    journal mode may answer SQLITE_BUSY at once instead of waiting for the busy timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return action()
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# --------------------------------------------------------------------------------------------
# Redis


class RedisImageStore(ImageStore):
    """Images, records and questions in Redis (redis-py asyncio), shared by every replica.

    Writes go through a dedicated single-connection client, one at a time: ``WAITAOF`` waits
    for the last write *of its own connection*, so it must follow the write's EXEC there.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        db: int = 0,
        timeout_s: float = 2.0,
        namespace: str = "vlgraph-store",
        require_fsync: bool = True,
    ):
        import redis.asyncio as redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.namespace = namespace
        self.require_fsync = require_fsync
        self._address = f"{host}:{port}/{db}"
        self._timeout_s = timeout_s
        self._prefix = f"{namespace}:{KEY_VERSION}:"
        # redis-py retries a failed command three times with backoff by default; one try,
        # then a 503 the client may retry.
        common: dict[str, Any] = {
            "host": host,
            "port": port,
            "db": db,
            "socket_connect_timeout": timeout_s,
            "retry": Retry(NoBackoff(), 0),
        }
        self._client = redis.Redis(socket_timeout=timeout_s, **common)
        # WAITAOF blocks up to timeout_s on the server; the socket waits longer than that.
        self._writer = redis.Redis(socket_timeout=2 * timeout_s, max_connections=1, **common)
        self._write_lock = asyncio.Lock()

    def image_key(self, image_id: str) -> str:
        """The hash holding one image's record and bytes."""
        return f"{self._prefix}image:{image_id}"

    def questions_key(self, image_id: str) -> str:
        """The list of one image's questions."""
        return f"{self._prefix}questions:{image_id}"

    def index_key(self) -> str:
        """The sorted set of every image id, scored by creation time."""
        return f"{self._prefix}images"

    async def add_image(
        self,
        data: bytes,
        media_type: str,
        caption: str,
        filename: str | None = None,
        kind: ImageKind = "upload",
        prompt: str | None = None,
    ) -> StoredImage:
        """Record, bytes and index entry in one transaction, then confirmed on disk."""
        record = _new_record(media_type, caption, filename, kind, prompt)
        image_id = record.image_id
        with self._redis_errors():
            async with self._write_lock:
                async with self._writer.pipeline(transaction=True) as pipe:
                    pipe.hset(
                        self.image_key(image_id),
                        mapping={"record": record.model_dump_json(), "data": bytes(data)},
                    )
                    pipe.zadd(self.index_key(), {image_id: _to_micros(record.created_at)})
                    await pipe.execute()
                await self._confirm_durable(lambda: self._forget_image(image_id))
        return record

    async def get_image(self, image_id: str) -> StoredImage:
        """The record of ``image_id``."""
        image_id = _checked_id(image_id)
        with self._redis_errors():
            raw = await self._client.hget(self.image_key(image_id), "record")
        if raw is None:
            raise UnknownImageError(image_id)
        return StoredImage.model_validate_json(raw)

    async def read_image(self, image_id: str) -> bytes:
        """The stored bytes of ``image_id``."""
        image_id = _checked_id(image_id)
        with self._redis_errors():
            data = await self._client.hget(self.image_key(image_id), "data")
        if data is None:
            raise UnknownImageError(image_id)
        return data

    async def add_question(self, image_id: str, question: str, answer: str) -> QuestionRecord:
        """Append under WATCH of the image, so a question never outlives its image."""
        import redis.asyncio as redis

        image_id = _checked_id(image_id)
        record = QuestionRecord(question=question, answer=answer, asked_at=_now())
        item = record.model_dump_json()
        image_key = self.image_key(image_id)
        with self._redis_errors():
            async with self._write_lock:
                for _ in range(10):
                    async with self._writer.pipeline(transaction=True) as pipe:
                        await pipe.watch(image_key)
                        if not await pipe.exists(image_key):
                            raise UnknownImageError(image_id)
                        pipe.multi()
                        pipe.rpush(self.questions_key(image_id), item)
                        try:
                            await pipe.execute()
                        except redis.WatchError:
                            continue
                        break
                else:
                    raise StoreUnavailableError("the image changed during every write attempt")
                await self._confirm_durable(lambda: self._forget_question(image_id, item))
        return record

    async def questions(self, image_id: str) -> list[QuestionRecord]:
        """The questions asked about ``image_id``, oldest first."""
        image_id = _checked_id(image_id)
        with self._redis_errors():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.exists(self.image_key(image_id))
                pipe.lrange(self.questions_key(image_id), 0, -1)
                exists, items = await pipe.execute()
        if not exists:
            raise UnknownImageError(image_id)
        return [QuestionRecord.model_validate_json(item) for item in items]

    async def history(self, offset: int = 0, limit: int = 20) -> HistoryPage:
        """A page of the index, newest first, then those images' records and questions."""
        _check_page(offset, limit)
        with self._redis_errors():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.zcard(self.index_key())
                pipe.zrevrange(self.index_key(), offset, offset + limit - 1)
                total, raw_ids = await pipe.execute()
            ids = [raw.decode() for raw in raw_ids]
            async with self._client.pipeline(transaction=True) as pipe:
                for image_id in ids:
                    pipe.hget(self.image_key(image_id), "record")
                    pipe.lrange(self.questions_key(image_id), 0, -1)
                replies = await pipe.execute() if ids else []
        items = []
        for raw_record, raw_questions in zip(replies[::2], replies[1::2], strict=True):
            if raw_record is None:  # removed between the two reads
                continue
            record = StoredImage.model_validate_json(raw_record)
            questions = [QuestionRecord.model_validate_json(item) for item in raw_questions]
            items.append(ImageHistory(**record.model_dump(), questions=questions))
        return HistoryPage(total=total, offset=offset, limit=limit, items=items)

    async def ping(self) -> bool:
        """Whether Redis answers PING within the timeout."""
        try:
            return bool(await self._client.ping())
        except Exception:
            return False

    async def close(self) -> None:
        """Close both clients' connections."""
        await self._client.aclose()
        await self._writer.aclose()

    async def _confirm_durable(self, rollback: Callable[[], Awaitable[None]]) -> None:
        """With ``require_fsync``, return only once the last write is in the append-only file on
        disk; otherwise undo it with ``rollback`` and raise."""
        import redis.asyncio as redis

        if not self.require_fsync:
            return
        try:
            try:
                # A timeout of 0 would make WAITAOF block forever.
                timeout_ms = max(1, int(self._timeout_s * 1000))
                numlocal, _ = await self._writer.execute_command("WAITAOF", 1, 0, timeout_ms)
            except redis.ResponseError as error:
                message = str(error).lower()
                if "unknown command" in message:
                    await self._confirm_fsync_always()
                    return
                if "appendonly" in message:
                    raise StoreNotDurableError(NOT_DURABLE_MESSAGE) from error
                raise
            if numlocal < 1:
                raise StoreUnavailableError(
                    f"Redis did not confirm the write on disk within {self._timeout_s} s"
                )
        except Exception:
            # Cancellation is left alone: the write stays, whole, and may yet reach the disk.
            await self._undo(rollback)
            raise

    async def _confirm_fsync_always(self) -> None:
        """Redis before 7.2 has no WAITAOF; with ``appendfsync always`` it fsyncs the AOF
        before it replies to a write, so the EXEC reply already meant "on disk"."""
        import redis.asyncio as redis

        try:
            settings = await self._writer.config_get("append*")
        except redis.ResponseError as error:  # CONFIG renamed or denied by an ACL
            raise StoreNotDurableError(
                f"{NOT_DURABLE_MESSAGE} (this Redis has no WAITAOF, which needs Redis 7.2, and "
                f"refuses CONFIG GET: {error})"
            ) from error
        if settings.get("appendonly") != "yes":
            raise StoreNotDurableError(NOT_DURABLE_MESSAGE)
        if settings.get("appendfsync") != "always":
            raise StoreNotDurableError(
                "the Redis image store cannot confirm writes on disk: this Redis has no WAITAOF "
                "(needs Redis 7.2 or later) and its appendfsync is "
                f"{settings.get('appendfsync')!r}; upgrade Redis, set 'appendfsync always', or "
                "set store.require_fsync to false"
            )

    async def _undo(self, rollback: Callable[[], Awaitable[None]]) -> None:
        try:
            await rollback()
        except Exception as error:
            logger.warning("could not roll back an unconfirmed image store write: %r", error)

    async def _forget_image(self, image_id: str) -> None:
        async with self._writer.pipeline(transaction=True) as pipe:
            pipe.delete(self.image_key(image_id), self.questions_key(image_id))
            pipe.zrem(self.index_key(), image_id)
            await pipe.execute()

    async def _forget_question(self, image_id: str, item: str) -> None:
        await self._writer.lrem(self.questions_key(image_id), -1, item)

    @contextlib.contextmanager
    def _redis_errors(self) -> Iterator[None]:
        """Redis and socket failures as a 503 the client may retry; the store's own errors
        pass through."""
        import redis.asyncio as redis

        try:
            yield
        except ServiceError:
            raise
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            raise StoreUnavailableError(
                f"the image store (Redis at {self._address}) is unreachable: {error}"
            ) from error
        except redis.RedisError as error:
            raise StoreUnavailableError(
                f"the image store (Redis at {self._address}) failed: {error}"
            ) from error
