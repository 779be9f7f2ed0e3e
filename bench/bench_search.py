"""Search benchmark: latency of ``POST /api/search`` at 10k and 100k stored vectors through
HTTP (the query's encoding excluded: its text is in the result cache), the embedded index's
own latency and recall@10 against exact search, its size on disk, and bulk indexing
(``vlgraph-index``) against the raw batched CLIP encoder.

    python bench/bench_search.py                      # 10k and 100k vectors
    python bench/bench_search.py --smoke              # CI: proves it runs

The stored vectors are 512-dimension unit vectors drawn around 200 centres (CLIP's size;
clustered like real embeddings), written straight into a SQLite store in one transaction; the
queries are the served text encoder's vectors of short descriptions. Figures are medians of
one run on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import shlex
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import numpy as np

from bench.harness import RESULTS_DIR, ServedApp
from vlgraph.config import TOP_LEVEL_MODELS, AppConfig
from vlgraph.image_store import ImageVector, to_micros, utc_now
from vlgraph.model_source import checkpoint_fingerprint, resolve_model_path
from vlgraph.sqlite_image_store import SqliteImageStore

DIMENSION = 512
CENTRES = 200
QUERIES = (
    "a red circle on a white background",
    "ein blaues Quadrat auf gelbem Hintergrund",
    "un triangle vert sur fond noir",
    "una estrella naranja sobre fondo blanco",
    "a purple star",
    "a yellow square on a black background",
)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def bench_config(
    checkpoints: Path, data_dir: Path, image_root: Path, image_encoder: str = "tiny:clip"
) -> AppConfig:
    """CLIP's two encoders and search alone; the memory cache keeps the query vectors."""
    encoder = {
        "device": "cpu",
        "torch_threads": 1,
        "batching": {"max_batch_size": 32, "batch_wait_timeout_s": 0.01},
        "deployment": {"max_ongoing_requests": 64, "ray_actor_options": {"num_cpus": 0.5}},
    }
    return AppConfig.model_validate(
        {
            "profile": "bench",
            "checkpoint_cache_dir": str(checkpoints),
            "access": {"mode": "open"},
            "admin": {"api_key": "bench-admin-key", "debug": False},
            "ingress": {
                "image_root": str(image_root),
                "max_body_bytes": 64 * 1024 * 1024,
                "deployment": {
                    "max_ongoing_requests": 256,
                    "ray_actor_options": {"num_cpus": 0.25},
                },
            },
            # BLIP is always served (the documents' captioner); tiny and idle here.
            "models": {
                "blip": {"source": "tiny:blip-caption", "device": "cpu"},
                "blip2": None,
                "gemma": None,
                "intern_vlm": None,
            },
            **dict.fromkeys(TOP_LEVEL_MODELS),
            "clip_image": {"source": image_encoder, **encoder},
            "clip_text": {"source": "tiny:clip-multilingual", **encoder},
            "cache": {"backend": "memory"},
            "store": {"backend": "sqlite", "data_dir": str(data_dir)},
            "search": {"engine": "embedded", "save_interval_s": 1.0},
        }
    )


def fill_store(data_dir: Path, count: int, fingerprint: str, rng: np.random.Generator) -> None:
    """``count`` records and vectors written straight into the store's tables in one
    transaction (a benchmark fixture: uploads would fsync each one)."""
    store = SqliteImageStore(data_dir)
    asyncio.run(store.census())  # creates the schema
    centres = rng.standard_normal((CENTRES, DIMENSION))
    connection = sqlite3.connect(data_dir / "vlgraph.sqlite3")
    start = to_micros(utc_now())
    with connection:
        for first in range(0, count, 10_000):
            size = min(10_000, count - first)
            values = centres[rng.integers(0, CENTRES, size)] + 0.5 * rng.standard_normal(
                (size, DIMENSION)
            )
            values /= np.linalg.norm(values, axis=1, keepdims=True)
            ids = [uuid.uuid4().hex for _ in range(size)]
            kinds = ["upload", "generated", "indexed"]
            connection.executemany(
                "INSERT INTO images (image_id, filename, media_type, caption, created_us, kind, "
                "prompt, file_name, model) VALUES (?, NULL, 'image/png', ?, ?, ?, NULL, ?, NULL)",
                [
                    (image_id, f"image {first + n}", start + first + n, kinds[n % 3], "x.png")
                    for n, image_id in enumerate(ids)
                ],
            )
            connection.executemany(
                "INSERT INTO vectors (image_id, fingerprint, vector) VALUES (?, ?, ?)",
                [
                    (image_id, fingerprint, ImageVector(vector, fingerprint).to_bytes())
                    for image_id, vector in zip(ids, values, strict=True)
                ],
            )
    connection.close()


def stored_matrix(data_dir: Path) -> tuple[np.ndarray, list[str]]:
    connection = sqlite3.connect(data_dir / "vlgraph.sqlite3")
    rows = connection.execute("SELECT image_id, vector FROM vectors ORDER BY seq").fetchall()
    connection.close()
    matrix = np.stack([ImageVector.values_from(blob) for _, blob in rows])
    return matrix, [image_id for image_id, _ in rows]


def folder_size_mib(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.glob("*") if path.is_file()) / 2**20


def measure_size(app: ServedApp, count: int, args: argparse.Namespace, checkpoints: Path) -> dict:
    """Serve a store of ``count`` vectors and measure search through HTTP and in process."""
    from ray import serve

    from graphs.app import build_app
    from vlgraph.embedded_vector_index import EmbeddedVectorIndex
    from vlgraph.search_config import SearchConfig
    from vlgraph.vector_index import SearchFilter, catch_up, unit

    rng = np.random.default_rng(count)
    work = Path(tempfile.mkdtemp(prefix=f"bench-search-{count}-"))
    clip = resolve_model_path("clip_image", "tiny:clip", checkpoints, None)
    fingerprint = checkpoint_fingerprint(clip)
    started = time.perf_counter()
    fill_store(work / "data", count, fingerprint, rng)
    filled_s = time.perf_counter() - started

    config = bench_config(checkpoints, work / "data", work / "images")
    url = app.run(build_app(config), f"search-{count}")
    with httpx.Client(base_url=url, timeout=600) as client:
        started = time.perf_counter()
        first = client.post("/api/search", json={"text": QUERIES[0], "limit": 10})
        first_search_s = time.perf_counter() - started
        assert first.status_code == 200, first.text
        for text in QUERIES:  # each query's vector into the result cache
            assert client.post("/api/search", json={"text": text, "limit": 10}).status_code == 200
        seconds = []
        for n in range(args.queries):
            body = {"text": QUERIES[n % len(QUERIES)], "limit": 10}
            began = time.perf_counter()
            response = client.post("/api/search", json=body)
            seconds.append(time.perf_counter() - began)
            assert response.status_code == 200, response.text
        floor = []  # a route that calls no model and reads no store: Serve's own cost
        for _ in range(args.queries):
            began = time.perf_counter()
            assert client.get("/api/models").status_code == 200
            floor.append(time.perf_counter() - began)
        filtered = []
        for n in range(max(20, args.queries // 5)):
            body = {"text": QUERIES[n % len(QUERIES)], "limit": 10, "kinds": ["generated"]}
            began = time.perf_counter()
            assert client.post("/api/search", json=body).status_code == 200
            filtered.append(time.perf_counter() - began)
    serve.delete(f"search-{count}")

    # The same index in this process: its own latency, recall@10 and size on disk.
    matrix, ids = stored_matrix(work / "data")
    store = SqliteImageStore(work / "data")
    index = EmbeddedVectorIndex(work / "own-index", SearchConfig())  # as served
    began = time.perf_counter()
    asyncio.run(catch_up(index, store))
    build_s = time.perf_counter() - began
    # Queries drawn as the stored vectors are (a centre plus noise); a stored vector plus
    # noise of this scale would be a random direction, which no HNSW serves well.
    centres = np.random.default_rng(count).standard_normal((CENTRES, DIMENSION))
    queries = [
        unit(centres[rng.integers(CENTRES)] + 0.5 * rng.standard_normal(DIMENSION))
        for _ in range(100)
    ]
    own, hits = [], 0
    for query in queries:
        began = time.perf_counter()
        found = asyncio.run(index.nearest(query, SearchFilter(), 10))
        own.append(time.perf_counter() - began)
        exact = {ids[i] for i in np.argsort(-(matrix @ query))[:10]}
        hits += len({r.image_id for r in found} & exact)
    asyncio.run(index.close())
    return {
        "vectors": count,
        "fill_s": round(filled_s, 1),
        "first_search_s (index built from the store)": round(first_search_s, 1),
        "http_p50_ms": round(statistics.median(seconds) * 1000, 2),
        "http_p99_ms": round(percentile(seconds, 0.99) * 1000, 2),
        "http_floor_p50_ms (GET /api/models, no search)": round(statistics.median(floor) * 1000, 2),
        "http_filtered_p50_ms (kinds: generated, a third)": round(
            statistics.median(filtered) * 1000, 2
        ),
        "index_p50_ms": round(statistics.median(own) * 1000, 3),
        "index_p99_ms": round(percentile(own, 0.99) * 1000, 3),
        "recall_at_10": round(hits / (10 * len(queries)), 4),
        "index_build_s": round(build_s, 1),
        "index_on_disk_mib": round(folder_size_mib(work / "own-index"), 1),
        "store_on_disk_mib": round((work / "data" / "vlgraph.sqlite3").stat().st_size / 2**20, 1),
    }


def measure_bulk(app: ServedApp, count: int, checkpoints: Path, size: str) -> dict:
    """``vlgraph-index`` of ``count`` world pictures against the raw batched encoder, the
    tiny CLIP or the real ViT-B/32 architecture with random weights (``size``)."""
    from PIL import Image
    from ray import serve
    from sentence_transformers import SentenceTransformer

    from graphs.app import build_app
    from vlgraph.tiny import ensure_checkpoint
    from vlgraph.tiny.world import all_scenes, draw

    clip = str(ensure_checkpoint("clip", checkpoints, size))
    work = Path(tempfile.mkdtemp(prefix="bench-index-"))
    folder = work / "pictures"
    folder.mkdir()
    rng = random.Random(5)
    scenes = all_scenes()
    for n in range(count):
        draw(scenes[n % len(scenes)], rng, 96).save(folder / f"p{n}.png")
    config = bench_config(checkpoints, work / "data", work / "images", clip)
    url = app.run(build_app(config), "search-bulk")
    command = [
        sys.executable,
        "-m",
        "vlgraph.index_cli",
        str(folder),
        "--url",
        url,
        "--api-key",
        "bench-admin-key",
        "--batch",
        "32",
        "--quiet",
    ]
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    served_s = time.perf_counter() - began
    assert done.returncode == 0, done.stderr
    serve.delete("search-bulk")

    import torch

    torch.set_num_threads(1)
    model = SentenceTransformer(clip, device="cpu")
    pictures = [Image.open(io.BytesIO((folder / f"p{n}.png").read_bytes())) for n in range(count)]
    model.encode(pictures[:32], batch_size=32)
    began = time.perf_counter()
    for start in range(0, count, 32):
        decoded = [picture.convert("RGB") for picture in pictures[start : start + 32]]
        model.encode(decoded, batch_size=32)
    raw_s = time.perf_counter() - began
    return {
        "clip": size,
        "images": count,
        "served_images_per_s (vlgraph-index, batch 32, one encoder replica)": round(
            count / served_s, 1
        ),
        "raw_images_per_s (in-process encode, batch 32, 1 torch thread)": round(count / raw_s, 1),
        "served_over_raw": round(raw_s / served_s, 2),
        "summary": done.stdout.strip(),
    }


def main(argv: list[str] | None = None) -> None:
    """Run the search benchmark and print its figures with the command that made them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--bulk-images", type=int, default=512)
    parser.add_argument(
        "--bulk-sizes",
        nargs="+",
        choices=["tiny", "full"],
        default=["tiny", "full"],
        help="CLIP for bulk indexing: the tiny one, and ViT-B/32's size with random weights",
    )
    parser.add_argument("--cache-dir", type=Path, help="default: the service's checkpoint cache")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CI: 500 vectors, 20 queries, 16 files through vlgraph-index with the tiny CLIP",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.queries, args.bulk_images, args.bulk_sizes = [500], 20, 16, ["tiny"]
    command = "python bench/bench_search.py " + shlex.join(argv or sys.argv[1:])
    from vlgraph.config import resolve_checkpoint_cache_dir
    from vlgraph.tiny import ensure_checkpoint

    checkpoints = args.cache_dir or resolve_checkpoint_cache_dir(None)
    for family in ("clip", "clip-multilingual"):
        ensure_checkpoint(family, checkpoints)
    app = ServedApp(mode="classic")
    report: dict[str, Any] = {"command": command, "cpus": os.cpu_count(), "sizes": []}
    for count in args.sizes:
        report["sizes"].append(measure_size(app, count, args, checkpoints))
        print(json.dumps(report["sizes"][-1]), flush=True)
    report["bulk_indexing"] = []
    for size in args.bulk_sizes if args.bulk_images else []:
        report["bulk_indexing"].append(measure_bulk(app, args.bulk_images, checkpoints, size))
        print(json.dumps(report["bulk_indexing"][-1]), flush=True)
    print(f"== search  ({command})")
    print(json.dumps(report, indent=2))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "search.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
