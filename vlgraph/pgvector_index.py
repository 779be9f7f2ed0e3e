"""The shared search engine: PostgreSQL with pgvector, one table of vectors that every ingress
replica reads and writes (``search.engine: pgvector``).

The table is created on first use, under an advisory lock so that replicas starting together
do not race: one row per image (its newest vector wins, by store sequence number), an HNSW
index over the vectors (cosine) and a b-tree on the sequence number. Its vector dimension is
learned from the first vector added, and an emptied table (:meth:`PgVectorIndex.clear`) takes
the dimension of the next one, so that a rebuild with another encoder works.

Every result is scored by one SQL expression, ``1 - cosine distance`` rounded to
:data:`SCORE_DECIMALS`, whichever path found it, so that a page boundary sent back in a
cursor compares equal to the score computed again. A filter that admits at most
``exact_below`` rows is searched exactly (scored and sorted in full); a wider one goes through
the HNSW index, widening its candidate list and falling back to an exact scan when the
filter starves it.

Every failure to reach or query the server is an :class:`IndexUnavailableError` naming the
engine and the cause, never the connection string's password, and no call waits much longer
than ``timeout_s`` for a server that is down or hung.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from vlgraph.vector_index import (
    IndexedVector,
    IndexUnavailableError,
    Ranked,
    SearchFilter,
    VectorIndex,
)

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

    from vlgraph.search_config import SearchConfig

T = TypeVar("T")

#: Scores are rounded to this many decimals (as the embedded engine's are).
SCORE_DECIMALS = 6
#: pgvector's largest ``hnsw.ef_search``: an HNSW scan returns this many candidates at most.
MAX_EF_SEARCH = 1000
#: Connections one index object keeps open at most.
POOL_SIZE = 8
#: Rows an :meth:`PgVectorIndex.add` sends per step. Each row goes into the HNSW graph, which
#: takes milliseconds, so a large batch may take longer than ``timeout_s`` in all; each step
#: must not.
ADD_STEP = 100
#: Serializes creating the extension and the table across every process using the server.
_SCHEMA_LOCK = "vlgraph.pgvector_index.schema"


class PgVectorIndex(VectorIndex):
    """Nearest-neighbour search in PostgreSQL with pgvector (HNSW, cosine), shared by every
    replica that names the same server and table."""

    def __init__(self, config: SearchConfig):
        if config.pgvector_dsn is None:
            raise ValueError("search.engine pgvector needs search.pgvector_dsn")
        self._config = config
        self._dsn = config.pgvector_dsn.get_secret_value()
        self._table = config.pgvector_table
        self._target, self._password = _describe(self._dsn)
        self._pool: AsyncConnectionPool | None = None
        self._pool_lock = asyncio.Lock()
        #: The vector column's dimension, once the table is known to exist.
        self._dimension: int | None = None
        #: Why the last connection attempt failed (the pool only says that none came).
        self._connect_error: BaseException | None = None
        #: Calls given up at their deadline, still winding down (kept from the collector).
        self._abandoned: set[asyncio.Task] = set()

    async def last_seq(self) -> int:
        """The highest sequence number in the table (0 when empty or not created yet)."""

        async def work(conn: AsyncConnection, _: Progress) -> int:
            if await self._known_dimension(conn) is None:
                return 0
            cursor = await conn.execute(self._sql("SELECT coalesce(max(seq), 0) FROM {table}"))
            row = await cursor.fetchone()
            return int(row[0]) if row else 0

        return await self._use("reading the last sequence number", work)

    async def add(self, vectors: Sequence[IndexedVector]) -> None:
        """Upsert ``vectors`` by image id, in one transaction; a row is replaced only by a
        vector with a larger sequence number, so that adding an old vector again (or late)
        changes nothing."""
        newest: dict[str, IndexedVector] = {}
        for item in vectors:
            held = newest.get(item.image_id)
            if held is None or item.seq > held.seq:
                newest[item.image_id] = item
        if not newest:
            return
        # In image id order, so that two replicas adding overlapping batches lock rows in the
        # same order and cannot deadlock.
        rows = [newest[image_id] for image_id in sorted(newest)]
        matrices = [np.asarray(item.vector, dtype=np.float32).ravel() for item in rows]
        dimensions = sorted({len(vector) for vector in matrices})
        if len(dimensions) > 1:
            raise IndexUnavailableError(
                f"pgvector search index: one batch holds vectors of {dimensions} dimensions"
            )
        dimension = dimensions[0]
        statement = self._sql(
            "INSERT INTO {table} "
            "(image_id, seq, fingerprint, kind, created_us, model, embedding) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (image_id) DO UPDATE SET seq = EXCLUDED.seq, "
            "fingerprint = EXCLUDED.fingerprint, kind = EXCLUDED.kind, "
            "created_us = EXCLUDED.created_us, model = EXCLUDED.model, "
            "embedding = EXCLUDED.embedding "
            "WHERE {table}.seq < EXCLUDED.seq"
        )
        params = [
            (item.image_id, item.seq, item.fingerprint, item.kind, item.created_us, item.model, v)
            for item, v in zip(rows, matrices, strict=True)
        ]

        async def work(conn: AsyncConnection, progress: Progress) -> None:
            await self._ensure_table(conn, dimension)
            async with conn.transaction(), conn.cursor() as cursor:
                for start in range(0, len(params), ADD_STEP):
                    await cursor.executemany(statement, params[start : start + ADD_STEP])
                    progress()

        await self._use(f"adding {len(rows)} vectors", work)

    async def nearest(
        self,
        query: np.ndarray,
        search_filter: SearchFilter,
        count: int,
        after: Ranked | None = None,
        min_score: float = -1.0,
    ) -> list[Ranked]:
        """The best ``count`` admitted rows after ``after``: exact when the filter admits at
        most ``exact_below`` rows, else through the HNSW index (``hnsw.ef_search`` widened up
        to :data:`MAX_EF_SEARCH`), exact again when the index cannot find enough."""
        if count <= 0:
            return []
        vector = np.asarray(query, dtype=np.float32).ravel()
        where, params = _filter_sql(search_filter)
        params["q"] = vector

        async def work(conn: AsyncConnection, _: Progress) -> list[Ranked]:
            dimension = await self._known_dimension(conn)
            if dimension is None:
                return []
            if len(vector) != dimension:
                dimension = await self._table_dimension(conn)
                if dimension is not None and len(vector) != dimension:
                    raise IndexUnavailableError(
                        f"pgvector search index: a query of {len(vector)} dimensions cannot "
                        f"search vectors of {dimension}"
                    )
            admitted = await self._count_up_to(conn, where, params, self._config.exact_below + 1)
            if admitted == 0:
                return []
            if admitted <= self._config.exact_below:
                return await self._exact(conn, where, params, count, after, min_score)
            ef_search = min(MAX_EF_SEARCH, max(self._config.hnsw_expansion_search, count))
            while True:
                found, complete = await self._approximate(
                    conn, where, params, ef_search, count, after, min_score
                )
                if complete:
                    return found
                if ef_search >= MAX_EF_SEARCH:
                    return await self._exact(conn, where, params, count, after, min_score)
                ef_search = MAX_EF_SEARCH

        return await self._use("searching", work)

    async def fingerprints(self) -> dict[str, int]:
        """How many rows each encoder fingerprint has."""

        async def work(conn: AsyncConnection, _: Progress) -> dict[str, int]:
            if await self._known_dimension(conn) is None:
                return {}
            cursor = await conn.execute(
                self._sql("SELECT fingerprint, count(*) FROM {table} GROUP BY fingerprint")
            )
            return {str(name): int(number) for name, number in await cursor.fetchall()}

        return await self._use("counting fingerprints", work)

    async def clear(self) -> None:
        """Delete every row; the table and its indexes stay."""

        async def work(conn: AsyncConnection, _: Progress) -> None:
            if await self._table_dimension(conn) is not None:
                await conn.execute(self._sql("TRUNCATE {table}"))

        await self._use("clearing", work)

    async def ping(self) -> bool:
        """Whether the server answers ``SELECT 1`` within ``timeout_s`` (never raises)."""

        async def work(conn: AsyncConnection, _: Progress) -> bool:
            await conn.execute("SELECT 1")
            return True

        try:
            return await self._use("pinging", work)
        except Exception:
            return False

    async def close(self) -> None:
        """Close every connection (nothing to persist: the server keeps the rows)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(Exception):
                await pool.close(timeout=self._config.timeout_s)

    # Queries.

    async def _exact(
        self,
        conn: AsyncConnection,
        where: Any,
        params: dict[str, Any],
        count: int,
        after: Ranked | None,
        min_score: float,
    ) -> list[Ranked]:
        """Score every admitted row and keep the best ``count`` past ``after``: ordered by
        the score itself (not the distance operator), so no index can make it approximate."""
        from psycopg import sql

        conditions = [sql.SQL("score >= %(min_score)s")]
        params = {**params, "min_score": float(min_score), "count": count}
        if after is not None:
            conditions.append(
                sql.SQL(
                    "(score < %(after_score)s OR (score = %(after_score)s "
                    'AND image_id COLLATE "C" > %(after_id)s))'
                )
            )
            params.update(after_score=float(after.score), after_id=after.image_id)
        statement = self._sql(
            "SELECT image_id, score FROM (SELECT image_id, {score} AS score FROM {table} "
            "WHERE {where}) AS scored WHERE {conditions} "
            'ORDER BY score DESC, image_id COLLATE "C" LIMIT %(count)s',
            where=where,
            conditions=sql.SQL(" AND ").join(conditions),
        )
        cursor = await conn.execute(statement, params)
        return [Ranked(float(score), str(image_id)) for image_id, score in await cursor.fetchall()]

    async def _approximate(
        self,
        conn: AsyncConnection,
        where: Any,
        params: dict[str, Any],
        ef_search: int,
        count: int,
        after: Ranked | None,
        min_score: float,
    ) -> tuple[list[Ranked], bool]:
        """The HNSW index's ``ef_search`` nearest admitted rows, ranked, past ``after``; and
        whether they are the whole answer (``count`` of them, or the candidates already went
        below ``min_score``, so a wider search would only find worse ones)."""
        from psycopg import sql

        statement = self._sql(
            "SELECT image_id, {score} FROM {table} WHERE {where} "
            "ORDER BY embedding <=> %(q)s LIMIT {limit}",
            where=where,
            # A constant, so that the planner sees how few rows the index scan must give.
            limit=sql.Literal(ef_search),
        )
        async with conn.transaction():
            await conn.execute(
                sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(ef_search))
            )
            cursor = await conn.execute(statement, params)
            candidates = [Ranked(float(s), str(i)) for i, s in await cursor.fetchall()]
        found = sorted(
            (c for c in candidates if c.score >= min_score and c.comes_after(after)),
            key=lambda c: (-c.score, c.image_id),
        )
        below = any(c.score < min_score for c in candidates)
        return found[:count], len(found) >= count or below

    async def _count_up_to(
        self, conn: AsyncConnection, where: Any, params: dict[str, Any], limit: int
    ) -> int:
        """How many rows the filter admits, counting no further than ``limit``."""
        statement = self._sql(
            "SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {where} LIMIT %(limit)s) AS c",
            where=where,
        )
        cursor = await conn.execute(statement, {**params, "limit": limit})
        row = await cursor.fetchone()
        return int(row[0]) if row else 0

    # The table.

    def _sql(self, template: str, **parts: Any) -> Any:
        """``template`` with ``{table}``, ``{score}`` and ``parts`` filled in."""
        from psycopg import sql

        score = sql.SQL("round((1 - (embedding <=> %(q)s))::numeric, {decimals})::float8").format(
            decimals=sql.Literal(SCORE_DECIMALS)
        )
        fill = {"table": sql.Identifier(self._table), "score": score, **parts}
        used = {key: value for key, value in fill.items() if "{" + key + "}" in template}
        return sql.SQL(template).format(**used)

    async def _table_dimension(self, conn: AsyncConnection) -> int | None:
        """The vector column's dimension as the server has it; None without the table."""
        cursor = await conn.execute(
            "SELECT atttypmod FROM pg_attribute WHERE attrelid = to_regclass(%s) "
            "AND attname = 'embedding' AND NOT attisdropped",
            (self._table,),
        )
        row = await cursor.fetchone()
        self._dimension = int(row[0]) if row and int(row[0]) > 0 else None
        return self._dimension

    async def _known_dimension(self, conn: AsyncConnection) -> int | None:
        if self._dimension is None:
            return await self._table_dimension(conn)
        return self._dimension

    async def _ensure_table(self, conn: AsyncConnection, dimension: int) -> None:
        """Create the table for vectors of ``dimension`` unless it exists; give an empty
        table of another dimension this one; refuse one that holds other vectors."""
        if self._dimension == dimension:
            return
        from psycopg import sql

        config = self._config
        hnsw = _index_name(self._table, "embedding_hnsw")
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (_SCHEMA_LOCK,)
            )
            held = await self._table_dimension(conn)
            if held == dimension:
                return
            if held is not None:
                cursor = await conn.execute(self._sql("SELECT EXISTS (SELECT 1 FROM {table})"))
                row = await cursor.fetchone()
                if row and row[0]:
                    raise IndexUnavailableError(
                        f"pgvector search index: vectors of {dimension} dimensions cannot join "
                        f"the table {self._table}, which holds vectors of {held} "
                        "(rebuild the index)"
                    )
                await conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(hnsw)))
                await conn.execute(
                    self._sql(
                        "ALTER TABLE {table} ALTER COLUMN embedding TYPE vector({dimension})",
                        dimension=sql.Literal(dimension),
                    )
                )
            await conn.execute(
                self._sql(
                    "CREATE TABLE IF NOT EXISTS {table} ("
                    "image_id text PRIMARY KEY, seq bigint NOT NULL, fingerprint text NOT NULL, "
                    "kind text NOT NULL, created_us bigint NOT NULL, model text NULL, "
                    "embedding vector({dimension}) NOT NULL)",
                    dimension=sql.Literal(dimension),
                )
            )
            await conn.execute(
                self._sql(
                    "CREATE INDEX IF NOT EXISTS {name} ON {table} USING hnsw "
                    "(embedding vector_cosine_ops) WITH (m = {m}, ef_construction = {ef})",
                    name=sql.Identifier(hnsw),
                    m=sql.Literal(config.hnsw_connectivity),
                    ef=sql.Literal(config.hnsw_expansion_add),
                )
            )
            await conn.execute(
                self._sql(
                    "CREATE INDEX IF NOT EXISTS {name} ON {table} (seq)",
                    name=sql.Identifier(_index_name(self._table, "seq")),
                )
            )
        self._dimension = dimension

    # Connections.

    async def _configure(self, conn: AsyncConnection) -> None:
        """Set up a new connection: a statement timeout, the extension (created if missing,
        under the schema lock) and pgvector's types."""
        from pgvector.psycopg import register_vector_async
        from psycopg import sql

        try:
            timeout_ms = max(1, round(self._config.timeout_s * 1000))
            await conn.execute(
                sql.SQL("SET statement_timeout = {}").format(sql.Literal(timeout_ms))
            )
            cursor = await conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'")
            if await cursor.fetchone() is None:
                async with conn.transaction():
                    await conn.execute(
                        "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (_SCHEMA_LOCK,)
                    )
                    await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            await register_vector_async(conn)
        except BaseException as error:
            self._connect_error = error
            raise
        self._connect_error = None

    async def _open_pool(self) -> AsyncConnectionPool:
        async with self._pool_lock:
            if self._pool is None:
                import psycopg
                from psycopg_pool import AsyncConnectionPool

                index = self

                class RecordingConnection(psycopg.AsyncConnection):
                    """Remembers why connecting failed, for the error the caller sees."""

                    @classmethod
                    async def connect(cls, *args: Any, **kwargs: Any) -> Any:
                        try:
                            return await super().connect(*args, **kwargs)
                        except BaseException as error:
                            index._connect_error = error
                            raise

                timeout_s = self._config.timeout_s
                pool = AsyncConnectionPool(
                    self._dsn,
                    connection_class=RecordingConnection,
                    # libpq counts whole seconds, 2 at least.
                    kwargs={"autocommit": True, "connect_timeout": max(2, math.ceil(timeout_s))},
                    min_size=1,
                    max_size=POOL_SIZE,
                    open=False,
                    configure=self._configure,
                    # Drops a connection a server restart broke, instead of failing a call.
                    check=AsyncConnectionPool.check_connection,
                    timeout=timeout_s,
                    # Give up reconnecting soon: the next call asks for a connection again,
                    # at once, instead of waiting out an ever longer backoff.
                    reconnect_timeout=max(1.0, timeout_s),
                    name=f"vlgraph-pgvector-{self._table}",
                )
                await pool.open(wait=False)
                self._pool = pool
            return self._pool

    async def _use(self, what: str, work: Callable[[AsyncConnection, Progress], Awaitable[T]]) -> T:
        """Run ``work`` on a pooled connection, every failure turned into
        :class:`IndexUnavailableError`; give up when ``timeout_s`` passes without ``work``
        finishing or reporting progress (a server that is down or hung).

        A call given up is abandoned, not awaited: cancelling a query on a hung server waits
        for the server (psycopg bounds that at a few seconds), and the caller should not."""
        timeout_s = self._config.timeout_s
        progress = Progress()
        task = asyncio.ensure_future(self._on_connection(work, progress))
        try:
            while not task.done():
                waited = timeout_s - (time.monotonic() - progress.at)
                if waited <= 0:
                    break
                await asyncio.wait({task}, timeout=waited)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not task.done():
            task.cancel()
            self._abandoned.add(task)
            task.add_done_callback(_forget(self._abandoned))
            raise IndexUnavailableError(
                self._failure(what, f"no answer within {timeout_s:g} s", self._connect_error)
            )
        try:
            return task.result()
        except IndexUnavailableError:
            raise
        except Exception as error:
            import psycopg
            from psycopg_pool import PoolTimeout

            if isinstance(error, PoolTimeout):
                raise IndexUnavailableError(
                    self._failure(what, "no connection", self._connect_error)
                ) from error
            if isinstance(error, psycopg.errors.UndefinedTable | psycopg.errors.DataException):
                # Dropped, or emptied and given another dimension, by another replica: read
                # the table again next time.
                self._dimension = None
            if isinstance(error, psycopg.Error | OSError):
                raise IndexUnavailableError(self._failure(what, error)) from error
            raise

    async def _on_connection(
        self, work: Callable[[AsyncConnection, Progress], Awaitable[T]], progress: Progress
    ) -> T:
        pool = await self._open_pool()
        async with pool.connection() as conn:
            progress()
            return await work(conn, progress)

    def _failure(self, what: str, error: object, cause: BaseException | None = None) -> str:
        """The message of an unavailable index: the engine, the server, what failed and why,
        with the password (should a message quote it) masked."""
        reason = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else error
        if cause is not None:
            reason = f"{reason} (last connection attempt: {type(cause).__name__}: {cause})"
        message = f"the pgvector search index at {self._target} is unavailable ({what}): {reason}"
        message = " ".join(str(message).split())
        if self._password:
            message = message.replace(self._password, "***")
        return message


class Progress:
    """When a call last got somewhere (its deadline counts from there); calling it marks now."""

    def __init__(self) -> None:
        self.at = time.monotonic()

    def __call__(self) -> None:
        self.at = time.monotonic()


def _filter_sql(search_filter: SearchFilter) -> tuple[Any, dict[str, Any]]:
    """The WHERE condition of ``search_filter`` and its parameters."""
    from psycopg import sql

    conditions = [sql.SQL("TRUE")]
    params: dict[str, Any] = {}
    if search_filter.kinds:
        conditions.append(sql.SQL("kind = ANY(%(kinds)s)"))
        params["kinds"] = sorted(search_filter.kinds)
    if search_filter.created_from_us is not None:
        conditions.append(sql.SQL("created_us >= %(created_from_us)s"))
        params["created_from_us"] = search_filter.created_from_us
    if search_filter.created_until_us is not None:
        conditions.append(sql.SQL("created_us < %(created_until_us)s"))
        params["created_until_us"] = search_filter.created_until_us
    if search_filter.model is not None:
        conditions.append(sql.SQL("model = %(model)s"))
        params["model"] = search_filter.model
    if search_filter.up_to_seq is not None:
        conditions.append(sql.SQL("seq <= %(up_to_seq)s"))
        params["up_to_seq"] = search_filter.up_to_seq
    return sql.SQL(" AND ").join(conditions), params


def _index_name(table: str, suffix: str) -> str:
    """``table_suffix`` within PostgreSQL's 63 characters (it would cut the end instead)."""
    return f"{table[: 62 - len(suffix)]}_{suffix}"


def _describe(dsn: str) -> tuple[str, str | None]:
    """The server a connection string names (host:port/database, nothing secret) and its
    password, if it has one."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(dsn)
    except Exception:
        return "(an unreadable connection string)", None
    host = parts.get("host") or parts.get("hostaddr") or "localhost"
    target = f"{host}:{parts.get('port') or 5432}/{parts.get('dbname') or parts.get('user') or ''}"
    password = parts.get("password")
    return target, str(password) if password else None


def _forget(tasks: set[asyncio.Task]) -> Callable[[asyncio.Task], None]:
    """A done callback that drops a finished abandoned task and reads its outcome (so that
    asyncio does not log it as never retrieved)."""

    def done(task: asyncio.Task) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()

    return done
