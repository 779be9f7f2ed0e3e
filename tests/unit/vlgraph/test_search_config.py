"""The profile's search section: when search is on, which engine it uses, and the refusals
that name what to fix."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from vlgraph.config import AppConfig
from vlgraph.search_config import SearchConfig

REDIS_STORE = {"backend": "redis", "redis_host": "db", "redis_port": 6379}


def profile(**fields: Any) -> AppConfig:
    return AppConfig.model_validate({"profile": "t", **fields})


def test_search_is_on_beside_the_sqlite_store_by_default() -> None:
    config = profile()
    assert config.searches() and config.search_engine() == "embedded"


def test_with_the_redis_store_search_waits_for_an_engine(monkeypatch) -> None:
    monkeypatch.delenv("VLGRAPH_SEARCH_ENGINE", raising=False)
    config = profile(store=REDIS_STORE)
    assert not config.searches() and config.search_engine() is None
    with pytest.raises(ValidationError, match=r"use search\.engine pgvector"):
        profile(store=REDIS_STORE, search={"engine": "embedded"})
    shared = profile(
        store=REDIS_STORE,
        search={"engine": "pgvector", "pgvector_dsn": "postgresql://u:p@db:5432/v"},
    )
    assert shared.searches() and shared.search_engine() == "pgvector"


def test_pgvector_needs_its_connection_string(monkeypatch) -> None:
    monkeypatch.delenv("VLGRAPH_PGVECTOR_DSN", raising=False)
    with pytest.raises(ValidationError, match="VLGRAPH_PGVECTOR_DSN"):
        SearchConfig(engine="pgvector")
    monkeypatch.setenv("VLGRAPH_PGVECTOR_DSN", "postgresql://u:p@db/v")
    assert SearchConfig(engine="pgvector").pgvector_dsn.get_secret_value() == (
        "postgresql://u:p@db/v"
    )
    assert "p@db" not in repr(SearchConfig(engine="pgvector"))  # a secret, never printed


def test_the_engine_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("VLGRAPH_SEARCH_ENGINE", "embedded")
    assert SearchConfig().engine == "embedded"
    monkeypatch.setenv("VLGRAPH_SEARCH_ENGINE", "faiss")
    with pytest.raises(ValueError, match="choose embedded or pgvector"):
        SearchConfig()


def test_limits_must_be_in_order() -> None:
    with pytest.raises(ValidationError, match="default_limit"):
        SearchConfig(default_limit=50, max_limit=20)
    for bad in ({"duplicate_threshold": 1.5}, {"max_limit": 0}, {"pgvector_table": "x;drop"}):
        with pytest.raises(ValidationError):
            SearchConfig(**bad)


def test_search_is_off_without_its_image_encoder_or_when_disabled() -> None:
    assert not profile(clip_image=None).searches()
    assert not profile(search={"enabled": False}).searches()


def test_encoders_must_be_embedding_models() -> None:
    with pytest.raises(ValidationError, match="is not an embedding model"):
        profile(search={"image_encoder": "vqa"})
