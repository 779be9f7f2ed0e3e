"""The embedded search index (usearch HNSW + numpy columns) against exact search on random
vectors: ranking, filters, paging boundaries, replacement, saving and reloading, and feeding
it from a real SQLite store. A fresh seed each run, printed."""

from __future__ import annotations

import asyncio
import itertools
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vlgraph.embedded_vector_index import COLUMNS_FILE, INDEX_FILE, EmbeddedVectorIndex
from vlgraph.image_store import ImageVector
from vlgraph.search_config import SearchConfig
from vlgraph.sqlite_image_store import SqliteImageStore
from vlgraph.vector_index import IndexedVector, Ranked, SearchFilter, catch_up, unit

SEED = random.SystemRandom().randrange(2**32)
KINDS = ("upload", "generated", "indexed")


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def setup_module() -> None:
    print(f"vector index seed: {SEED}")


def random_vectors(count: int, dimension: int = 16, seed: int = SEED, start: int = 1):
    rng = np.random.default_rng(seed)
    items = []
    for offset in range(count):
        values = unit(rng.standard_normal(dimension))
        items.append(
            IndexedVector(
                seq=start + offset,
                image_id=f"{rng.integers(2**62):032x}",
                vector=values,
                fingerprint="enc",
                kind=KINDS[offset % 3],
                created_us=1_000 + offset,
                model="sd" if offset % 3 == 1 else None,
            )
        )
    return items


EVERYTHING = SearchFilter()


def exact_ranking(items, query, search_filter=EVERYTHING, min_score=-1.0):
    """What every search must answer: cosine scores of the admitted vectors (as half
    precision keeps them), best first."""
    ranked = []
    for item in items:
        if search_filter.admits(item.seq, item.kind, item.created_us, item.model):
            kept = item.vector.astype(np.float16).astype(np.float32)
            score = round(float(kept @ query / np.linalg.norm(kept)), 6)
            if score >= min_score:
                ranked.append(Ranked(score, item.image_id))
    return sorted(ranked, key=lambda r: (-r.score, r.image_id))


async def all_pages(index, query, search_filter, page, min_score=-1.0) -> list[Ranked]:
    found: list[Ranked] = []
    after = None
    while True:
        batch = await index.nearest(query, search_filter, page, after, min_score)
        found += batch
        if len(batch) < page:
            return found
        after = batch[-1]


def make_index(tmp_path: Path, **settings: Any) -> EmbeddedVectorIndex:
    return EmbeddedVectorIndex(tmp_path / "search", SearchConfig(**settings))


def test_paging_through_every_result_gives_the_exact_ranking(tmp_path: Path) -> None:
    """A filter that admits at most exact_below vectors is searched exactly: paging through
    300 vectors has no duplicates or gaps and follows the exact order (scores as half
    precision keeps the vectors)."""
    items = random_vectors(300)
    query = unit(np.random.default_rng(SEED + 1).standard_normal(16))

    async def scenario() -> None:
        index = make_index(tmp_path)
        await index.add(items)
        found = await all_pages(index, query, SearchFilter(), page=7)
        expected = exact_ranking(items, query)
        assert [r.image_id for r in found] == [r.image_id for r in expected]
        assert [r.score for r in found] == pytest.approx([r.score for r in expected], abs=3e-6)

    run(scenario())


def test_hnsw_pages_never_repeat_and_keep_their_order(tmp_path: Path) -> None:
    """Past exact_below (0 here) pages come from HNSW: no image twice, scores never rising
    from one page to the next, and nearly every image found."""
    items = random_vectors(300)
    query = unit(np.random.default_rng(SEED + 1).standard_normal(16))

    async def scenario() -> list[Ranked]:
        index = make_index(tmp_path, exact_below=0)
        await index.add(items)
        return await all_pages(index, query, SearchFilter(), page=7)

    found = run(scenario())
    ids = [r.image_id for r in found]
    assert len(ids) == len(set(ids))
    assert all(a.score >= b.score for a, b in itertools.pairwise(found))
    assert len(found) >= 0.95 * len(items)


@pytest.mark.parametrize(
    "search_filter",
    [
        SearchFilter(kinds=frozenset({"generated"})),
        SearchFilter(kinds=frozenset({"upload", "indexed"})),
        SearchFilter(created_from_us=1_100, created_until_us=1_150),
        SearchFilter(model="sd"),
        SearchFilter(model="nobody"),
        SearchFilter(up_to_seq=40),
        SearchFilter(kinds=frozenset({"generated"}), model="sd", created_from_us=1_050),
    ],
    ids=["generated", "two-kinds", "time-range", "model", "unknown-model", "snapshot", "all"],
)
@pytest.mark.parametrize("exact_below", [20_000, 0])
def test_filters_admit_exactly_what_they_say(
    tmp_path: Path, search_filter: SearchFilter, exact_below: int
) -> None:
    items = random_vectors(200)
    query = unit(np.random.default_rng(SEED + 2).standard_normal(16))

    async def scenario() -> None:
        index = make_index(tmp_path, exact_below=exact_below)
        await index.add(items)
        found = await all_pages(index, query, search_filter, page=11)
        expected = exact_ranking(items, query, search_filter)
        found_ids, expected_ids = {r.image_id for r in found}, {r.image_id for r in expected}
        assert len(found) == len(found_ids)
        if exact_below:
            assert found_ids == expected_ids
        else:
            # HNSW is approximate (a page may miss an image: it is not in a later page
            # either); the filter is still exact: nothing it refuses comes back.
            assert found_ids <= expected_ids
            assert len(found_ids) >= 0.95 * len(expected_ids)

    run(scenario())


def test_min_score_stops_the_results(tmp_path: Path) -> None:
    items = random_vectors(150)
    query = items[0].vector

    async def scenario() -> None:
        index = make_index(tmp_path)
        await index.add(items)
        found = await all_pages(index, query, SearchFilter(), page=5, min_score=0.3)
        expected = exact_ranking(items, query, min_score=0.3)
        assert [r.image_id for r in found] == [r.image_id for r in expected]
        assert found[0].image_id == items[0].image_id and found[0].score == pytest.approx(1, 1e-3)
        assert all(r.score >= 0.3 for r in found)

    run(scenario())


def test_a_newer_vector_replaces_the_old_one_of_its_image(tmp_path: Path) -> None:
    items = random_vectors(20)
    newer = random_vectors(1, seed=SEED + 3, start=21)[0]
    replacement = IndexedVector(
        seq=newer.seq,
        image_id=items[5].image_id,
        vector=newer.vector,
        fingerprint="enc-2",
        kind="upload",
        created_us=5,
    )

    async def scenario() -> None:
        index = make_index(tmp_path)
        await index.add(items)
        await index.add(items[:3])  # already held: ignored
        await index.add([replacement])
        assert await index.last_seq() == 21
        assert await index.fingerprints() == {"enc": 19, "enc-2": 1}
        found = await index.nearest(newer.vector, SearchFilter(), 50)
        assert len(found) == 20
        assert found[0] == Ranked(pytest.approx(1, abs=1e-3), items[5].image_id)
        assert [r.image_id for r in found].count(items[5].image_id) == 1

    run(scenario())


def test_the_index_is_saved_and_reloaded_and_a_damaged_save_is_ignored(tmp_path: Path) -> None:
    items = random_vectors(50)
    query = items[7].vector

    async def scenario() -> None:
        first = make_index(tmp_path, save_interval_s=3600)
        await first.add(items)
        before = await first.nearest(query, SearchFilter(kinds=frozenset({"upload"})), 10)
        await first.close()
        assert (tmp_path / "search" / INDEX_FILE).is_file()

        again = make_index(tmp_path)
        assert await again.last_seq() == 50
        assert await again.nearest(query, SearchFilter(kinds=frozenset({"upload"})), 10) == before
        assert await again.fingerprints() == {"enc": 50}

        (tmp_path / "search" / COLUMNS_FILE).write_bytes(b"not numpy")
        damaged = make_index(tmp_path)
        assert await damaged.last_seq() == 0  # rebuilt from the store by catch_up

        await again.clear()
        assert not (tmp_path / "search" / INDEX_FILE).exists()
        assert await again.nearest(query, SearchFilter(), 10) == []

    run(scenario())


def test_an_encoder_of_another_size_starts_the_index_again(tmp_path: Path) -> None:
    """After the encoder changed size, its vectors (newer sequence numbers, as a rebuild
    writes them) replace the whole index instead of failing every search."""
    old = random_vectors(3, dimension=8)
    new = random_vectors(2, dimension=16, start=4)

    async def scenario() -> None:
        index = make_index(tmp_path)
        await index.add(old)
        await index.add(new)
        assert await index.last_seq() == 5
        found = await index.nearest(new[0].vector, SearchFilter(), 10)
        assert found[0].image_id == new[0].image_id and len(found) == 2

    run(scenario())


def test_catch_up_feeds_every_stored_vector_and_nothing_twice(tmp_path: Path) -> None:
    """The index fed from a real SQLite store holds every stored image that has a vector,
    in pieces and across replacements."""
    rng = np.random.default_rng(SEED + 4)

    async def scenario() -> None:
        store = SqliteImageStore(tmp_path / "data")
        index = make_index(tmp_path)
        images = [
            await store.add_image(
                b"png", "image/png", f"c{n}", vector=ImageVector(unit(rng.standard_normal(8)), "e")
            )
            for n in range(25)
        ]
        await store.add_image(b"png", "image/png", "no vector")
        assert await catch_up(index, store) == 25
        assert await catch_up(index, store) == 0
        target = unit(rng.standard_normal(8))
        await store.set_vector(images[3].image_id, ImageVector(target, "e2"))
        assert await catch_up(index, store) == 1
        found = await index.nearest(target, SearchFilter(), 100)
        assert {r.image_id for r in found} == {image.image_id for image in images}
        assert found[0].image_id == images[3].image_id
        assert await index.fingerprints() == {"e": 24, "e2": 1}

    run(scenario())


def test_hnsw_recall_at_10_on_clustered_vectors(tmp_path: Path) -> None:
    """HNSW (no exact fallback) finds at least 95% of the exact top 10 on 5000 clustered
    vectors of 64 dimensions."""
    rng = np.random.default_rng(SEED + 5)
    centres = rng.standard_normal((40, 64))
    items = [
        IndexedVector(
            seq=n + 1,
            image_id=f"{n:032x}",
            vector=unit(centres[n % 40] + 0.6 * rng.standard_normal(64)),
            fingerprint="e",
            kind="upload",
            created_us=n,
        )
        for n in range(5000)
    ]
    queries = [unit(centres[n % 40] + 0.6 * rng.standard_normal(64)) for n in range(50)]

    async def scenario() -> float:
        index = make_index(tmp_path, exact_below=0)
        await index.add(items)
        hits = 0
        for query in queries:
            found = {r.image_id for r in await index.nearest(query, SearchFilter(), 10)}
            hits += len(found & {r.image_id for r in exact_ranking(items, query)[:10]})
        return hits / (10 * len(queries))

    recall = run(scenario())
    print(f"HNSW recall@10 on 5000 vectors: {recall:.3f}")
    assert recall >= 0.95
