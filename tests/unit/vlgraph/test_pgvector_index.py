"""The PostgreSQL + pgvector search index against a real server (the pgserver wheel's
PostgreSQL 16 with pgvector 0.6): replacement by image id, every filter, ranking and paging
against a numpy brute force on random vectors (a fresh seed each run, printed), the HNSW path
and its fallback, two replicas sharing one table, and a server that is down, hung or
restarted."""

from __future__ import annotations

import asyncio
import random
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from tests.support.common import free_port
from tests.support.postgres import PostgresServer
from vlgraph.pgvector_index import PgVectorIndex
from vlgraph.search_config import SearchConfig
from vlgraph.vector_index import (
    IndexedVector,
    IndexUnavailableError,
    Ranked,
    SearchFilter,
    ranked_order,
    unit,
)

SEED = random.SystemRandom().randrange(2**32)
KINDS = ("upload", "generated", "indexed")
EVERYTHING = SearchFilter()
#: pgvector computes in single precision and scores are rounded to 6 decimals.
TOLERANCE = 2e-6


def setup_module() -> None:
    print(f"pgvector index seed: {SEED}")


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


@pytest.fixture
def table() -> str:
    """A table of this test's own on the session's server."""
    return f"test_{uuid.uuid4().hex[:16]}"


def make_index(server: PostgresServer, table: str, **settings: Any) -> PgVectorIndex:
    settings.setdefault("timeout_s", 10.0)
    return PgVectorIndex(
        SearchConfig(engine="pgvector", pgvector_dsn=server.dsn, pgvector_table=table, **settings)
    )


def random_vectors(count: int, dimension: int = 16, seed: int = SEED, start: int = 1):
    rng = np.random.default_rng(seed)
    return [
        IndexedVector(
            seq=start + offset,
            image_id=f"{rng.integers(2**62):032x}",
            vector=unit(rng.standard_normal(dimension)),
            fingerprint="enc",
            kind=KINDS[offset % 3],
            created_us=1_000 + offset,
            model="sd" if offset % 3 == 1 else None,
        )
        for offset in range(count)
    ]


def brute_force(
    items: Sequence[IndexedVector],
    query: np.ndarray,
    search_filter: SearchFilter = EVERYTHING,
    min_score: float = -1.0,
) -> list[Ranked]:
    """Every admitted item's cosine score in double precision, best first (the newest
    vector of each image only)."""
    newest: dict[str, IndexedVector] = {}
    for item in items:
        if item.image_id not in newest or item.seq > newest[item.image_id].seq:
            newest[item.image_id] = item
    ranked = []
    for item in newest.values():
        if search_filter.admits(item.seq, item.kind, item.created_us, item.model):
            vector = item.vector.astype(np.float64)
            score = float(vector @ query.astype(np.float64) / np.linalg.norm(vector))
            if score >= min_score:
                ranked.append(Ranked(score, item.image_id))
    return sorted(ranked, key=ranked_order)


def assert_exact(found: Sequence[Ranked], expected: Sequence[Ranked], count: int) -> None:
    """``found`` is the exact top ``count`` of ``expected``: in its own order, without
    repeats, each score right, and the i-th result as good as the i-th best (results whose
    scores differ by less than the arithmetic's error may swap places)."""
    assert len(found) == min(count, len(expected))
    assert len({r.image_id for r in found}) == len(found)
    assert list(found) == sorted(found, key=ranked_order)
    truth = {r.image_id: r.score for r in expected}
    for position, result in enumerate(found):
        assert result.image_id in truth, result
        assert abs(result.score - truth[result.image_id]) <= TOLERANCE
        assert abs(truth[result.image_id] - expected[position].score) <= TOLERANCE


async def all_pages(
    index: PgVectorIndex,
    query: np.ndarray,
    page: int,
    search_filter: SearchFilter = EVERYTHING,
    min_score: float = -1.0,
) -> list[Ranked]:
    found: list[Ranked] = []
    after = None
    while True:
        batch = await index.nearest(query, search_filter, page, after, min_score)
        found += batch
        if len(batch) < page:
            return found
        after = batch[-1]


def query_vector(rng: np.random.Generator, dimension: int = 16) -> np.ndarray:
    return unit(rng.standard_normal(dimension))


def test_a_newer_vector_replaces_an_image_and_an_older_one_is_ignored(
    postgres_server: PostgresServer, table: str
) -> None:
    first, second, third = (unit(v) for v in np.eye(3, 8))

    def vector(seq: int, values: np.ndarray, fingerprint: str = "old") -> IndexedVector:
        return IndexedVector(seq, "a", values, fingerprint, "upload", 10)

    async def scenario() -> None:
        index = make_index(postgres_server, table)
        try:
            assert await index.last_seq() == 0  # no table yet
            assert await index.nearest(first, EVERYTHING, 5) == []
            await index.add([vector(1, first), IndexedVector(2, "b", third, "old", "upload", 1)])
            assert await index.last_seq() == 2
            await index.add([vector(5, second, "new")])
            assert await index.last_seq() == 5
            assert (await index.nearest(second, EVERYTHING, 1))[0] == Ranked(1.0, "a")
            assert await index.fingerprints() == {"new": 1, "old": 1}
            await index.add([vector(3, first)])  # late and older: ignored
            assert (await index.nearest(second, EVERYTHING, 1))[0] == Ranked(1.0, "a")
            await index.add([vector(5, second, "new")])  # the same again: harmless
            # One image twice in a batch: its newest vector counts.
            await index.add([vector(9, third, "newest"), vector(7, first, "older")])
            assert await index.last_seq() == 9
            found = await index.nearest(third, EVERYTHING, 5)
            assert found == [Ranked(1.0, "a"), Ranked(1.0, "b")]
            assert await index.fingerprints() == {"newest": 1, "old": 1}
        finally:
            await index.close()

    run(scenario())


def test_every_filter_alone_and_combined_is_searched_exactly(
    postgres_server: PostgresServer, table: str
) -> None:
    items = random_vectors(600)
    rng = np.random.default_rng(SEED + 1)
    filters = [
        EVERYTHING,
        SearchFilter(kinds=frozenset({"upload"})),
        SearchFilter(kinds=frozenset({"upload", "generated"})),
        SearchFilter(kinds=frozenset({"nothing"})),
        SearchFilter(created_from_us=1_200),
        SearchFilter(created_until_us=1_100),
        SearchFilter(created_from_us=1_150, created_until_us=1_150),  # empty
        SearchFilter(created_from_us=1_150, created_until_us=1_151),  # one instant
        SearchFilter(model="sd"),
        SearchFilter(model="sdxl"),
        SearchFilter(up_to_seq=100),
        SearchFilter(
            kinds=frozenset({"generated", "indexed"}),
            created_from_us=1_050,
            created_until_us=1_500,
            model="sd",
            up_to_seq=400,
        ),
    ]

    async def scenario() -> None:
        index = make_index(postgres_server, table)
        try:
            await index.add(items)
            for search_filter in filters:
                query = query_vector(rng)
                expected = brute_force(items, query, search_filter)
                found = await index.nearest(query, search_filter, 25)
                assert_exact(found, expected, 25)
            # The one-instant filter admits exactly the image created then.
            one = await index.nearest(query_vector(rng), filters[7], 5)
            assert [r.image_id for r in one] == [items[150].image_id]
        finally:
            await index.close()

    run(scenario())


def test_paging_after_a_boundary_walks_the_exact_ranking(
    postgres_server: PostgresServer, table: str
) -> None:
    items = random_vectors(400, seed=SEED + 2)
    rng = np.random.default_rng(SEED + 3)
    query = query_vector(rng)
    search_filter = SearchFilter(kinds=frozenset({"upload", "indexed"}), up_to_seq=350)

    async def scenario() -> None:
        index = make_index(postgres_server, table)
        try:
            await index.add(items)
            expected = brute_force(items, query, search_filter)
            pages = await all_pages(index, query, 7, search_filter)
            assert_exact(pages, expected, len(expected))
            # Also when the boundary was not itself a result of this search.
            middle = pages[40]
            found = await index.nearest(query, search_filter, 10, Ranked(middle.score, ""))
            assert found == pages[40:50]
        finally:
            await index.close()

    run(scenario())


def test_min_score_cuts_the_ranking(postgres_server: PostgresServer, table: str) -> None:
    items = random_vectors(300, seed=SEED + 4)
    query = query_vector(np.random.default_rng(SEED + 5))
    expected = brute_force(items, query)
    # A threshold between two scores far enough apart to be unambiguous.
    cut = next(n for n in range(30, 200) if expected[n - 1].score - expected[n].score > 1e-4)
    min_score = (expected[cut - 1].score + expected[cut].score) / 2

    async def scenario() -> None:
        for exact_below in (20_000, 0):  # exact, and through the HNSW index
            index = make_index(postgres_server, f"{table}_{exact_below}", exact_below=exact_below)
            try:
                await index.add(items)
                found = await all_pages(index, query, 9, min_score=min_score)
                if exact_below:
                    assert_exact(found, expected[:cut], cut)
                else:  # HNSW may miss an image; none below the cut comes back
                    assert {r.image_id for r in found} <= {r.image_id for r in expected[:cut]}
                    assert len(found) == len({r.image_id for r in found}) >= 0.95 * cut
                assert all(r.score >= min_score for r in found)
                assert await index.nearest(query, EVERYTHING, 5, min_score=1.0) == []
            finally:
                await index.close()

    run(scenario())


def test_equal_scores_rank_by_image_id_across_pages(
    postgres_server: PostgresServer, table: str
) -> None:
    same = unit(np.arange(1, 9, dtype=np.float32))
    other = unit(np.arange(8, 0, -1, dtype=np.float32))
    ids = [f"{n:02d}" for n in random.Random(SEED).sample(range(40), 12)]
    items = [
        IndexedVector(n + 1, image_id, same if n < 9 else other, "e", "upload", n)
        for n, image_id in enumerate(ids)
    ]

    async def scenario() -> None:
        for exact_below in (20_000, 0):
            index = make_index(postgres_server, f"{table}_{exact_below}", exact_below=exact_below)
            try:
                await index.add(items)
                found = await all_pages(index, same, 4)
                assert [r.image_id for r in found[:9]] == sorted(ids[:9])
                assert [r.image_id for r in found[9:]] == sorted(ids[9:])
                assert len({r.score for r in found[:9]}) == 1
                assert found == sorted(found, key=ranked_order)
            finally:
                await index.close()

    run(scenario())


def test_hnsw_above_exact_below_finds_the_true_neighbours(
    postgres_server: PostgresServer, table: str
) -> None:
    """With ``exact_below`` 0 every search takes the HNSW path: recall@10 on clustered
    vectors, deep pages without repeats, and a filter too selective for HNSW's candidates,
    which falls back to an exact scan."""
    rng = np.random.default_rng(SEED + 6)
    centres = rng.standard_normal((30, 32))
    items = [
        IndexedVector(
            seq=n + 1,
            image_id=f"{n:032x}",
            vector=unit(centres[n % 30] + 0.6 * rng.standard_normal(32)),
            fingerprint="e",
            kind="rare" if n % 100 == 7 else "upload",
            created_us=n,
        )
        for n in range(3000)
    ]
    queries = [unit(centres[n % 30] + 0.6 * rng.standard_normal(32)) for n in range(30)]
    rare = SearchFilter(kinds=frozenset({"rare"}))

    async def scenario() -> None:
        index = make_index(postgres_server, table, exact_below=0)
        try:
            await index.add(items)
            hits = 0
            for query in queries:
                found = await index.nearest(query, EVERYTHING, 10)
                truth = {r.image_id for r in brute_force(items, query)[:10]}
                hits += len({r.image_id for r in found} & truth)
            recall = hits / (10 * len(queries))
            print(f"pgvector HNSW recall@10 on 3000 clustered vectors: {recall:.3f}")
            assert recall >= 0.95
            # Deep pages: 300 results, ordered, none twice, nearly all of the true 300.
            pages = await all_pages_up_to(index, queries[0], 20, 300)
            assert len(pages) == 300 and len({r.image_id for r in pages}) == 300
            assert pages == sorted(pages, key=ranked_order)
            truth = {r.image_id for r in brute_force(items, queries[0])[:300]}
            assert len({r.image_id for r in pages} & truth) >= 0.95 * 300
            # 30 rare images among 3000: HNSW's candidates hold too few, the scan finds all.
            for query in queries[:3]:
                found = await index.nearest(query, rare, 20)
                assert_exact(found, brute_force(items, query, rare), 20)
        finally:
            await index.close()

    run(scenario())


async def all_pages_up_to(
    index: PgVectorIndex, query: np.ndarray, page: int, depth: int
) -> list[Ranked]:
    found: list[Ranked] = []
    while len(found) < depth:
        batch = await index.nearest(query, EVERYTHING, page, found[-1] if found else None)
        if not batch:
            break
        found += batch
    return found


def test_fingerprints_count_and_clear_empties_but_keeps_the_table(
    postgres_server: PostgresServer, table: str
) -> None:
    items = random_vectors(30, seed=SEED + 7)
    items = [
        IndexedVector(v.seq, v.image_id, v.vector, f"enc{v.seq % 3}", v.kind, v.created_us)
        for v in items
    ]

    async def scenario() -> None:
        index = make_index(postgres_server, table)
        try:
            assert await index.fingerprints() == {}
            await index.clear()  # no table yet: nothing to do
            await index.add(items)
            assert await index.fingerprints() == {"enc0": 10, "enc1": 10, "enc2": 10}
            await index.clear()
            assert await index.last_seq() == 0
            assert await index.fingerprints() == {}
            assert await index.nearest(items[0].vector, EVERYTHING, 5) == []
            await index.add(items[:3])
            assert await index.last_seq() == 3
            # Emptied, the table takes another encoder's dimension (a rebuild).
            await index.clear()
            await index.add(random_vectors(5, dimension=8, seed=SEED + 8))
            assert await index.last_seq() == 5
        finally:
            await index.close()

    run(scenario())


def test_vectors_of_another_dimension_are_refused(
    postgres_server: PostgresServer, table: str
) -> None:
    async def scenario() -> None:
        index = make_index(postgres_server, table)
        other = make_index(postgres_server, table)  # another replica, learning it late
        try:
            await index.add(random_vectors(5, dimension=16))
            with pytest.raises(IndexUnavailableError, match=r"8 dimensions.*16"):
                await other.add(random_vectors(2, dimension=8, start=10))
            with pytest.raises(IndexUnavailableError, match=r"8 dimensions.*16"):
                await index.nearest(unit(np.ones(8)), EVERYTHING, 5)
            assert await index.last_seq() == 5
        finally:
            await index.close()
            await other.close()

    run(scenario())


def test_two_replicas_share_one_table(postgres_server: PostgresServer, table: str) -> None:
    first_half = random_vectors(200, seed=SEED + 9)
    second_half = random_vectors(200, seed=SEED + 10, start=201)
    query = query_vector(np.random.default_rng(SEED + 11))

    async def scenario() -> None:
        one, two = make_index(postgres_server, table), make_index(postgres_server, table)
        try:
            # Both create the table at once (the advisory lock keeps them apart).
            await asyncio.gather(one.add(first_half[:100]), two.add(first_half[100:]))
            assert await one.last_seq() == await two.last_seq() == 200
            await two.add(second_half)
            assert await one.last_seq() == 400
            expected = brute_force(first_half + second_half, query)
            assert_exact(await one.nearest(query, EVERYTHING, 30), expected, 30)
            # One replica's replacement is the other's too.
            replaced = IndexedVector(401, first_half[0].image_id, query, "enc2", "upload", 5)
            await one.add([replaced])
            assert (await two.nearest(query, EVERYTHING, 1))[0].image_id == replaced.image_id
            assert await two.fingerprints() == {"enc": 399, "enc2": 1}
        finally:
            await one.close()
            await two.close()

    run(scenario())


def test_an_unreachable_or_silent_server_fails_fast_without_the_password() -> None:
    dead = f"postgresql://vlgraph:hunter2-secret@127.0.0.1:{free_port()}/vlgraph"
    silent = socket.socket()  # accepts connections (the kernel does) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    hung = f"postgresql://vlgraph:hunter2-secret@127.0.0.1:{silent.getsockname()[1]}/vlgraph"

    async def scenario(dsn: str, every_call: bool) -> None:
        config = SearchConfig(engine="pgvector", pgvector_dsn=dsn, timeout_s=1.0)
        index = PgVectorIndex(config)
        try:
            calls = [index.nearest(unit(np.ones(16)), EVERYTHING, 5)]
            if every_call:
                calls += [
                    index.last_seq(),
                    index.add(random_vectors(2)),
                    index.fingerprints(),
                    index.clear(),
                ]
            for call in calls:
                started = time.monotonic()
                with pytest.raises(IndexUnavailableError) as raised:
                    await call
                assert time.monotonic() - started < 3.0
                message = raised.value.message
                assert "pgvector" in message and "127.0.0.1" in message
                assert "hunter2" not in message and "hunter2" not in repr(raised.value)
                assert raised.value.status == 503
            started = time.monotonic()
            assert await index.ping() is False
            assert time.monotonic() - started < 3.0
        finally:
            await index.close()

    try:
        run(scenario(dead, every_call=True))
        run(scenario(hung, every_call=False))
    finally:
        silent.close()


def test_a_restarted_or_crashed_server_is_reconnected_with_its_data(
    postgres_server: PostgresServer, table: str
) -> None:
    items = random_vectors(50, seed=SEED + 12)
    query = query_vector(np.random.default_rng(SEED + 13))

    async def until_available(index: PgVectorIndex) -> float:
        started = time.monotonic()
        while not await index.ping():
            assert time.monotonic() - started < 20, "no reconnection within 20 s"
            await asyncio.sleep(0.1)
        return time.monotonic() - started

    async def scenario() -> None:
        index = make_index(postgres_server, table, timeout_s=1.0)
        try:
            await index.add(items[:25])
            for outage in (postgres_server.stop, postgres_server.kill):
                outage()
                started = time.monotonic()
                with pytest.raises(IndexUnavailableError, match="pgvector"):
                    await index.nearest(query, EVERYTHING, 5)
                assert time.monotonic() - started < 3.0
                postgres_server.start()
                print(f"reconnected {await until_available(index):.2f} s after {outage.__name__}")
            await index.add(items[25:])
            assert await index.last_seq() == 50
            assert_exact(await index.nearest(query, EVERYTHING, 10), brute_force(items, query), 10)
        finally:
            await index.close()

    try:
        run(scenario())
    finally:
        if not postgres_server.running:
            postgres_server.start()
