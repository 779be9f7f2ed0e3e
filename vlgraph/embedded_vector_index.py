"""The embedded search engine: a usearch HNSW graph in the ingress replica's memory, with the
properties filters need in numpy columns beside it, saved to a folder next to the SQLite store.

Each replica holds its own copy, fed from the store (:func:`vlgraph.vector_index.catch_up`);
the saved copy only spares a restart re-reading every vector. The graph keeps vectors in half
precision (recall@10 0.995 at 100k vectors of 512 dims, half the memory of float32); a float32
copy beside it scores every result the same way whichever path found it (the dot product of
the query with the stored vector), so that a page boundary means the same thing on every
page. A filter that
admits at most ``exact_below`` vectors is searched exactly: HNSW with a selective filter
would have to visit most of the graph to find enough results.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlgraph.vector_index import (
    IndexedVector,
    IndexUnavailableError,
    Ranked,
    SearchFilter,
    VectorIndex,
)

if TYPE_CHECKING:
    from usearch.index import Index

    from vlgraph.search_config import SearchConfig

logger = logging.getLogger("ray.serve")

INDEX_FILE = "vectors.usearch"
COLUMNS_FILE = "vectors.columns.npz"
#: Scores are rounded to this many decimals, so that a score sent back in a cursor compares
#: equal to the one computed again.
SCORE_DECIMALS = 6
_GROWTH = 4


class _Columns:
    """The indexed vectors' properties, one row per vector ever added, in sequence order; a
    replaced vector's row stays, marked dead."""

    def __init__(self) -> None:
        self.seq = np.zeros(0, dtype=np.int64)
        self.created_us = np.zeros(0, dtype=np.int64)
        self.kind = np.zeros(0, dtype=np.int16)
        self.model = np.zeros(0, dtype=np.int32)  # 0: none
        self.alive = np.zeros(0, dtype=bool)
        #: Every row's vector as the graph keeps it (half precision), made unit length in
        #: float32: exact search and the scores of HNSW's candidates read it (a lookup in the
        #: graph, or arithmetic in half precision, is slower).
        self.vectors = np.zeros((0, 0), dtype=np.float32)
        self.image_ids: list[str] = []
        self.fingerprints: list[str] = []
        self.kind_names: list[str] = []
        self.model_names: list[str | None] = [None]
        self.row_of_image: dict[str, int] = {}
        self.fingerprint_counts: Counter[str] = Counter()

    def code(self, names: list, name: Any) -> int:
        try:
            return names.index(name)
        except ValueError:
            names.append(name)
            return len(names) - 1

    def append(self, vectors: Sequence[IndexedVector], matrix: np.ndarray) -> list[int]:
        """Add rows for ``vectors`` (sorted by seq, each newer than every row; ``matrix``
        holds their values); the seqs of the rows they make dead."""
        replaced = []
        start = len(self.image_ids)
        for offset, item in enumerate(vectors):
            old = self.row_of_image.get(item.image_id)
            if old is not None and self.alive[old]:
                self.alive[old] = False
                self.fingerprint_counts[self.fingerprints[old]] -= 1
                replaced.append(int(self.seq[old]))
            self.row_of_image[item.image_id] = start + offset
            self.image_ids.append(item.image_id)
            self.fingerprints.append(item.fingerprint)
            self.fingerprint_counts[item.fingerprint] += 1
        self.seq = np.concatenate([self.seq, [item.seq for item in vectors]])
        self.created_us = np.concatenate([self.created_us, [item.created_us for item in vectors]])
        self.kind = np.concatenate(
            [self.kind, [self.code(self.kind_names, item.kind) for item in vectors]]
        ).astype(np.int16)
        self.model = np.concatenate(
            [self.model, [self.code(self.model_names, item.model) for item in vectors]]
        ).astype(np.int32)
        self.alive = np.concatenate([self.alive, np.ones(len(vectors), dtype=bool)])
        # As the graph keeps them (half precision), so that a reloaded index scores alike.
        stored = _unit_rows(matrix.astype(np.float16))
        self.vectors = stored if not len(self.vectors) else np.concatenate([self.vectors, stored])
        return replaced

    def admitted(self, search_filter: SearchFilter) -> np.ndarray:
        """A mask of the live rows the filter admits."""
        mask = self.alive.copy()
        if search_filter.kinds:
            codes = [self.kind_names.index(k) for k in search_filter.kinds if k in self.kind_names]
            mask &= np.isin(self.kind, codes)
        if search_filter.created_from_us is not None:
            mask &= self.created_us >= search_filter.created_from_us
        if search_filter.created_until_us is not None:
            mask &= self.created_us < search_filter.created_until_us
        if search_filter.model is not None:
            if search_filter.model in self.model_names:
                mask &= self.model == self.model_names.index(search_filter.model)
            else:
                mask[:] = False
        if search_filter.up_to_seq is not None:
            mask &= self.seq <= search_filter.up_to_seq
        return mask

    def rows_of(self, keys: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.seq, keys)

    def save(self, path: Path) -> None:
        np.savez(
            path,
            seq=self.seq,
            created_us=self.created_us,
            kind=self.kind,
            model=self.model,
            alive=self.alive,
            names=np.array(
                [
                    json.dumps(
                        {
                            "image_ids": self.image_ids,
                            "fingerprints": self.fingerprints,
                            "kind_names": self.kind_names,
                            "model_names": self.model_names,
                        }
                    )
                ]
            ),
        )

    @classmethod
    def load(cls, path: Path) -> _Columns:
        columns = cls()
        with np.load(path) as saved:
            columns.seq = saved["seq"]
            columns.created_us = saved["created_us"]
            columns.kind = saved["kind"]
            columns.model = saved["model"]
            columns.alive = saved["alive"]
            names = json.loads(str(saved["names"][0]))
        columns.image_ids = names["image_ids"]
        columns.fingerprints = names["fingerprints"]
        columns.kind_names = names["kind_names"]
        columns.model_names = names["model_names"]
        for row, image_id in enumerate(columns.image_ids):
            if columns.alive[row]:
                columns.row_of_image[image_id] = row
                columns.fingerprint_counts[columns.fingerprints[row]] += 1
        return columns


class EmbeddedVectorIndex(VectorIndex):
    """usearch HNSW plus numpy columns, in this process, saved under ``folder``."""

    def __init__(self, folder: Path, config: SearchConfig):
        self.folder = Path(folder)
        self._config = config
        self._lock = threading.Lock()
        self._index: Index | None = None
        self._columns = _Columns()
        self._loaded = False
        self._dirty = False
        self._saved_at = time.monotonic()

    async def last_seq(self) -> int:
        """The highest sequence number held (0 when empty)."""
        return await self._in_thread(self._last_seq)

    async def add(self, vectors: Sequence[IndexedVector]) -> None:
        """Add ``vectors`` newer than the last one held (older ones are already here)."""
        await self._in_thread(self._add, list(vectors))

    async def nearest(
        self,
        query: np.ndarray,
        search_filter: SearchFilter,
        count: int,
        after: Ranked | None = None,
        min_score: float = -1.0,
    ) -> list[Ranked]:
        """The best ``count`` admitted results after ``after``: exact when the filter admits
        at most ``exact_below`` vectors, else HNSW with a widening candidate list."""
        query = np.asarray(query, dtype=np.float32)
        return await self._in_thread(self._nearest, query, search_filter, count, after, min_score)

    async def fingerprints(self) -> dict[str, int]:
        """How many live vectors each encoder fingerprint has."""
        return await self._in_thread(
            lambda: {k: v for k, v in self._columns.fingerprint_counts.items() if v > 0}
        )

    async def clear(self) -> None:
        """Forget every vector, here and on disk."""
        await self._in_thread(self._clear)

    async def ping(self) -> bool:
        """Always true once loaded: the index is in this process."""
        try:
            await self._in_thread(lambda: None)
        except IndexUnavailableError:
            return False
        return True

    async def close(self) -> None:
        """Save the index if it changed since the last save."""
        await self._in_thread(self._save_if_dirty, True)

    # Everything below runs in a worker thread, under the lock.

    async def _in_thread(self, function: Any, *args: Any) -> Any:
        def locked() -> Any:
            with self._lock:
                self._ensure_loaded()
                return function(*args)

        try:
            return await asyncio.to_thread(locked)
        except (OSError, RuntimeError, ValueError) as error:
            raise IndexUnavailableError(f"the embedded search index failed: {error}") from error

    def _new_index(self, dimension: int) -> Index:
        from usearch.index import Index

        config = self._config
        return Index(
            ndim=dimension,
            metric="cos",
            dtype="f16",
            connectivity=config.hnsw_connectivity,
            expansion_add=config.hnsw_expansion_add,
            expansion_search=config.hnsw_expansion_search,
        )

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        index_path, columns_path = self.folder / INDEX_FILE, self.folder / COLUMNS_FILE
        if not (index_path.is_file() and columns_path.is_file()):
            return
        try:
            columns = _Columns.load(columns_path)
            from usearch.index import Index

            index = Index.restore(str(index_path))
            if index is None or index.size != int(columns.alive.sum()):
                raise ValueError("the saved graph and its columns disagree")
        except Exception as error:  # a damaged save is rebuilt from the store
            logger.warning("search index: ignoring the saved index in %s: %r", self.folder, error)
            return
        matrix = np.zeros((len(columns.seq), index.ndim), dtype=np.float32)
        live = np.flatnonzero(columns.alive)
        if len(live):
            saved = np.asarray(index.get(columns.seq[live].astype(np.uint64)))
            matrix[live] = _unit_rows(saved)
        columns.vectors = matrix
        self._index, self._columns = index, columns
        self._saved_at = time.monotonic()

    def _last_seq(self) -> int:
        return int(self._columns.seq[-1]) if len(self._columns.seq) else 0

    def _add(self, vectors: list[IndexedVector]) -> None:
        last = self._last_seq()
        vectors = sorted((v for v in vectors if v.seq > last), key=lambda v: v.seq)
        if not vectors:
            return
        # One image may come twice in a batch (re-encoded): only its newest vector counts.
        newest = {v.image_id: v for v in vectors}
        dead_in_batch = {v.seq for v in vectors if newest[v.image_id] is not v}
        matrix = np.stack([v.vector for v in vectors]).astype(np.float32)
        if self._index is not None and matrix.shape[1] != self._index.ndim:
            # A new encoder of another size: its vectors come with new sequence numbers (a
            # rebuild re-encodes every image), so the old ones can go now.
            logger.warning(
                "search index: vectors of %d dimensions replace the %d-dimension index",
                matrix.shape[1],
                self._index.ndim,
            )
            self._index, self._columns = None, _Columns()
        if self._index is None:
            self._index = self._new_index(matrix.shape[1])
        replaced = self._columns.append(vectors, matrix)
        keys = np.array([v.seq for v in vectors], dtype=np.uint64)
        self._index.add(keys, matrix, threads=os.cpu_count() or 1)
        for seq in [*replaced, *dead_in_batch]:
            self._index.remove(seq)
        for seq in dead_in_batch:
            row = int(self._columns.rows_of(np.array([seq]))[0])
            if self._columns.alive[row]:
                self._columns.alive[row] = False
                self._columns.fingerprint_counts[self._columns.fingerprints[row]] -= 1
        self._dirty = True
        self._save_if_dirty(False)

    def _nearest(
        self,
        query: np.ndarray,
        search_filter: SearchFilter,
        count: int,
        after: Ranked | None,
        min_score: float,
    ) -> list[Ranked]:
        index, columns = self._index, self._columns
        if index is None or index.size == 0 or count <= 0:
            return []
        mask = columns.admitted(search_filter)
        admitted = int(mask.sum())
        if admitted == 0:
            return []
        if admitted <= self._config.exact_below:
            return self._pick(query, columns.seq[mask], count, after, min_score)
        wanted = max(count * _GROWTH, self._config.hnsw_expansion_search)
        while wanted < index.size:
            index.expansion_search = max(self._config.hnsw_expansion_search, wanted)
            found = index.search(query, wanted)
            keys = np.asarray(found.keys, dtype=np.int64)
            keys = keys[mask[columns.rows_of(keys)]]
            results = self._pick(query, keys, count, after, min_score)
            if len(results) == count or _exhausted(found, min_score):
                return results
            wanted *= _GROWTH
        # Deep pages and sparse filters: as many candidates as vectors, so search them all.
        return self._pick(query, columns.seq[mask], count, after, min_score)

    def _pick(
        self,
        query: np.ndarray,
        keys: np.ndarray,
        count: int,
        after: Ranked | None,
        min_score: float,
    ) -> list[Ranked]:
        """Score ``keys`` against ``query`` and keep the best ``count`` past ``after``."""
        if len(keys) == 0:
            return []
        rows = self._columns.rows_of(keys)
        scores = np.round((self._columns.vectors[rows] @ query).astype(np.float64), SCORE_DECIMALS)
        keep = scores >= min_score
        if after is not None:
            keep &= scores <= after.score
        rows, scores = rows[keep], scores[keep]
        ids = self._columns.image_ids
        if after is not None:  # the boundary's own score: only larger ids come after it
            tied = scores == after.score
            later = np.array([ids[row] > after.image_id for row in rows[tied]], dtype=bool)
            drop = np.flatnonzero(tied)[~later] if len(later) else np.zeros(0, dtype=int)
            rows, scores = np.delete(rows, drop), np.delete(scores, drop)
        if len(scores) > count:  # the best count, and every result tied with the last
            cut = np.partition(scores, len(scores) - count)[len(scores) - count]
            best = scores >= cut
            rows, scores = rows[best], scores[best]
        ranked = [Ranked(float(score), ids[row]) for score, row in zip(scores, rows, strict=True)]
        ranked.sort(key=lambda item: (-item.score, item.image_id))
        return ranked[:count]

    def _clear(self) -> None:
        self._index = None
        self._columns = _Columns()
        for name in (INDEX_FILE, COLUMNS_FILE):
            (self.folder / name).unlink(missing_ok=True)
        self._dirty = False

    def _save_if_dirty(self, now: bool) -> None:
        if not self._dirty or self._index is None:
            return
        if not now and time.monotonic() - self._saved_at < self._config.save_interval_s:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        tag = uuid.uuid4().hex[:8]
        index_temp = self.folder / f".{INDEX_FILE}.{tag}.tmp"
        columns_temp = self.folder / f".{COLUMNS_FILE}.{tag}.tmp.npz"
        try:
            self._index.save(str(index_temp))
            self._columns.save(columns_temp)
            # The columns file goes last: a save cut short between the two renames leaves
            # a graph and columns that disagree, which loading detects and ignores.
            os.replace(index_temp, self.folder / INDEX_FILE)
            os.replace(columns_temp, self.folder / COLUMNS_FILE)
        finally:
            for temp in (index_temp, columns_temp):
                with contextlib.suppress(OSError):
                    temp.unlink()
        self._dirty = False
        self._saved_at = time.monotonic()


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    """``matrix``'s rows as float32 of unit length (a zero row stays zero)."""
    rows = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return rows / norms


def _exhausted(found: Any, min_score: float) -> bool:
    """Whether the farthest candidate already scores below ``min_score`` (a wider search
    would only find worse ones)."""
    distances = np.asarray(found.distances)
    return len(distances) > 0 and 1.0 - float(distances[-1]) < min_score
