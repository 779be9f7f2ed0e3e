"""The image store (visual question answering with uploads) on both backends: SQLite in a temp
folder, Redis on a real redis-server. No Ray. Tests are plain functions that run small
coroutines with asyncio.run."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from tests.support.common import REPO_ROOT, RedisServer, free_port
from vlgraph import image_store, sqlite_image_store
from vlgraph.cache import RedisCache
from vlgraph.config import StoreConfig
from vlgraph.errors import BadRequestError, ServiceError
from vlgraph.image_store import (
    HistoryPage,
    ImageStore,
    ImageVector,
    NewImage,
    QuestionRecord,
    StoredImage,
    StoreNotDurableError,
    StoreUnavailableError,
    UnknownImageError,
)
from vlgraph.redis_image_store import RedisImageStore
from vlgraph.sqlite_image_store import SqliteImageStore
from vlgraph.store_backends import make_image_store

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
JPEG = b"\xff\xd8\xff\xe0" + b"jpeg body" * 50

StoreFactory = Callable[[], ImageStore]


def run(coroutine: Awaitable[Any]) -> Any:
    """Run one coroutine on a fresh event loop."""
    return asyncio.run(coroutine)  # type: ignore[arg-type]


async def using(factory: StoreFactory, action: Callable[[ImageStore], Awaitable[Any]]) -> Any:
    """Open a store, run ``action`` on it, close it (connections belong to one event loop)."""
    store = factory()
    try:
        return await action(store)
    finally:
        await store.close()


def sqlite_config(folder: Path) -> StoreConfig:
    """A sqlite store in ``folder``."""
    return StoreConfig(backend="sqlite", data_dir=folder)


def redis_config(port: int, namespace: str, **fields: Any) -> StoreConfig:
    """A Redis store on a local port; no fsync unless asked (the shared server has no AOF)."""
    values: dict[str, Any] = {
        "backend": "redis",
        "redis_host": "127.0.0.1",
        "redis_port": port,
        "redis_db": 0,
        "namespace": namespace,
        "require_fsync": False,
        "timeout_s": 1.0,
        **fields,
    }
    return StoreConfig(**values)


def namespace_keys(port: int, namespace: str) -> list[bytes]:
    """Every key under ``namespace:`` on the server."""
    client = redis.Redis(port=port)
    try:
        return sorted(client.scan_iter(match=f"{namespace}:*"))
    finally:
        client.close()


@pytest.fixture
def namespace(redis_server: RedisServer) -> Iterator[str]:
    """A namespace of this test's own; its keys are removed afterwards (nothing else is)."""
    name = f"test-store-{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.Redis(port=redis_server.port)
    try:
        keys = list(client.scan_iter(match=f"{name}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(params=["sqlite", "redis"])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> StoreConfig:
    """The configuration of a fresh, empty store on each backend."""
    if request.param == "sqlite":
        return sqlite_config(tmp_path / "data")
    server: RedisServer = request.getfixturevalue("redis_server")
    return redis_config(server.port, request.getfixturevalue("namespace"))


@pytest.fixture
def factory(config: StoreConfig) -> StoreFactory:
    """Makes store objects on the same data (each ``asyncio.run`` needs its own)."""
    return lambda: make_image_store(config)


@pytest.fixture
def aof_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test only, with ``appendonly yes`` and ``appendfsync always``."""
    server = RedisServer(aof_folder=tmp_path / "redis-aof")
    server.start()
    yield server
    server.stop()


def assert_unknown(error: pytest.ExceptionInfo[UnknownImageError]) -> None:
    """The error is the store's 404."""
    assert error.value.status == 404
    assert error.value.code == "unknown_image_id"


def id_calls(store: ImageStore, image_id: str) -> list[Callable[[], Awaitable[Any]]]:
    """Every store method that takes an image id, bound to ``image_id``."""
    return [
        lambda: store.get_image(image_id),
        lambda: store.read_image(image_id),
        lambda: store.questions(image_id),
        lambda: store.add_question(image_id, "anything?", "no"),
    ]


# ------------------------------------------------------------------------------------------
# Shared behaviour, both backends


def test_factory_picks_the_backend(config: StoreConfig) -> None:
    expected = SqliteImageStore if config.backend == "sqlite" else RedisImageStore
    store = make_image_store(config)
    assert isinstance(store, expected)
    run(store.close())


def test_round_trip(factory: StoreFactory) -> None:
    async def scenario(store: ImageStore) -> None:
        before = datetime.now(UTC)
        png = await store.add_image(PNG, "image/png", "a red square", filename="red.png")
        jpeg = await store.add_image(
            JPEG, "image/jpeg", "a cat", kind="generated", prompt="a cat on a mat"
        )
        assert len(png.image_id) == 32 and png.image_id != jpeg.image_id
        assert int(png.image_id, 16) >= 0
        assert png.created_at.tzinfo is not None and png.created_at.utcoffset() == timedelta(0)
        assert before <= png.created_at <= jpeg.created_at <= datetime.now(UTC)
        assert (png.kind, png.prompt, png.filename) == ("upload", None, "red.png")
        assert (jpeg.kind, jpeg.prompt, jpeg.filename) == ("generated", "a cat on a mat", None)

        assert await store.get_image(png.image_id) == png
        assert await store.get_image(jpeg.image_id) == jpeg
        assert await store.read_image(png.image_id) == PNG
        assert await store.read_image(jpeg.image_id) == JPEG

        assert await store.questions(png.image_id) == []
        asked = [
            await store.add_question(png.image_id, f"question {index}?", f"answer {index}")
            for index in range(3)
        ]
        assert all(isinstance(record, QuestionRecord) for record in asked)
        assert [record.asked_at.utcoffset() for record in asked] == [timedelta(0)] * 3
        assert await store.questions(png.image_id) == asked
        assert await store.questions(jpeg.image_id) == []

        page = await store.history()
        assert isinstance(page, HistoryPage)
        assert (page.total, page.offset, page.limit) == (2, 0, 20)
        assert [item.image_id for item in page.items] == [jpeg.image_id, png.image_id]
        assert page.items[1].questions == asked
        assert page.items[0].questions == []
        assert StoredImage(**page.items[1].model_dump(exclude={"questions"})) == png
        assert await store.ping() is True

    run(using(factory, scenario))


def test_history_pages_newest_first(factory: StoreFactory) -> None:
    async def scenario(store: ImageStore) -> None:
        added = []
        for index in range(7):
            image = await store.add_image(PNG, "image/png", f"caption {index}")
            await store.add_question(image.image_id, f"how many? {index}", str(index))
            added.append(image.image_id)
        newest_first = added[::-1]

        first = await store.history(offset=0, limit=3)
        second = await store.history(offset=3, limit=3)
        last = await store.history(offset=6, limit=3)
        beyond = await store.history(offset=50, limit=3)
        assert [page.total for page in (first, second, last, beyond)] == [7] * 4
        assert [item.image_id for item in first.items] == newest_first[:3]
        assert [item.image_id for item in second.items] == newest_first[3:6]
        assert [item.image_id for item in last.items] == newest_first[6:]
        assert beyond.items == [] and (beyond.offset, beyond.limit) == (50, 3)
        for item in first.items + second.items + last.items:
            index = added.index(item.image_id)
            assert item.caption == f"caption {index}"
            assert [record.answer for record in item.questions] == [str(index)]

        for offset, limit in [(-1, 5), (0, 0), (0, image_store.MAX_HISTORY_LIMIT + 1)]:
            with pytest.raises(BadRequestError):
                await store.history(offset=offset, limit=limit)

    run(using(factory, scenario))


MALFORMED_IDS = [
    "../x",
    "../../../../etc/passwd",
    "",
    "*",
    "0" * 31,
    "0" * 33,
    "A" * 32,
    "g" * 32,
    "0" * 32 + "\n",
    "0" * 16 + "/" + "0" * 15,
    "0" * 16 + "\x00" + "0" * 15,
    str(uuid.uuid4()),  # dashed form
    "x" * 10_000,
]


@pytest.mark.parametrize("image_id", [uuid.uuid4().hex, *MALFORMED_IDS])
def test_unknown_and_malformed_ids_are_404(factory: StoreFactory, image_id: str) -> None:
    async def scenario(store: ImageStore) -> None:
        known = await store.add_image(PNG, "image/png", "kept")
        for call in id_calls(store, image_id):
            with pytest.raises(UnknownImageError) as error:
                await call()
            assert_unknown(error)
            assert len(error.value.message) < 120
        page = await store.history()
        assert [item.image_id for item in page.items] == [known.image_id]
        assert page.items[0].questions == []

    run(using(factory, scenario))


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_malformed_ids_never_reach_the_backend(backend: str, tmp_path: Path) -> None:
    """Against a broken backend a malformed id is still a 404, not a 503: it was refused before
    any file path or Redis key was built from it."""
    if backend == "sqlite":
        (tmp_path / "a-file").write_text("not a folder")
        config = sqlite_config(tmp_path / "a-file")
    else:
        config = redis_config(free_port(), "vlgraph-store", timeout_s=0.5)

    async def scenario(store: ImageStore) -> None:
        with pytest.raises(StoreUnavailableError):
            await store.get_image(uuid.uuid4().hex)
        for image_id in MALFORMED_IDS:
            for call in id_calls(store, image_id):
                with pytest.raises(UnknownImageError) as error:
                    await call()
                assert_unknown(error)

    run(using(lambda: make_image_store(config), scenario))


def test_non_string_ids_are_404(factory: StoreFactory) -> None:
    async def scenario(store: ImageStore) -> None:
        for image_id in (None, 42, b"0" * 32):
            with pytest.raises(UnknownImageError):
                await store.get_image(image_id)  # type: ignore[arg-type]

    run(using(factory, scenario))


def test_a_new_store_object_sees_everything(factory: StoreFactory) -> None:
    async def write(store: ImageStore) -> tuple[StoredImage, QuestionRecord]:
        image = await store.add_image(PNG, "image/png", "persisted", filename="p.png")
        return image, await store.add_question(image.image_id, "still there?", "yes")

    image, question = run(using(factory, write))

    async def read(store: ImageStore) -> None:
        assert await store.get_image(image.image_id) == image
        assert await store.read_image(image.image_id) == PNG
        assert await store.questions(image.image_id) == [question]
        page = await store.history()
        assert page.total == 1 and page.items[0].questions == [question]

    run(using(factory, read))


def test_concurrent_writes_from_one_store(factory: StoreFactory) -> None:
    async def scenario(store: ImageStore) -> None:
        images = await asyncio.gather(
            *(store.add_image(PNG + bytes([index]), "image/png", str(index)) for index in range(12))
        )
        await asyncio.gather(
            *(store.add_question(image.image_id, "q", image.caption) for image in images)
        )
        page = await store.history(limit=50)
        assert page.total == 12
        assert {item.image_id for item in page.items} == {image.image_id for image in images}
        for item in page.items:
            assert [record.answer for record in item.questions] == [item.caption]
            assert await store.read_image(item.image_id) == PNG + bytes([int(item.caption)])

    run(using(factory, scenario))


# ------------------------------------------------------------------------------------------
# SQLite


def test_sqlite_layout(tmp_path: Path) -> None:
    folder = tmp_path / "not" / "yet" / "there"
    store = SqliteImageStore(folder)
    assert not folder.exists()  # nothing happens before the first call

    image = run(store.add_image(PNG, "image/png", "layout"))
    other = run(store.add_image(b"RIFF....WEBPVP8 ", "image/webp", "webp"))
    odd = run(store.add_image(b"whatever", "application/x-custom", "unknown type"))
    assert sorted(path.name for path in (folder / "images").iterdir()) == sorted(
        [f"{image.image_id}.png", f"{other.image_id}.webp", f"{odd.image_id}.bin"]
    )
    assert (folder / "images" / f"{image.image_id}.png").read_bytes() == PNG
    connection = sqlite3.connect(folder / "vlgraph.sqlite3")
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 2
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        assert {"images", "questions", "vectors"} <= tables
    finally:
        connection.close()


def test_sqlite_sweeps_old_orphan_files_at_start(tmp_path: Path) -> None:
    """A process killed between writing a file and committing its row leaves the file; the
    next store on the folder removes it once it is old enough to be nobody's write."""
    kept = run(SqliteImageStore(tmp_path).add_image(PNG, "image/png", "kept"))
    images = tmp_path / "images"
    old_orphan, young_orphan = images / ("a" * 32 + ".png"), images / ("b" * 32 + ".png")
    for orphan in (old_orphan, young_orphan):
        orphan.write_bytes(PNG)
    long_ago = time.time() - image_store.ORPHAN_AGE_S - 60
    os.utime(old_orphan, (long_ago, long_ago))
    os.utime(images / f"{kept.image_id}.png", (long_ago, long_ago))

    reopened = SqliteImageStore(tmp_path)
    assert run(reopened.read_image(kept.image_id)) == PNG
    assert not old_orphan.exists() and young_orphan.exists()
    assert (images / f"{kept.image_id}.png").exists()


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    run(SqliteImageStore(tmp_path).add_image(PNG, "image/png", "v1"))
    connection = sqlite3.connect(tmp_path / "vlgraph.sqlite3")
    connection.execute("PRAGMA user_version = 3")
    connection.close()
    store = SqliteImageStore(tmp_path)
    with pytest.raises(StoreUnavailableError, match="schema version 3"):
        run(store.history())
    assert run(store.ping()) is False


def test_sqlite_failed_insert_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteImageStore(tmp_path)
    kept = run(store.add_image(PNG, "image/png", "before"))

    def broken_insert(*args: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(SqliteImageStore, "_insert_image_row", broken_insert)
    with pytest.raises(StoreUnavailableError) as error:
        run(store.add_image(JPEG, "image/jpeg", "lost"))
    assert (error.value.status, error.value.code) == (503, "store_unavailable")
    assert [path.name for path in (tmp_path / "images").iterdir()] == [f"{kept.image_id}.png"]
    monkeypatch.undo()
    page = run(store.history())
    assert [item.image_id for item in page.items] == [kept.image_id]


def test_sqlite_locked_database_leaves_no_file(tmp_path: Path) -> None:
    store = SqliteImageStore(tmp_path, busy_timeout_s=0.2)
    run(store.ping())  # creates the schema
    blocker = sqlite3.connect(tmp_path / "vlgraph.sqlite3", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailableError, match="locked"):
            run(store.add_image(PNG, "image/png", "blocked"))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert list((tmp_path / "images").iterdir()) == []
    assert run(store.history()).total == 0


def test_sqlite_failed_file_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteImageStore(tmp_path)
    run(store.ping())

    def broken_fsync(folder: Path) -> None:
        raise OSError(28, "No space left on device")

    # Fails after the rename into place: the renamed file must go too.
    monkeypatch.setattr(sqlite_image_store, "_fsync_dir", broken_fsync)
    with pytest.raises(StoreUnavailableError, match="No space left"):
        run(store.add_image(PNG, "image/png", "lost"))
    monkeypatch.undo()
    assert list((tmp_path / "images").iterdir()) == []
    assert run(store.history()).total == 0


def test_sqlite_two_store_objects_write_concurrently(tmp_path: Path) -> None:
    async def scenario() -> None:
        first, second = SqliteImageStore(tmp_path), SqliteImageStore(tmp_path)

        async def write(store: SqliteImageStore, tag: str) -> list[str]:
            ids = []
            for index in range(8):
                image = await store.add_image(PNG, "image/png", f"{tag}{index}")
                await store.add_question(image.image_id, "who?", tag)
                ids.append(image.image_id)
            return ids

        batches = await asyncio.gather(
            *(write(store, tag) for store in (first, second) for tag in ("a", "b"))
        )
        written = {image_id for batch in batches for image_id in batch}
        assert len(written) == 32
        for store in (first, second):
            page = await store.history(limit=50)
            assert page.total == 32
            assert {item.image_id for item in page.items} == written
            assert all(len(item.questions) == 1 for item in page.items)

    run(scenario())


WRITER = """
import asyncio, sys
from pathlib import Path
from vlgraph.sqlite_image_store import SqliteImageStore

async def main(folder, count, tag):
    store = SqliteImageStore(Path(folder))
    for index in range(count):
        image = await store.add_image(b"png" * 100, "image/png", f"{tag}{index}")
        await store.add_question(image.image_id, "which process?", tag)

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
"""


def test_sqlite_two_processes_share_a_fresh_folder(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(folder), "20", tag],
            cwd=REPO_ROOT,
            stderr=subprocess.PIPE,
        )
        for tag in ("a", "b")
    ]
    for writer in writers:
        _, stderr = writer.communicate(timeout=60)
        assert writer.returncode == 0, stderr.decode()
    page = run(SqliteImageStore(folder).history(limit=100))
    assert page.total == 40
    for tag in ("a", "b"):
        mine = [item for item in page.items if item.caption.startswith(tag)]
        assert len(mine) == 20
        assert all([record.answer for record in item.questions] == [tag] for item in mine)
    assert len(list((folder / "images").iterdir())) == 40


# ------------------------------------------------------------------------------------------
# Redis


def test_redis_key_layout(redis_server: RedisServer, namespace: str) -> None:
    factory = lambda: make_image_store(redis_config(redis_server.port, namespace))  # noqa: E731

    async def scenario(store: ImageStore) -> StoredImage:
        image = await store.add_image(PNG, "image/png", "keys")
        await store.add_question(image.image_id, "q", "a")
        return image

    image = run(using(factory, scenario))
    prefix = f"{namespace}:v1:"
    assert namespace_keys(redis_server.port, namespace) == sorted(
        [
            f"{prefix}image:{image.image_id}".encode(),
            f"{prefix}images".encode(),
            f"{prefix}questions:{image.image_id}".encode(),
        ]
    )
    client = redis.Redis(port=redis_server.port)
    try:
        assert client.hget(f"{prefix}image:{image.image_id}", "data") == PNG
        assert client.zrange(f"{prefix}images", 0, -1) == [image.image_id.encode()]
    finally:
        client.close()


def test_redis_cache_reset_leaves_stored_images(redis_server: RedisServer) -> None:
    # Database 1: the real reset pattern runs here without touching other tests' cache keys.
    config = StoreConfig(
        backend="redis",
        redis_host="127.0.0.1",
        redis_port=redis_server.port,
        redis_db=1,
        require_fsync=False,
    )
    assert config.namespace == "vlgraph-store"

    async def scenario() -> None:
        store = make_image_store(config)
        assert isinstance(store, RedisImageStore)
        cache = RedisCache("127.0.0.1", redis_server.port, 1, 1.0)
        image = await store.add_image(PNG, "image/png", "survives the cache reset")
        try:
            await cache.set("vlgraph:v1:img:abc:blip:0", b"{}", 60)
            assert await cache.delete_prefix("vlgraph:") >= 1
            assert await cache.get("vlgraph:v1:img:abc:blip:0") is None
            assert await store.read_image(image.image_id) == PNG
            assert (await store.get_image(image.image_id)).caption == "survives the cache reset"
        finally:
            client = redis.asyncio.Redis(port=redis_server.port, db=1)
            await client.delete(store.image_key(image.image_id))
            await client.zrem(store.index_key(), image.image_id)
            await client.aclose()
            await store.close()

    run(scenario())


def test_redis_aof_survives_a_killed_server(aof_server: RedisServer) -> None:
    config = redis_config(aof_server.port, "vlgraph-store", require_fsync=True)

    async def write(store: ImageStore) -> tuple[StoredImage, QuestionRecord]:
        image = await store.add_image(PNG, "image/png", "on disk", filename="disk.png")
        return image, await store.add_question(image.image_id, "durable?", "yes")

    image, question = run(using(lambda: make_image_store(config), write))
    aof_server.kill()
    aof_server.start()

    async def read(store: ImageStore) -> None:
        assert await store.get_image(image.image_id) == image
        assert await store.read_image(image.image_id) == PNG
        assert await store.questions(image.image_id) == [question]
        assert (await store.history()).total == 1

    run(using(lambda: make_image_store(config), read))


def test_redis_require_fsync_without_aof_is_refused_whole(
    redis_server: RedisServer, namespace: str
) -> None:
    durable = lambda: make_image_store(  # noqa: E731
        redis_config(redis_server.port, namespace, require_fsync=True)
    )
    relaxed = lambda: make_image_store(redis_config(redis_server.port, namespace))  # noqa: E731

    with pytest.raises(StoreNotDurableError) as error:
        run(using(durable, lambda store: store.add_image(PNG, "image/png", "refused")))
    assert (error.value.status, error.value.code) == (503, "store_not_durable")
    assert "appendonly yes" in error.value.message
    assert "require_fsync" in error.value.message
    assert namespace_keys(redis_server.port, namespace) == []

    # A refused write takes its search vector with it; only the sequence counter moves on.
    with pytest.raises(StoreNotDurableError):
        run(using(durable, lambda store: store.add_image(PNG, "image/png", "v", vector=vector(1))))
    assert run(using(relaxed, lambda store: store.vectors_since(0, 10))) == []
    census = run(using(relaxed, lambda store: store.census()))
    assert (census.images, census.by_fingerprint) == (0, {})

    image = run(using(relaxed, lambda store: store.add_image(PNG, "image/png", "kept")))
    with pytest.raises(StoreNotDurableError):
        run(using(durable, lambda store: store.add_question(image.image_id, "q?", "a")))
    assert run(using(relaxed, lambda store: store.questions(image.image_id))) == []


class FakeWaitaof:
    """Answers WAITAOF as a given Redis would; every other command goes to the real one."""

    def __init__(self, store: RedisImageStore, answer: list[int] | Exception) -> None:
        self.real = store._writer.execute_command
        self.answer = answer
        self.calls: list[tuple[Any, ...]] = []

    async def __call__(self, *args: Any, **options: Any) -> Any:
        if args[0] != "WAITAOF":
            return await self.real(*args, **options)
        self.calls.append(args)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ([1, 0], None),
        ([0, 0], StoreUnavailableError),
        (
            redis.ResponseError(
                "WAITAOF cannot be used when numlocal is set but appendonly is disabled."
            ),
            StoreNotDurableError,
        ),
    ],
    ids=["fsynced", "timed-out", "appendonly-off"],
)
def test_redis_waitaof_answers(
    redis_server: RedisServer,
    namespace: str,
    answer: list[int] | Exception,
    expected: type[ServiceError] | None,
) -> None:
    """Redis 7.2's WAITAOF, simulated (the test machine's Redis may predate it)."""
    config = redis_config(redis_server.port, namespace, require_fsync=True, timeout_s=0.5)

    async def scenario() -> None:
        store = make_image_store(config)
        assert isinstance(store, RedisImageStore)
        fake = FakeWaitaof(store, answer)
        store._writer.execute_command = fake  # type: ignore[method-assign]
        try:
            if expected is None:
                image = await store.add_image(PNG, "image/png", "confirmed")
                await store.add_question(image.image_id, "q", "a")
                assert len(await store.questions(image.image_id)) == 1
                assert fake.calls == [("WAITAOF", 1, 0, 500)] * 2
            else:
                with pytest.raises(expected) as error:
                    await store.add_image(PNG, "image/png", "unconfirmed")
                assert error.value.status == 503
                assert (await store.history()).total == 0
        finally:
            await store.close()

    run(scenario())
    if expected is not None:
        assert namespace_keys(redis_server.port, namespace) == []


@pytest.mark.parametrize("fsync", ["always", "everysec", "no-aof"])
def test_redis_without_waitaof_needs_appendfsync_always(
    redis_server: RedisServer, aof_server: RedisServer, fsync: str
) -> None:
    """Redis before 7.2 answers WAITAOF with "unknown command": the store then accepts only a
    server that fsyncs before it replies (appendonly yes, appendfsync always)."""
    port = redis_server.port if fsync == "no-aof" else aof_server.port
    if fsync == "everysec":
        client = redis.Redis(port=port)
        client.config_set("appendfsync", "everysec")
        client.close()
    config = redis_config(port, f"test-store-{uuid.uuid4().hex[:12]}", require_fsync=True)
    old_redis = redis.ResponseError("unknown command 'WAITAOF', with args beginning with: '1'")

    async def scenario() -> None:
        store = make_image_store(config)
        assert isinstance(store, RedisImageStore)
        store._writer.execute_command = FakeWaitaof(store, old_redis)  # type: ignore[method-assign]
        try:
            if fsync == "always":
                image = await store.add_image(PNG, "image/png", "fsynced before the reply")
                assert (await store.get_image(image.image_id)).caption.startswith("fsynced")
                return
            with pytest.raises(StoreNotDurableError) as error:
                await store.add_image(PNG, "image/png", "refused")
            assert error.value.status == 503
            expected = "appendfsync always" if fsync == "everysec" else "appendonly yes"
            assert expected in error.value.message
            assert (await store.history()).total == 0
        finally:
            await store.close()

    run(scenario())
    if fsync != "always":
        assert namespace_keys(port, config.namespace) == []


def test_redis_down_is_a_quick_503(tmp_path: Path) -> None:
    config = redis_config(free_port(), "vlgraph-store", timeout_s=0.5)

    async def scenario(store: ImageStore) -> None:
        assert await store.ping() is False
        for call in (
            lambda: store.add_image(PNG, "image/png", "nowhere"),
            lambda: store.get_image(uuid.uuid4().hex),
            lambda: store.read_image(uuid.uuid4().hex),
            lambda: store.add_question(uuid.uuid4().hex, "q", "a"),
            lambda: store.questions(uuid.uuid4().hex),
            lambda: store.history(),
        ):
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError) as error:
                await call()
            assert time.monotonic() - started < 3
            assert (error.value.status, error.value.code) == (503, "store_unavailable")
            assert "unreachable" in error.value.message
            assert error.value.retry_after_s >= 1

    run(using(lambda: make_image_store(config), scenario))


def test_redis_store_recovers_when_the_server_returns(aof_server: RedisServer) -> None:
    config = redis_config(aof_server.port, "vlgraph-store", require_fsync=True, timeout_s=0.5)

    async def scenario(store: ImageStore) -> None:
        image = await store.add_image(PNG, "image/png", "before the outage")
        aof_server.stop()
        with pytest.raises(StoreUnavailableError):
            await store.add_question(image.image_id, "down?", "yes")
        assert await store.ping() is False
        aof_server.start()
        await store.add_question(image.image_id, "back?", "yes")
        assert [record.answer for record in await store.questions(image.image_id)] == ["yes"]

    run(using(lambda: make_image_store(config), scenario))


# --------------------------------------------------------------------------------------------
# Search vectors


def vector(seed: int, fingerprint: str = "encoder-a", dimension: int = 8) -> ImageVector:
    values = np.random.default_rng(seed).standard_normal(dimension).astype(np.float32)
    return ImageVector(values / np.linalg.norm(values), fingerprint)


def test_vectors_are_written_with_their_records_in_sequence(config: StoreConfig) -> None:
    async def scenario(store: ImageStore) -> None:
        assert await store.vectors_since(0, 10) == []
        plain = await store.add_image(PNG, "image/png", "no vector")
        first = await store.add_image(PNG, "image/png", "a", vector=vector(1))
        drawn = await store.add_image(
            JPEG, "image/jpeg", "b", kind="generated", prompt="p", model="sd", vector=vector(2)
        )
        listed = await store.vectors_since(0, 10)
        assert [item.image_id for item in listed] == [first.image_id, drawn.image_id]
        assert listed[0].seq < listed[1].seq
        assert np.array_equal(listed[0].vector, vector(1).values)
        assert listed[1].vector.dtype == np.float32
        assert (listed[1].kind, listed[1].model, listed[1].fingerprint) == (
            "generated",
            "sd",
            "encoder-a",
        )
        assert listed[1].created_us == image_store.to_micros(drawn.created_at)
        assert (await store.get_image(drawn.image_id)).model == "sd"
        assert await store.vectors_since(listed[0].seq, 10) == listed[1:]
        assert await store.vectors_since(0, 1) == listed[:1]
        census = await store.census()
        assert (census.images, census.without_vector) == (3, 1)
        assert census.by_fingerprint == {"encoder-a": 2}
        assert plain.image_id not in {item.image_id for item in listed}

    run(using(lambda: make_image_store(config), scenario))


def test_a_rewritten_vector_moves_to_a_new_sequence_number(config: StoreConfig) -> None:
    async def scenario(store: ImageStore) -> None:
        image = await store.add_image(PNG, "image/png", "a", vector=vector(1))
        other = await store.add_image(PNG, "image/png", "b", vector=vector(2))
        (before, _) = await store.vectors_since(0, 10)
        await store.set_vector(image.image_id, vector(3, fingerprint="encoder-b"))
        listed = await store.vectors_since(0, 10)
        assert [item.image_id for item in listed] == [other.image_id, image.image_id]
        assert listed[1].seq > before.seq and listed[1].fingerprint == "encoder-b"
        assert np.array_equal(listed[1].vector, vector(3).values)
        census = await store.census()
        assert census.by_fingerprint == {"encoder-a": 1, "encoder-b": 1}
        with pytest.raises(UnknownImageError):
            await store.set_vector(uuid.uuid4().hex, vector(4))

    run(using(lambda: make_image_store(config), scenario))


def test_concurrent_writers_hand_out_sequence_numbers_in_commit_order(
    config: StoreConfig,
) -> None:
    """A reader that has seen sequence N has seen every vector committed before it: the
    numbers of concurrent writes from two stores (two replicas) come back strictly rising and
    complete."""

    async def scenario(store: ImageStore) -> None:
        twin = make_image_store(config)
        try:
            written = await asyncio.gather(
                *(
                    (store if n % 2 else twin).add_image(
                        PNG, "image/png", f"n{n}", vector=vector(n)
                    )
                    for n in range(30)
                )
            )
            listed = await store.vectors_since(0, 100)
            seqs = [item.seq for item in listed]
            assert seqs == sorted(set(seqs))
            assert {item.image_id for item in listed} == {image.image_id for image in written}
        finally:
            await twin.close()

    run(using(lambda: make_image_store(config), scenario))


_V1_SCHEMA = (
    """CREATE TABLE images (
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
    "CREATE INDEX images_newest ON images (created_us DESC, seq DESC)",
    """CREATE TABLE questions (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        image_id TEXT NOT NULL REFERENCES images (image_id) ON DELETE CASCADE,
        question TEXT NOT NULL,
        answer TEXT NOT NULL,
        asked_us INTEGER NOT NULL
    )""",
    "CREATE INDEX questions_of_image ON questions (image_id, seq)",
    "PRAGMA user_version = 1",
)


def test_a_version_1_store_is_upgraded_with_its_images_and_questions(tmp_path: Path) -> None:
    """A store written before search (schema 1) keeps every image and question; its images
    have no vector until a rebuild gives them one, and it takes the new kind."""
    image_id = uuid.uuid4().hex
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / f"{image_id}.png").write_bytes(PNG)
    connection = sqlite3.connect(tmp_path / "vlgraph.sqlite3")
    for statement in _V1_SCHEMA:
        connection.execute(statement)
    connection.execute(
        "INSERT INTO images (image_id, filename, media_type, caption, created_us, kind, "
        "prompt, file_name) VALUES (?, 'cat.png', 'image/png', 'old', 5, 'upload', NULL, ?)",
        (image_id, f"{image_id}.png"),
    )
    connection.execute(
        "INSERT INTO questions (image_id, question, answer, asked_us) VALUES (?, 'q', 'a', 6)",
        (image_id,),
    )
    connection.commit()
    connection.close()

    store = SqliteImageStore(tmp_path)
    page = run(store.history())
    assert [(item.image_id, item.caption, item.model) for item in page.items] == [
        (image_id, "old", None)
    ]
    assert [q.question for q in page.items[0].questions] == ["q"]
    assert run(store.read_image(image_id)) == PNG
    census = run(store.census())
    assert (census.images, census.without_vector, census.by_fingerprint) == (1, 1, {})
    indexed = run(store.add_image(PNG, "image/png", "file", kind="indexed", vector=vector(1)))
    run(store.set_vector(image_id, vector(2)))
    assert [item.image_id for item in run(store.vectors_since(0, 10))] == [
        indexed.image_id,
        image_id,
    ]
    connection = sqlite3.connect(tmp_path / "vlgraph.sqlite3")
    assert connection.execute("PRAGMA user_version").fetchone()[0] == 2
    connection.close()


def test_indexed_files_are_known_by_digest_and_rebuilds_find_what_is_left(
    config: StoreConfig,
) -> None:
    async def scenario(store: ImageStore) -> None:
        indexed = await store.add_image(JPEG, "image/jpeg", "", kind="indexed", vector=vector(1))
        await store.add_image(PNG, "image/png", "an upload of other bytes", vector=vector(2))
        bare = await store.add_image(PNG, "image/png", "no vector")
        digest = image_store.content_digest(JPEG)
        assert await store.indexed_digests([digest, "0" * 64]) == {digest}
        assert await store.indexed_digests([image_store.content_digest(PNG)]) == set()
        assert await store.images_without_vector("encoder-a", 10) == [bare.image_id]
        stale = await store.images_without_vector("encoder-b", 10)
        assert len(stale) == 3 and stale[0] == indexed.image_id
        assert await store.images_without_vector("encoder-b", 1) == [indexed.image_id]

    run(using(lambda: make_image_store(config), scenario))


def test_sqlite_a_failed_vector_write_stores_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The vector is part of the record's transaction: when it cannot be written, neither
    the record nor the file stays."""
    store = SqliteImageStore(tmp_path)

    def broken_vector(*args: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(sqlite_image_store, "_insert_vector", broken_vector)
    with pytest.raises(StoreUnavailableError):
        run(store.add_image(PNG, "image/png", "lost", vector=vector(1)))
    monkeypatch.undo()
    assert run(store.history()).total == 0
    assert list((tmp_path / "images").iterdir()) == []
    assert run(store.census()).images == 0


def indexed_file(number: int, with_vector: bool = True) -> NewImage:
    """A file as ``vlgraph-index`` stores it: distinct bytes, kind indexed."""
    return NewImage(
        PNG + number.to_bytes(4, "big"),
        "image/png",
        "",
        filename=f"folder/{number}.png",
        kind="indexed",
        vector=vector(number) if with_vector else None,
    )


def test_a_batch_is_stored_in_one_write_in_order(config: StoreConfig) -> None:
    """add_images stores every image of a batch with its vector, in the order given: the
    vectors come back in that order, the digests are known, the bytes read back."""
    batch = [indexed_file(number, with_vector=number != 2) for number in range(5)]

    async def scenario(store: ImageStore) -> None:
        records = await store.add_images(batch)
        assert [record.filename for record in records] == [image.filename for image in batch]
        assert len({record.image_id for record in records}) == 5
        listed = await store.vectors_since(0, 10)
        assert [item.image_id for item in listed] == [
            record.image_id for n, record in enumerate(records) if n != 2
        ]
        assert [item.seq for item in listed] == sorted(item.seq for item in listed)
        for item, number in zip(listed, [0, 1, 3, 4], strict=True):
            assert np.array_equal(item.vector, vector(number).values)
        digests = [image_store.content_digest(image.data) for image in batch]
        assert await store.indexed_digests(digests) == set(digests)
        for record, image in zip(records, batch, strict=True):
            assert await store.read_image(record.image_id) == image.data
            assert (await store.get_image(record.image_id)).kind == "indexed"
        census = await store.census()
        assert (census.images, census.without_vector) == (5, 1)
        assert await store.add_images([]) == []

    run(using(lambda: make_image_store(config), scenario))


def test_sqlite_a_batch_whose_last_vector_fails_stores_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One transaction for the batch: a failure on its last image leaves no record and no
    file of any of them."""
    store = SqliteImageStore(tmp_path)
    run(store.add_image(PNG, "image/png", "kept"))
    real = sqlite_image_store._insert_vector
    written: list[str] = []

    def failing_third(connection: sqlite3.Connection, image_id: str, value: ImageVector) -> None:
        written.append(image_id)
        if len(written) == 3:
            raise sqlite3.OperationalError("disk I/O error")
        real(connection, image_id, value)

    monkeypatch.setattr(sqlite_image_store, "_insert_vector", failing_third)
    with pytest.raises(StoreUnavailableError):
        run(store.add_images([indexed_file(number) for number in range(3)]))
    monkeypatch.undo()
    assert len(written) == 3
    assert run(store.census()).images == 1
    assert run(store.vectors_since(0, 10)) == []
    assert len(list((tmp_path / "images").iterdir())) == 1


def test_redis_an_unconfirmed_batch_is_rolled_back_whole(
    redis_server: RedisServer, namespace: str
) -> None:
    """When Redis does not confirm the batch on disk, every image of it is removed again,
    with its vector, digest and fingerprint count."""
    config = redis_config(redis_server.port, namespace, require_fsync=True, timeout_s=0.5)

    async def scenario() -> None:
        store = make_image_store(config)
        assert isinstance(store, RedisImageStore)
        store._writer.execute_command = FakeWaitaof(store, [0, 0])  # type: ignore[method-assign]
        try:
            with pytest.raises(StoreUnavailableError):
                await store.add_images([indexed_file(number) for number in range(4)])
            census = await store.census()
            assert (census.images, census.by_fingerprint) == (0, {})
        finally:
            await store.close()

    run(scenario())
    # Only the counters stay: the sequence number and the (now zero) fingerprint count.
    counters = (b":vector_seq", b":fingerprints")
    keys = namespace_keys(redis_server.port, namespace)
    assert [key for key in keys if not key.endswith(counters)] == []
