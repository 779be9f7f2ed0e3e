"""The default image store: ``vlgraph.sqlite3`` plus one file per image under ``images/`` in
the data folder, shared safely by the processes of one machine (see :mod:`vlgraph.image_store`
for the interface and its guarantees)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from vlgraph.image_store import (
    DB_FILE_NAME,
    IMAGES_FOLDER,
    ORPHAN_AGE_S,
    SCHEMA_VERSION,
    SQLITE_BUSY_TIMEOUT_S,
    HistoryPage,
    ImageHistory,
    ImageStore,
    ImageVector,
    IndexCensus,
    NewImage,
    QuestionRecord,
    StoredImage,
    StoreUnavailableError,
    UnknownImageError,
    check_page,
    checked_image_id,
    content_digest,
    file_extension,
    from_micros,
    logger,
    to_micros,
    utc_now,
)
from vlgraph.vector_index import IndexedVector

_IMAGES_TABLE = """CREATE TABLE IF NOT EXISTS {name} (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        image_id TEXT NOT NULL UNIQUE,
        filename TEXT,
        media_type TEXT NOT NULL,
        caption TEXT NOT NULL,
        created_us INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('upload', 'generated', 'indexed')),
        prompt TEXT,
        file_name TEXT NOT NULL,
        model TEXT,
        digest TEXT
    )"""

_SCHEMA = (
    _IMAGES_TABLE.format(name="images"),
    "CREATE INDEX IF NOT EXISTS images_newest ON images (created_us DESC, seq DESC)",
    "CREATE INDEX IF NOT EXISTS images_by_digest ON images (digest) WHERE kind = 'indexed'",
    """CREATE TABLE IF NOT EXISTS questions (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        image_id TEXT NOT NULL REFERENCES images (image_id) ON DELETE CASCADE,
        question TEXT NOT NULL,
        answer TEXT NOT NULL,
        asked_us INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS questions_of_image ON questions (image_id, seq)",
    # One search vector per image. seq grows with every vector written (a rebuild deletes
    # and inserts), and writers are serialized, so a reader that has seen every seq up to N
    # has seen every vector committed before N's.
    """CREATE TABLE IF NOT EXISTS vectors (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        image_id TEXT NOT NULL UNIQUE REFERENCES images (image_id) ON DELETE CASCADE,
        fingerprint TEXT NOT NULL,
        vector BLOB NOT NULL
    )""",
)

#: Schema version 1 -> 2: images gain the indexed kind (a CHECK constraint, so the table is
#: rebuilt, as SQLite's ALTER TABLE cannot change one), the generating model and the digest
#: of the bytes (left empty for older images).
_MIGRATE_1_TO_2 = (
    _IMAGES_TABLE.format(name="images_v2"),
    "INSERT INTO images_v2 (seq, image_id, filename, media_type, caption, created_us, kind, "
    "prompt, file_name) SELECT seq, image_id, filename, media_type, caption, created_us, kind, "
    "prompt, file_name FROM images",
    "DROP TABLE images",
    "ALTER TABLE images_v2 RENAME TO images",
)

_IMAGE_COLUMNS = "image_id, filename, media_type, caption, created_us, kind, prompt, model"


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

    async def add_images(self, images: Sequence[NewImage]) -> list[StoredImage]:
        """Write the files (each fsynced and renamed into place, then the folder fsynced
        once), then commit the rows and their vectors in one transaction; a failed commit
        removes the files again."""
        records = [image.record() for image in images]
        await self._in_thread(self._add_images, records, list(images))
        return records

    async def set_vector(self, image_id: str, vector: ImageVector) -> None:
        """Replace the vector of ``image_id`` under a new sequence number."""
        image_id = checked_image_id(image_id)
        await self._in_thread(self._set_vector, image_id, vector)

    async def vectors_since(self, after_seq: int, limit: int) -> list[IndexedVector]:
        """Vectors past ``after_seq``, lowest sequence first, with their images' properties."""
        return await self._in_thread(self._vectors_since, after_seq, limit)

    async def indexed_digests(self, digests: Sequence[str]) -> set[str]:
        """Those of ``digests`` an indexed file has, in one query."""
        wanted = list(dict.fromkeys(digests))
        return await self._in_thread(self._indexed_digests, wanted) if wanted else set()

    async def images_without_vector(self, fingerprint: str, limit: int) -> list[str]:
        """Oldest first, the images a rebuild for ``fingerprint`` still has to encode."""
        return await self._in_thread(self._images_without_vector, fingerprint, limit)

    async def census(self) -> IndexCensus:
        """Images without a vector and vectors per fingerprint, in one snapshot."""
        return await self._in_thread(self._census)

    async def get_image(self, image_id: str) -> StoredImage:
        """The record of ``image_id``."""
        image_id = checked_image_id(image_id)
        return await self._in_thread(self._get_image, image_id)

    async def get_images(self, image_ids: Sequence[str]) -> dict[str, StoredImage]:
        """The records of the existing ones of ``image_ids``, in one query."""
        wanted = [image_id for image_id in image_ids if isinstance(image_id, str)]
        return await self._in_thread(self._get_images, wanted) if wanted else {}

    async def read_image(self, image_id: str) -> bytes:
        """The stored bytes of ``image_id``."""
        image_id = checked_image_id(image_id)
        return await self._in_thread(self._read_image, image_id)

    async def add_question(self, image_id: str, question: str, answer: str) -> QuestionRecord:
        """Append a question in its own committed transaction."""
        image_id = checked_image_id(image_id)
        record = QuestionRecord(question=question, answer=answer, asked_at=utc_now())
        await self._in_thread(self._add_question, image_id, record)
        return record

    async def questions(self, image_id: str) -> list[QuestionRecord]:
        """The questions asked about ``image_id``, oldest first."""
        image_id = checked_image_id(image_id)
        return await self._in_thread(self._questions, image_id)

    async def history(self, offset: int = 0, limit: int = 20) -> HistoryPage:
        """A page of stored images, newest first, read in one consistent snapshot."""
        check_page(offset, limit)
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
            # Rebuilding a table drops the old one, which would cascade to its questions.
            connection.execute("PRAGMA foreign_keys = OFF")
            connection.execute("BEGIN IMMEDIATE")
            try:
                version = connection.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise StoreUnavailableError(
                        f"the image store {self.db_path} has schema version {version}; this "
                        f"vlgraph reads version {SCHEMA_VERSION} (downgrade is not supported)"
                    )
                if version == 1:
                    for statement in _MIGRATE_1_TO_2:
                        connection.execute(statement)
                # Later schema versions migrate here, one step per version.
                for statement in _SCHEMA:
                    connection.execute(statement)
                broken = connection.execute("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise StoreUnavailableError(
                        f"the image store {self.db_path} has {len(broken)} rows whose image is "
                        "missing after its schema upgrade; restore it from a backup"
                    )
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

    def _add_images(self, records: list[StoredImage], images: list[NewImage]) -> None:
        self._ensure_ready()
        paths = [
            self.images_dir / (record.image_id + file_extension(record.media_type))
            for record in records
        ]
        committed = False
        try:
            for path, image in zip(paths, images, strict=True):
                _write_file_synced(path, bytes(image.data))
            _fsync_dir(self.images_dir)
            with self._connection() as connection:
                connection.execute("BEGIN IMMEDIATE")
                try:
                    for record, path, image in zip(records, paths, images, strict=True):
                        digest = content_digest(image.data)
                        self._insert_image_row(connection, record, path.name, digest)
                        if image.vector is not None:
                            _insert_vector(connection, record.image_id, image.vector)
                    connection.execute("COMMIT")
                    committed = True
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
        finally:
            if not committed:
                for path in paths:
                    path.unlink(missing_ok=True)

    def _insert_image_row(
        self, connection: sqlite3.Connection, record: StoredImage, file_name: str, digest: str
    ) -> None:
        connection.execute(
            f"INSERT INTO images ({_IMAGE_COLUMNS}, file_name, digest) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.image_id,
                record.filename,
                record.media_type,
                record.caption,
                to_micros(record.created_at),
                record.kind,
                record.prompt,
                record.model,
                file_name,
                digest,
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

    def _get_images(self, image_ids: list[str]) -> dict[str, StoredImage]:
        marks = ", ".join("?" * len(image_ids))
        with self._connection() as connection:
            rows = connection.execute(
                f"SELECT {_IMAGE_COLUMNS} FROM images WHERE image_id IN ({marks})", image_ids
            ).fetchall()
        return {row[0]: _image_from_row(row) for row in rows}

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
                    (image_id, record.question, record.answer, to_micros(record.asked_at)),
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

    def _set_vector(self, image_id: str, vector: ImageVector) -> None:
        with self._connection() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                known = connection.execute(
                    "SELECT 1 FROM images WHERE image_id = ?", (image_id,)
                ).fetchone()
                if known is None:
                    raise UnknownImageError(image_id)
                connection.execute("DELETE FROM vectors WHERE image_id = ?", (image_id,))
                _insert_vector(connection, image_id, vector)
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise

    def _vectors_since(self, after_seq: int, limit: int) -> list[IndexedVector]:
        with self._connection() as connection:
            rows = connection.execute(
                "SELECT v.seq, v.image_id, v.vector, v.fingerprint, i.kind, i.created_us, "
                "i.model FROM vectors v JOIN images i ON i.image_id = v.image_id "
                "WHERE v.seq > ? ORDER BY v.seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [
            IndexedVector(
                seq=seq,
                image_id=image_id,
                vector=ImageVector.values_from(blob),
                fingerprint=fingerprint,
                kind=kind,
                created_us=created_us,
                model=model,
            )
            for seq, image_id, blob, fingerprint, kind, created_us, model in rows
        ]

    def _indexed_digests(self, digests: list[str]) -> set[str]:
        marks = ", ".join("?" * len(digests))
        with self._connection() as connection:
            rows = connection.execute(
                f"SELECT digest FROM images WHERE kind = 'indexed' AND digest IN ({marks})",
                digests,
            ).fetchall()
        return {row[0] for row in rows}

    def _images_without_vector(self, fingerprint: str, limit: int) -> list[str]:
        with self._connection() as connection:
            rows = connection.execute(
                "SELECT i.image_id FROM images i LEFT JOIN vectors v ON v.image_id = i.image_id "
                "WHERE v.fingerprint IS NULL OR v.fingerprint != ? ORDER BY i.seq LIMIT ?",
                (fingerprint, limit),
            ).fetchall()
        return [row[0] for row in rows]

    def _census(self) -> IndexCensus:
        with self._connection() as connection:
            connection.execute("BEGIN")
            try:
                images = connection.execute("SELECT COUNT(*) FROM images").fetchone()[0]
                counts = dict(
                    connection.execute(
                        "SELECT fingerprint, COUNT(*) FROM vectors GROUP BY fingerprint"
                    ).fetchall()
                )
            finally:
                connection.execute("COMMIT")
        return IndexCensus(
            images=images, without_vector=images - sum(counts.values()), by_fingerprint=counts
        )

    def _ping(self) -> None:
        with self._connection() as connection:
            connection.execute("SELECT 1").fetchone()


def _insert_vector(connection: sqlite3.Connection, image_id: str, vector: ImageVector) -> None:
    connection.execute(
        "INSERT INTO vectors (image_id, fingerprint, vector) VALUES (?, ?, ?)",
        (image_id, vector.fingerprint, vector.to_bytes()),
    )


def _image_from_row(row: tuple[Any, ...]) -> StoredImage:
    image_id, filename, media_type, caption, created_us, kind, prompt, model = row
    return StoredImage(
        image_id=image_id,
        filename=filename,
        media_type=media_type,
        caption=caption,
        created_at=from_micros(created_us),
        kind=kind,
        prompt=prompt,
        model=model,
    )


def _question_from_row(row: tuple[Any, ...]) -> QuestionRecord:
    question, answer, asked_us = row
    return QuestionRecord(question=question, answer=answer, asked_at=from_micros(asked_us))


def _write_file_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that after a crash it is either whole or absent (once
    the folder is fsynced): a temp file in the same folder, fsynced, renamed into place."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
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
    except BaseException:
        temp.unlink(missing_ok=True)
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
