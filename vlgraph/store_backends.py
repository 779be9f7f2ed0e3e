"""The image store a profile names: :func:`make_image_store` picks the backend."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlgraph.image_store import ImageStore
from vlgraph.redis_image_store import RedisImageStore
from vlgraph.sqlite_image_store import SqliteImageStore

if TYPE_CHECKING:
    from vlgraph.config import StoreConfig


def make_image_store(config: StoreConfig) -> ImageStore:
    """The store a :class:`~vlgraph.config.StoreConfig` describes."""
    if config.backend == "redis":
        return RedisImageStore(
            host=config.redis_host,
            port=config.redis_port,
            db=config.redis_db,
            timeout_s=config.timeout_s,
            namespace=config.namespace,
            require_fsync=config.require_fsync,
        )
    if config.backend == "sqlite":
        return SqliteImageStore(config.resolved_data_dir())
    raise ValueError(f"unknown image store backend {config.backend!r}")
