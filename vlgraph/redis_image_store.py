"""The shared image store: records, bytes and questions in a Redis server every ingress
replica reaches (see :mod:`vlgraph.image_store` for the key layout and guarantees)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

from vlgraph.errors import ServiceError
from vlgraph.image_store import (
    IMAGE_ID,
    KEY_VERSION,
    NOT_DURABLE_MESSAGE,
    HistoryPage,
    ImageHistory,
    ImageStore,
    ImageVector,
    IndexCensus,
    NewImage,
    QuestionRecord,
    StoredImage,
    StoreNotDurableError,
    StoreUnavailableError,
    UnknownImageError,
    check_page,
    checked_image_id,
    content_digest,
    logger,
    to_micros,
    utc_now,
)
from vlgraph.vector_index import IndexedVector

#: Writes an image's vector under the next sequence number, atomically, so that sequence order
#: is commit order. KEYS: sequence counter, vectors sorted set, image hash, fingerprint counts.
#: ARGV: image id, vector bytes, fingerprint. Answers the sequence number, or -1 when the image
#: does not exist.
_WRITE_VECTOR = """
if redis.call('EXISTS', KEYS[3]) == 0 then return -1 end
local old = redis.call('HGET', KEYS[3], 'fingerprint')
if old then redis.call('HINCRBY', KEYS[4], old, -1) end
local seq = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[3], 'vector', ARGV[2], 'fingerprint', ARGV[3], 'vector_seq', seq)
redis.call('ZADD', KEYS[2], seq, ARGV[1])
redis.call('HINCRBY', KEYS[4], ARGV[3], 1)
return seq
"""


_VECTOR_FIELDS = ("vector", "fingerprint", "vector_seq", "record")


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
        self._write_vector = self._writer.register_script(_WRITE_VECTOR)

    def image_key(self, image_id: str) -> str:
        """The hash holding one image's record and bytes."""
        return f"{self._prefix}image:{image_id}"

    def questions_key(self, image_id: str) -> str:
        """The list of one image's questions."""
        return f"{self._prefix}questions:{image_id}"

    def index_key(self) -> str:
        """The sorted set of every image id, scored by creation time."""
        return f"{self._prefix}images"

    def _digests_key(self) -> str:
        return f"{self._prefix}indexed_digests"

    def _vector_keys(self, image_id: str) -> list[str]:
        return [
            f"{self._prefix}vector_seq",
            f"{self._prefix}vectors",
            self.image_key(image_id),
            f"{self._prefix}fingerprints",
        ]

    async def add_images(self, images: Sequence[NewImage]) -> list[StoredImage]:
        """Records, bytes, vectors and index entries in one transaction, then confirmed on
        disk (or every one of them rolled back)."""
        records = [image.record() for image in images]
        digests = [content_digest(image.data) for image in images]
        with self._redis_errors():
            async with self._write_lock:
                async with self._writer.pipeline(transaction=True) as pipe:
                    for record, digest, image in zip(records, digests, images, strict=True):
                        image_id = record.image_id
                        pipe.hset(
                            self.image_key(image_id),
                            mapping={"record": record.model_dump_json(), "data": bytes(image.data)},
                        )
                        pipe.zadd(self.index_key(), {image_id: to_micros(record.created_at)})
                        if image.kind == "indexed":
                            pipe.hset(self._digests_key(), digest, image_id)
                        if image.vector is not None:
                            await self._queue_vector(pipe, image_id, image.vector)
                    await pipe.execute()

                async def forget_all() -> None:
                    for record, digest in zip(records, digests, strict=True):
                        await self._forget_image(record.image_id, digest)

                await self._confirm_durable(forget_all)
        return records

    async def set_vector(self, image_id: str, vector: ImageVector) -> None:
        """Replace the vector of ``image_id`` under a new sequence number."""
        image_id = checked_image_id(image_id)
        with self._redis_errors():
            async with self._write_lock:
                async with self._writer.pipeline(transaction=True) as pipe:
                    await self._queue_vector(pipe, image_id, vector)
                    (seq,) = await pipe.execute()
                if seq == -1:
                    raise UnknownImageError(image_id)
                # A replaced vector is not rolled back: the old one is gone either way, and
                # the rebuild that wrote it writes it again.
                await self._confirm_durable(_nothing)

    async def vectors_since(self, after_seq: int, limit: int) -> list[IndexedVector]:
        """Vectors past ``after_seq`` from the sorted set of sequence numbers, then each
        image's vector and record."""
        keys = self._vector_keys("")
        with self._redis_errors():
            listed = await self._client.zrangebyscore(
                keys[1], f"({after_seq}", "+inf", start=0, num=limit, withscores=True
            )
            ids = [raw.decode() for raw, _ in listed]
            async with self._client.pipeline(transaction=False) as pipe:
                for image_id in ids:
                    pipe.hmget(
                        self.image_key(image_id), "vector", "fingerprint", "vector_seq", "record"
                    )
                replies = await pipe.execute() if ids else []
        vectors = []
        for (raw_id, score), (blob, fingerprint, seq, raw_record) in zip(
            listed, replies, strict=True
        ):
            # Rewritten since it was listed: it comes again under its new sequence number.
            if blob is None or seq is None or int(seq) != int(score):
                continue
            record = StoredImage.model_validate_json(raw_record)
            vectors.append(
                IndexedVector(
                    seq=int(seq),
                    image_id=raw_id.decode(),
                    vector=ImageVector.values_from(blob),
                    fingerprint=fingerprint.decode(),
                    kind=record.kind,
                    created_us=to_micros(record.created_at),
                    model=record.model,
                )
            )
        return vectors

    async def indexed_digests(self, digests: Sequence[str]) -> set[str]:
        """Those of ``digests`` an indexed file has, from the digest hash."""
        wanted = list(dict.fromkeys(digests))
        if not wanted:
            return set()
        with self._redis_errors():
            found = await self._client.hmget(self._digests_key(), wanted)
        return {digest for digest, image_id in zip(wanted, found, strict=True) if image_id}

    async def images_without_vector(self, fingerprint: str, limit: int) -> list[str]:
        """Oldest first: the image index read a thousand at a time, each image's fingerprint
        checked, until ``limit`` are found (a full pass over the images at worst)."""
        found: list[str] = []
        start = 0
        with self._redis_errors():
            while len(found) < limit:
                ids = await self._client.zrange(self.index_key(), start, start + 999)
                if not ids:
                    break
                async with self._client.pipeline(transaction=False) as pipe:
                    for raw in ids:
                        pipe.hget(self.image_key(raw.decode()), "fingerprint")
                    prints = await pipe.execute()
                found += [
                    raw.decode()
                    for raw, held in zip(ids, prints, strict=True)
                    if held is None or held.decode() != fingerprint
                ]
                start += len(ids)
        return found[:limit]

    async def census(self) -> IndexCensus:
        """Images and vectors per fingerprint, from their counters."""
        keys = self._vector_keys("")
        with self._redis_errors():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.zcard(self.index_key())
                pipe.hgetall(keys[3])
                images, counts = await pipe.execute()
        by_fingerprint = {k.decode(): int(v) for k, v in counts.items() if int(v) > 0}
        return IndexCensus(
            images=images,
            without_vector=images - sum(by_fingerprint.values()),
            by_fingerprint=by_fingerprint,
        )

    async def _queue_vector(self, pipe: Any, image_id: str, vector: ImageVector) -> None:
        await self._write_vector(
            keys=self._vector_keys(image_id),
            args=[image_id, vector.to_bytes(), vector.fingerprint],
            client=pipe,
        )

    async def get_image(self, image_id: str) -> StoredImage:
        """The record of ``image_id``."""
        image_id = checked_image_id(image_id)
        with self._redis_errors():
            raw = await self._client.hget(self.image_key(image_id), "record")
        if raw is None:
            raise UnknownImageError(image_id)
        return StoredImage.model_validate_json(raw)

    async def get_images(self, image_ids: Sequence[str]) -> dict[str, StoredImage]:
        """The records of the existing ones of ``image_ids``, in one pipeline."""
        wanted = [i for i in image_ids if isinstance(i, str) and IMAGE_ID.fullmatch(i)]
        if not wanted:
            return {}
        with self._redis_errors():
            async with self._client.pipeline(transaction=False) as pipe:
                for image_id in wanted:
                    pipe.hget(self.image_key(image_id), "record")
                replies = await pipe.execute()
        return {
            image_id: StoredImage.model_validate_json(raw)
            for image_id, raw in zip(wanted, replies, strict=True)
            if raw is not None
        }

    async def read_image(self, image_id: str) -> bytes:
        """The stored bytes of ``image_id``."""
        image_id = checked_image_id(image_id)
        with self._redis_errors():
            data = await self._client.hget(self.image_key(image_id), "data")
        if data is None:
            raise UnknownImageError(image_id)
        return data

    async def add_question(self, image_id: str, question: str, answer: str) -> QuestionRecord:
        """Append under WATCH of the image, so a question never outlives its image."""
        import redis.asyncio as redis

        image_id = checked_image_id(image_id)
        record = QuestionRecord(question=question, answer=answer, asked_at=utc_now())
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
        image_id = checked_image_id(image_id)
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
        check_page(offset, limit)
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

    async def _forget_image(self, image_id: str, digest: str) -> None:
        keys = self._vector_keys(image_id)
        fingerprint = await self._writer.hget(keys[2], "fingerprint")
        # Only this write's own entry: an earlier copy of the file keeps its own.
        own_digest = await self._writer.hget(self._digests_key(), digest) == image_id.encode()
        async with self._writer.pipeline(transaction=True) as pipe:
            pipe.delete(self.image_key(image_id), self.questions_key(image_id))
            pipe.zrem(self.index_key(), image_id)
            pipe.zrem(keys[1], image_id)
            if own_digest:
                pipe.hdel(self._digests_key(), digest)
            if fingerprint is not None:
                pipe.hincrby(keys[3], fingerprint.decode(), -1)
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


async def _nothing() -> None:
    """A rollback with nothing to undo."""
