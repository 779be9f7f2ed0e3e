"""The search engine a profile names: :func:`make_vector_index` picks it (the modules of the
engines are imported only when chosen: pgvector's client needs no loading otherwise)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlgraph.vector_index import VectorIndex

if TYPE_CHECKING:
    from vlgraph.config import StoreConfig
    from vlgraph.search_config import SearchConfig


def make_vector_index(config: SearchConfig, store: StoreConfig) -> VectorIndex:
    """The index engine a profile's search section names."""
    if config.engine == "embedded":
        from vlgraph.embedded_vector_index import EmbeddedVectorIndex

        return EmbeddedVectorIndex(store.resolved_data_dir() / "search", config)
    if config.engine == "pgvector":
        from vlgraph.pgvector_index import PgVectorIndex

        return PgVectorIndex(config)
    raise ValueError(f"unknown search engine {config.engine!r}")
