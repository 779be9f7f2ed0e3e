"""BLIP captioning: served through HTTP vs the raw in-process batched ``generate``, one run.

Full-size BLIP-base architecture with random weights (same compute as the real model; nothing
downloaded), a fixed number of new tokens, the same images for both paths.

    python bench/bench_blip_caption.py                       # full size, concurrency 1 8 32
    python bench/bench_blip_caption.py --size tiny --requests-per-level 8   # smoke run

Prints images/s, p50/p99 latency and the served/raw ratio per concurrency, and writes the
figures as JSON under bench/results/. The raw model runs twice: first with the machine to
itself, then again beside the idle app, so the cost of Ray's and Serve's own processes on the
same cores shows apart from the cost of the served path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import numpy as np
from PIL import Image

from bench.harness import use_replica_allocator_settings
from vlgraph.tiny import ensure_checkpoint

if TYPE_CHECKING:
    from vlgraph.config import AppConfig


def make_images(folder: Path, count: int) -> list[Path]:
    """``count`` distinct 640x480 JPEG photos-sized images of noise."""
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        pixels = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
        path = folder / f"bench{index}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def raw_images_per_second(checkpoint: Path, images: list[Path], batch: int, tokens: int) -> dict:
    """Throughput of the bare model: the replica's own core in process, no Ray (decode,
    processor, ``generate`` of ``tokens`` tokens), in batches."""
    from bench.paths import blip_caption_call
    from vlgraph.config import BlipCaptionConfig

    settings = BlipCaptionConfig(
        source=str(checkpoint),
        device="cpu",
        dtype="float32",
        generation={"max_new_tokens": tokens, "min_new_tokens": tokens},
    )
    caption = blip_caption_call(settings)
    jpegs = [path.read_bytes() for path in images]
    # Warm up with a full batch, as the served path is: first calls at a shape are slow.
    caption(jpegs[:batch])
    started = time.perf_counter()
    for start in range(0, len(jpegs), batch):
        caption(jpegs[start : start + batch])
    elapsed = time.perf_counter() - started
    del caption
    return {
        "images": len(jpegs),
        "batch": batch,
        "seconds": elapsed,
        "images_per_s": len(jpegs) / elapsed,
    }


async def drive(url: str, paths: list[str], concurrency: int, total: int) -> dict:
    """Closed-loop load: ``concurrency`` clients, ``total`` requests over the image list."""
    latencies: list[float] = []
    errors = 0
    next_index = 0

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal next_index, errors
        while next_index < total:
            index = next_index
            next_index += 1
            started = time.perf_counter()
            response = await client.post("/caption", json={"image_path": paths[index % len(paths)]})
            latencies.append(time.perf_counter() - started)
            errors += response.status_code != 200

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "concurrency": concurrency,
        "requests": total,
        "errors": errors,
        "seconds": elapsed,
        "images_per_s": total / elapsed,
        "p50_s": statistics.median(latencies),
        "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }


def serve_app(config: AppConfig) -> str:
    """Start Ray and serve ``config`` (see :func:`bench_config`); returns the base URL."""
    import ray
    from ray import serve

    from graphs.app import build_app

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": 8011})
    serve.run(build_app(config), name="vlgraph", route_prefix="/")
    return "http://127.0.0.1:8011"


def bench_config(
    checkpoint: Path,
    image_root: Path,
    batch: int,
    tokens: int,
    threads: int,
    tune: bool,
    max_ongoing: int,
    replicas: int,
) -> AppConfig:
    """The application the benchmark serves: BLIP alone on ``checkpoint``, no cache (every
    request reaches the model), the other models left out."""
    from vlgraph.config import TOP_LEVEL_MODELS, AppConfig

    return AppConfig.model_validate(
        {
            "profile": "bench",
            "access": {"mode": "open"},  # the benchmark's own machine
            "ingress": {
                "image_root": str(image_root),
                "deployment": {
                    "max_ongoing_requests": 512,
                    "ray_actor_options": {"num_cpus": 0.25},
                },
            },
            "models": {
                "blip": {
                    "source": str(checkpoint),
                    "device": "cpu",
                    "dtype": "float32",
                    "torch_threads": threads,
                    "tune_cpu_allocator": tune,
                    "generation": {"max_new_tokens": tokens, "min_new_tokens": tokens},
                    "batching": {"max_batch_size": batch, "batch_wait_timeout_s": 0.1},
                    "deployment": {
                        "num_replicas": replicas,
                        "max_ongoing_requests": max_ongoing,
                        "max_queued_requests": 1024,
                        "ray_actor_options": {"num_cpus": 1 / replicas},
                    },
                },
                "blip2": None,
                "gemma": None,
                "intern_vlm": None,
            },
            **dict.fromkeys(TOP_LEVEL_MODELS),
            "cache": {"backend": "none"},
        }
    )


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the figures with the command that made them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--requests-per-level",
        type=int,
        default=0,
        help="requests per level (default: 4 x concurrency, at least 8)",
    )
    parser.add_argument("--batch", type=int, default=8, help="max_batch_size, also the raw batch")
    parser.add_argument(
        "--max-ongoing",
        type=int,
        default=64,
        help="the replica's max_ongoing_requests (requests past it wait in "
        "the ingress's router instead of the replica's batch queue)",
    )
    parser.add_argument("--tokens", type=int, default=20, help="new tokens per caption (fixed)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the raw model")
    parser.add_argument("--replicas", type=int, default=1, help="BLIP replicas")
    parser.add_argument(
        "--replica-threads",
        type=int,
        default=0,
        help="torch threads per replica (default: --threads divided over the replicas)",
    )
    parser.add_argument("--cache-dir", default=".cache/vlgraph/checkpoints")
    parser.add_argument("--output", default="bench/results/blip_caption.json")
    parser.add_argument(
        "--no-allocator-tuning",
        action="store_true",
        help="glibc malloc defaults for both raw and served (replicas' tune_cpu_allocator off)",
    )
    args = parser.parse_args(argv)
    if not args.no_allocator_tuning:
        use_replica_allocator_settings()
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])

    import torch

    torch.set_num_threads(args.threads)
    checkpoint = ensure_checkpoint("blip-caption", args.cache_dir, args.size)
    levels = {c: args.requests_per_level or max(8, 4 * c) for c in args.concurrency}
    with tempfile.TemporaryDirectory() as folder:
        images = make_images(Path(folder), max(levels.values()))
        raw = raw_images_per_second(checkpoint, images, args.batch, args.tokens)
        config = bench_config(
            checkpoint,
            Path(folder),
            args.batch,
            args.tokens,
            args.replica_threads or max(1, args.threads // args.replicas),
            not args.no_allocator_tuning,
            args.max_ongoing,
            args.replicas,
        )
        url = serve_app(config)
        # Warm the HTTP path and the replica with one full batch.
        asyncio.run(drive(url, [p.name for p in images], args.batch, args.batch))
        served = []
        for concurrency, total in levels.items():
            served.append(asyncio.run(drive(url, [p.name for p in images], concurrency, total)))
        # The same raw run again, now beside the idle app: Ray's and Serve's own processes
        # (GCS, raylet, controller, proxy, idle replicas) share this machine's cores.
        raw_beside_app = raw_images_per_second(checkpoint, images, args.batch, args.tokens)
    print(
        f"raw in-process generate, batch {args.batch}, machine to itself: "
        f"{raw['images_per_s']:.3f} images/s"
    )
    print(
        f"raw in-process generate, batch {args.batch}, beside the idle app: "
        f"{raw_beside_app['images_per_s']:.3f} images/s"
    )
    for result in served:
        result["served_over_raw"] = result["images_per_s"] / raw["images_per_s"]
        result["served_over_raw_beside_app"] = (
            result["images_per_s"] / raw_beside_app["images_per_s"]
        )
        print(
            f"concurrency {result['concurrency']:3d}: {result['images_per_s']:.3f} images/s  "
            f"p50 {result['p50_s']:.2f} s  p99 {result['p99_s']:.2f} s  "
            f"served/raw {result['served_over_raw']:.2f} "
            f"(beside the app {result['served_over_raw_beside_app']:.2f})  "
            f"errors {result['errors']}"
        )
    report = {
        "benchmark": "blip_caption",
        "command": command,
        "size": args.size,
        "tokens": args.tokens,
        "batch": args.batch,
        "threads": args.threads,
        "replicas": args.replicas,
        "replica_threads": args.replica_threads or max(1, args.threads // args.replicas),
        "allocator_tuning": not args.no_allocator_tuning,
        "max_ongoing": args.max_ongoing,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "raw": raw,
        "raw_beside_app": raw_beside_app,
        "served": served,
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    print(f"command: {command}\nwrote {output}")


if __name__ == "__main__":
    main()
