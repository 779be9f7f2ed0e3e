"""The profile's ``search`` section: semantic search over the stored images (``POST
/api/search``), which encoders make its vectors, which engine indexes them, and its limits."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from vlgraph.model_config import StrictModel

#: The most stored images one ``POST /api/admin/index/rebuild`` encodes again.
MAX_REBUILD_BATCH = 256

SearchEngine = Literal["embedded", "pgvector"]
_ENGINES: tuple[SearchEngine, ...] = ("embedded", "pgvector")


def _default_engine() -> SearchEngine | None:
    chosen = (os.environ.get("VLGRAPH_SEARCH_ENGINE") or "").strip().lower()
    if not chosen:
        return None
    if chosen not in _ENGINES:
        raise ValueError(f"VLGRAPH_SEARCH_ENGINE={chosen!r}: choose embedded or pgvector")
    return chosen  # type: ignore[return-value]


def _default_dsn() -> SecretStr | None:
    dsn = os.environ.get("VLGRAPH_PGVECTOR_DSN")
    return SecretStr(dsn) if dsn else None


class SearchConfig(StrictModel):
    """Semantic image search. On when the profile serves ``image_encoder``: every stored
    image's vector is then written with its record, and ``POST /api/search`` finds images by
    text (``text_encoder``, which must share the image encoder's space), by image, or both."""

    enabled: bool = Field(True, description="false: no vectors are written, no search routes.")
    image_encoder: str = Field(
        "clip_image", description="The served model that encodes stored and query images."
    )
    text_encoder: str = Field(
        "clip_text",
        description="The served model that encodes text queries, in the image encoder's space "
        "(CLIP's multilingual text model reads 50+ languages).",
    )
    engine: SearchEngine | None = Field(
        default_factory=_default_engine,
        description="embedded: usearch HNSW beside the SQLite store, one machine. pgvector: "
        "PostgreSQL with pgvector (HNSW), shared by every ingress replica. Unset "
        "($VLGRAPH_SEARCH_ENGINE): embedded with the SQLite store; with the Redis store "
        "search stays off until an engine is named.",
    )
    pgvector_dsn: SecretStr | None = Field(
        default_factory=_default_dsn,
        description="pgvector: the PostgreSQL connection string. $VLGRAPH_PGVECTOR_DSN.",
    )
    pgvector_table: str = Field(
        "vlgraph_image_vectors",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="pgvector: the table of vectors (created on first use).",
    )
    timeout_s: float = Field(5.0, gt=0, le=60, description="pgvector: connect and query timeout.")
    hnsw_connectivity: int = Field(16, ge=4, le=128, description="HNSW edges per node (M).")
    hnsw_expansion_add: int = Field(
        128, ge=8, le=4096, description="HNSW candidates while adding (ef_construction)."
    )
    hnsw_expansion_search: int = Field(
        64, ge=8, le=4096, description="HNSW candidates while searching (ef_search), at least."
    )
    exact_below: int = Field(
        20_000,
        ge=0,
        description="embedded: search every vector exactly while the filter admits at most "
        "this many (exact results, and filters that HNSW would starve).",
    )
    save_interval_s: float = Field(
        30.0,
        gt=0,
        description="embedded: how often a replica saves its index when it changed, so that "
        "a restart reads the store only for the vectors added since.",
    )
    max_query_chars: int = Field(500, ge=1, le=10_000, description="Longest text query.")
    default_limit: int = Field(20, ge=1, description="Results per page when none is asked.")
    max_limit: int = Field(100, ge=1, le=1000, description="Most results per page.")
    max_depth: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="Most results one search pages through (its cursor goes no deeper).",
    )
    default_text_weight: float = Field(
        0.5, ge=0, le=1, description="Text's share of a text-and-image query."
    )
    duplicate_threshold: float | None = Field(
        None,
        ge=-1,
        le=1,
        description="Uploads whose cosine similarity to a stored image reaches this get "
        "duplicate_of (that image's id) in their response; null: no check.",
    )

    @model_validator(mode="after")
    def _bounds_in_order(self) -> SearchConfig:
        if self.default_limit > self.max_limit:
            raise ValueError(
                f"search.default_limit ({self.default_limit}) is above search.max_limit "
                f"({self.max_limit})"
            )
        if self.engine == "pgvector" and self.enabled and self.pgvector_dsn is None:
            raise ValueError(
                "search.engine pgvector needs search.pgvector_dsn (or $VLGRAPH_PGVECTOR_DSN), "
                "e.g. postgresql://vlgraph@db.internal:5432/vlgraph"
            )
        return self
