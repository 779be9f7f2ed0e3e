"""Search for several machines: the Redis store and the pgvector engine (a real redis-server
and a real PostgreSQL), two ingress replicas. Both replicas find what either stored; with
PostgreSQL stopped, search answers 503 with Retry-After while uploads go on, and once it is
back every upload made meanwhile is found."""

from __future__ import annotations

import io
import time
from pathlib import Path

import httpx
import pytest

from graphs.app import build_app
from tests.support.common import (
    RedisServer,
    make_test_config,
    noise_image,
    wait_until_healthy,
)
from tests.support.postgres import PostgresServer
from tests.support.world_checks import held_out, uploadable
from vlgraph.config import AppConfig

pytestmark = pytest.mark.integration


def shared_app(
    checkpoint_cache: Path, image_root: Path, redis_port: int, dsn: str, table: str
) -> AppConfig:
    """BLIP and CLIP, the Redis store, pgvector, two ingress replicas, no result cache."""
    args = make_test_config(checkpoint_cache, image_root).model_dump(mode="json")
    args["models"].update(blip2=None, gemma=None, intern_vlm=None)
    args.update(vqa=None, sd=None, sdxl=None)
    args["cache"] = {"backend": "none"}
    args["store"] = {
        "backend": "redis",
        "redis_host": "127.0.0.1",
        "redis_port": redis_port,
        "require_fsync": False,
        "namespace": f"store-{table.removesuffix('_new')}",
    }
    args["search"] = {
        "engine": "pgvector",
        "pgvector_dsn": dsn,
        "pgvector_table": table,
        "timeout_s": 2.0,
    }
    args["ingress"]["deployment"]["num_replicas"] = 2
    return AppConfig.model_validate(args)


def upload(url: str, data: bytes, name: str) -> dict:
    response = httpx.post(
        f"{url}/upload", files={"image": (name, data, "application/octet-stream")}, timeout=120
    )
    assert response.status_code == 200, response.text
    return response.json()


def found_ids(url: str) -> set[str]:
    """Every image a search that admits everything finds (one page of up to 100)."""
    response = httpx.post(f"{url}/api/search", json={"text": "a picture", "limit": 100}, timeout=60)
    assert response.status_code == 200, response.text
    return {result["image_id"] for result in response.json()["results"]}


def test_two_replicas_share_pgvector_and_an_outage_loses_no_upload(
    ray_instance: int,
    checkpoint_cache: Path,
    image_root: Path,
    redis_server: RedisServer,
    postgres_server: PostgresServer,
) -> None:
    from ray import serve

    table = f"shared_{int(time.time() * 1000)}"
    config = shared_app(checkpoint_cache, image_root, redis_server.port, postgres_server.dsn, table)
    url = f"http://127.0.0.1:{ray_instance}/shared-search"
    serve.run(build_app(config), name="shared-search", route_prefix="/shared-search")
    try:
        wait_until_healthy(url)
        pictures = uploadable(held_out(6, offset=700))
        stored = {upload(url, p.data, p.filename)["image_id"] for p in pictures[:3]}
        # Requests go to either replica: each of several searches finds every upload.
        for _ in range(6):
            assert found_ids(url) == stored

        postgres_server.stop()
        try:
            during = {upload(url, p.data, p.filename)["image_id"] for p in pictures[3:]}
            refused = httpx.post(f"{url}/api/search", json={"text": "a star"}, timeout=60)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "search_index_unavailable"
            assert int(refused.headers["Retry-After"]) >= 1
            assert "postgres" in refused.json()["error"]["message"].lower()
        finally:
            postgres_server.start()
        for _ in range(6):
            assert found_ids(url) == stored | during

        # The vectors live in the store: a new table (an index lost) is filled from it.
        lost = shared_app(
            checkpoint_cache, image_root, redis_server.port, postgres_server.dsn, table + "_new"
        )
        serve.run(build_app(lost), name="shared-search", route_prefix="/shared-search")
        wait_until_healthy(url)
        assert found_ids(url) == stored | during
        buffer = io.BytesIO()
        noise_image(31).save(buffer, format="PNG")
        assert upload(url, buffer.getvalue(), "noise.png")["duplicate_of"] is None
    finally:
        serve.delete("shared-search")
