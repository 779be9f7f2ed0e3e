"""Image embeddings through vlgraph's OpenAI-compatible ``POST /v1/embeddings``, against its
own ``POST /encode_image`` and against the infinity-emb peer's ``POST /embeddings``, on the
same images and the same full-size CLIP checkpoint, in one run.

    python bench/bench_openai_embeddings.py              # full size: c = 1, 4, 16; 3 rounds
    python bench/bench_openai_embeddings.py --smoke      # tiny checkpoint, CI: proves it runs
    bash bench/peers/infinity_env.sh                     # the peer's environment, once

What is compared (one image per request, 224 px JPEGs, base64 in JSON bodies encoded once
before timing, closed-loop clients):

(a) vlgraph ``/v1/embeddings`` (``{"model": "clip_image", "input": ["data:image/jpeg;base64,
    ..."], "modality": "image", "encoding_format": "float"}``) against ``/encode_image``
    (``{"image_b64": ...}``) on the same served app, the same encoder deployment: goal, /v1's
    items/s at concurrency 16 at least 0.95 x /encode_image's.
(b) vlgraph ``/v1/embeddings`` against infinity's ``/embeddings`` at each level: goal, vlgraph
    at least as fast at every level.

vlgraph is ``configs/local.yaml`` with only the CLIP encoders, on full-size random-weight
checkpoints: the image encoder as ``bench/paths.py``'s ``clip_image`` path serves it (batches
of up to 16, no result cache, torch ``--threads`` threads) and the idle text encoder of the
same space (``/v1/embeddings`` serves the pair; the ingress also needs a tiny idle BLIP), in
vlgraph-serve's throughput mode. The peer is ``infinity_emb v2 --engine torch --device cpu
--batch-size 16`` on the checkpoint's ``0_CLIPModel`` folder, in its own environment
(``bench/peers/infinity_env.sh``), with ``OMP_NUM_THREADS=--threads`` and glibc's default
malloc as its users run it (``--peer-replica-allocator``: vlgraph's replica settings).

Order, so that neither side shares the two cores with the other's idle processes nor gets
the quieter part of the run: the peer first (Ray not started), then Ray and vlgraph, then Ray
shut down and the peer again (peer, vlgraph, peer: a drift of the machine's load over the run
weighs on both sides alike). Each side, once up, is left alone 10 s, gets the same warm-up
(32 requests, 16 at once), then ``--rounds`` rounds of every level; within a vlgraph round
the two routes alternate at each level, in an order that flips every round (ABBA). The
figures are medians over the rounds (the peer's over both of its phases): items/s, p50 and
p99 each the median of the rounds' values. Printed per level with the ratios and the
command; written to ``bench/results/openai_embeddings.json`` (git-ignored, as every
benchmark's results), with every round's items/s, the load average at each phase, each
server's peak memory, and the cosine between the servers' vectors for one image (the same
model must give the same vector).

``--smoke`` only proves that the benchmark runs (a test does, so it cannot rot; its figures
mean nothing): the tiny CLIP checkpoint, levels 1 and 4 with 2 and 4 requests, one round, 4
small images, one warm-up request, and the peer only once and only where its environment is
installed.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import io
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import numpy as np
from PIL import Image

from bench.harness import (
    RESULTS_DIR,
    Level,
    Request,
    ServedApp,
    machine,
    peak_memory_mib,
    sweep,
    write_report,
)
from bench.paths import PATHS, BenchPath, raw_batch, shared_app_config
from bench.peers import infinity
from vlgraph.serve_cli import ServeMode
from vlgraph.tiny import ensure_checkpoint

NAME = "openai_embeddings"
#: The served app's name and the ``model`` of every /v1 request.
APP_NAME = "bench_openai_embeddings"
V1_MODEL = "clip_image"
#: vlgraph's bench paths whose models the served app has (checkpoint families, overrides):
#: the CLIP image encoder and the text encoder of the same space (``/v1/embeddings`` serves
#: the pair), each as the ``clip_image`` and ``clip_text`` benchmarks serve it.
CLIP_PATHS = [PATHS["clip_image"], PATHS["clip_text"]]
#: Goal (a): /v1 at this concurrency at least RATIO_GOAL x /encode_image.
RATIO_CONCURRENCY = 16
RATIO_GOAL = 0.95

FULL_LEVELS = (1, 4, 16)
SMOKE_LEVELS = {1: 2, 4: 4}
FULL_IMAGES, SMOKE_IMAGES = 64, 4
FULL_SIDE, SMOKE_SIDE = 224, 64
JSON_HEADERS = {"content-type": "application/json"}

V1 = "vlgraph /v1/embeddings"
ENCODE_IMAGE = "vlgraph /encode_image"
PEER = "infinity /embeddings"


# ---- inputs and requests


def photo_like_jpegs(count: int, side: int) -> list[bytes]:
    """``count`` distinct ``side``-pixel JPEGs: smooth random colour fields (a small noise
    image scaled up) with fine grain, about the size of a photo's JPEG at that side."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        coarse = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((side, side), Image.Resampling.BICUBIC), np.int16)
        grain = rng.integers(-12, 12, smooth.shape, dtype=np.int16)
        pixels = np.clip(smooth + grain, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


def data_uri(jpeg: bytes) -> str:
    """``jpeg`` as a ``data:image/jpeg;base64,...`` URI."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()


def v1_body(jpeg: bytes) -> dict[str, Any]:
    """vlgraph's ``/v1/embeddings`` body for one image (infinity's image form)."""
    return {
        "model": V1_MODEL,
        "input": [data_uri(jpeg)],
        "modality": "image",
        "encoding_format": "float",
    }


def encode_image_body(jpeg: bytes) -> dict[str, Any]:
    """vlgraph's ``/encode_image`` body for one image."""
    return {"image_b64": base64.b64encode(jpeg).decode()}


def peer_body(jpeg: bytes) -> dict[str, Any]:
    """infinity's ``/embeddings`` body for one image."""
    return {
        "model": infinity.SERVED_MODEL,
        "input": [data_uri(jpeg)],
        "modality": "image",
        "encoding_format": "float",
    }


@dataclass(frozen=True)
class Route:
    """A route under test: its label, its path and one JSON body per image, encoded once
    (the client's share of the two cores is then the same small one for every server)."""

    label: str
    path: str
    bodies: list[bytes]
    #: Where the vector is in an answer: ``data[0].embedding`` or ``embedding``.
    openai_shape: bool

    @classmethod
    def build(
        cls, label: str, path: str, body: Callable[[bytes], dict], images: list[bytes]
    ) -> Route:
        """The route with ``body(image)`` of every image, as JSON bytes."""
        bodies = [json.dumps(body(image)).encode() for image in images]
        return cls(label, path, bodies, openai_shape=path != "/encode_image")

    def request(self, index: int) -> Request:
        """The request carrying image ``index`` (cycled)."""
        body = self.bodies[index % len(self.bodies)]
        return Request("POST", self.path, {"content": body, "headers": JSON_HEADERS})

    def vector(self, url: str, index: int = 0) -> list[float]:
        """The vector the server answers for image ``index``; raises on a non-2xx answer."""
        request = self.request(index)
        response = httpx.post(url + request.path, timeout=600, **request.options)
        answer = response.raise_for_status().json()
        return answer["data"][0]["embedding"] if self.openai_shape else answer["embedding"]


# ---- measuring


@dataclass
class Measured:
    """Every round's :class:`Level` of every route, by label, then concurrency."""

    rounds: dict[str, dict[int, list[Level]]] = field(default_factory=dict)

    def add(self, label: str, level: Level) -> None:
        """Record one round of one level."""
        self.rounds.setdefault(label, {}).setdefault(level.concurrency, []).append(level)

    def medians(self, label: str) -> list[Level]:
        """The route's median level per concurrency (see :func:`median_level`)."""
        return [median_level(levels) for _, levels in sorted(self.rounds.get(label, {}).items())]

    def items_per_s(self) -> dict[str, dict[int, list[float]]]:
        """Every round's items/s, by label and concurrency (for the JSON report)."""
        return {
            label: {
                c: [round(level.items_per_s, 3) for level in levels] for c, levels in by.items()
            }
            for label, by in self.rounds.items()
        }


def median_level(levels: list[Level]) -> Level:
    """One level of several rounds: requests, items, errors and seconds added up; items/s,
    p50 and p99 each the median of the rounds'."""
    return Level(
        concurrency=levels[0].concurrency,
        requests=sum(level.requests for level in levels),
        items=sum(level.items for level in levels),
        errors=sum(level.errors for level in levels),
        seconds=sum(level.seconds for level in levels),
        items_per_s=statistics.median(level.items_per_s for level in levels),
        p50_s=statistics.median(level.p50_s for level in levels),
        p99_s=statistics.median(level.p99_s for level in levels),
    )


def warm(url: str, routes: list[Route], requests: int) -> None:
    """``requests`` requests on each route at up to 16 at once (full batches: every batch
    shape the timed levels reach has run once)."""
    for route in routes:
        sweep(url, route.request, {min(requests, RATIO_CONCURRENCY): requests}, 0)


def measure_rounds(
    url: str, routes: list[Route], levels: dict[int, int], rounds: int, measured: Measured
) -> None:
    """``rounds`` rounds of every level on every route of one server; at each level the
    routes take turns, in an order that flips every round."""
    for round_index in range(rounds):
        order = routes if round_index % 2 == 0 else routes[::-1]
        for concurrency, total in levels.items():
            for route in order:
                (level,) = sweep(url, route.request, {concurrency: total}, 0)
                measured.add(route.label, level)


def load_average() -> float:
    """The machine's one-minute load average."""
    return round(os.getloadavg()[0], 2)


def cosine(first: list[float], second: list[float]) -> float:
    """Cosine similarity of two vectors."""
    a, b = np.asarray(first), np.asarray(second)
    return round(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))), 6)


# ---- the two servers


@dataclass
class Run:
    """One benchmark run's settings, inputs and what each phase measured."""

    args: argparse.Namespace
    command: str
    #: By profile key: ``clip_image``, ``clip_text``.
    checkpoints: dict[str, Path]
    folder: Path
    images: list[bytes]
    levels: dict[int, int]
    rounds: int
    warm_up: int
    #: Seconds each server is left alone once up, before its first request (start-up's
    #: stragglers: Ray's prestarted workers, lazy imports).
    settle_s: float
    measured: Measured = field(default_factory=Measured)
    phases: list[dict[str, Any]] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)
    vectors: dict[str, list[float]] = field(default_factory=dict)
    #: The served image encoder's ``max_batch_size`` (once vlgraph is measured).
    vlgraph_batch: int | None = None

    def route(self, label: str) -> Route:
        """The route ``label`` on these images."""
        path, body = {
            V1: ("/v1/embeddings", v1_body),
            ENCODE_IMAGE: ("/encode_image", encode_image_body),
            PEER: ("/embeddings", peer_body),
        }[label]
        return Route.build(label, path, body, self.images)

    def settle(self) -> None:
        """Leave the server that just came up alone for :attr:`settle_s`."""
        time.sleep(self.settle_s)

    def phase(self, name: str) -> dict[str, Any]:
        """Record the start of a phase (time, load average) and return its record."""
        record = {"phase": name, "started": time.strftime("%H:%M:%S"), "load_1m": load_average()}
        self.phases.append(record)
        print(f"-- {name} (load {record['load_1m']})", flush=True)
        return record


def measure_peer(run: Run, name: str) -> None:
    """Start the peer, warm it, measure its rounds, record its memory; stop it."""
    record = run.phase(name)
    route = run.route(PEER)
    args = run.args
    with infinity.infinity_server(
        run.checkpoints["clip_image"] / "0_CLIPModel",
        run.folder,
        venv=Path(args.infinity_venv),
        batch_size=args.peer_batch_size,
        threads=args.threads,
        replica_allocator=args.peer_replica_allocator,
        warm_up=not args.smoke,
    ) as server:
        run.settle()
        run.vectors.setdefault(PEER, route.vector(server.url))
        warm(server.url, [route], run.warm_up)
        measure_rounds(server.url, [route], run.levels, run.rounds, run.measured)
        peaks = run.memory.setdefault("infinity", [])
        peaks.append(round(peak_memory_mib(server.pid), 1))
    record.update(ended=time.strftime("%H:%M:%S"), load_1m_end=load_average())


def measure_vlgraph(run: Run) -> None:
    """Start Ray and the served app, check /v1/embeddings is there, warm both routes, measure
    their rounds, record the replicas' memory; shut Ray down."""
    from graphs.app import build_app

    record = run.phase("vlgraph")
    routes = [run.route(V1), run.route(ENCODE_IMAGE)]
    served_app = ServedApp(run.args.serve_mode)
    try:
        paths = served_paths(run.args.batch_wait_s)
        config = shared_app_config(paths, run.checkpoints, run.folder, run.args.threads)
        run.vlgraph_batch = raw_batch(paths[0], config)
        url = served_app.run(build_app(config), APP_NAME)
        run.settle()
        require_v1_route(url, routes[0])
        for route in routes:
            run.vectors[route.label] = route.vector(url)
        warm(url, routes, run.warm_up)
        measure_rounds(url, routes, run.levels, run.rounds, run.measured)
        run.memory["replicas"] = served_app.replica_peaks_mib(APP_NAME)
    finally:
        stop_ray()
    record.update(ended=time.strftime("%H:%M:%S"), load_1m_end=load_average())


def served_paths(batch_wait_s: float | None) -> list[BenchPath]:
    """:data:`CLIP_PATHS`, the image encoder's ``batch_wait_timeout_s`` set to
    ``batch_wait_s`` unless ``None`` (the profile's, 0.02 s)."""
    if batch_wait_s is None:
        return CLIP_PATHS
    image, *others = CLIP_PATHS
    wait = {"clip_image": {"batching": {"batch_wait_timeout_s": batch_wait_s}}}
    return [dataclasses.replace(image, overrides={**image.overrides, **wait}), *others]


def require_v1_route(url: str, route: Route) -> None:
    """Fail with a clear message where the served ingress has no ``POST /v1/embeddings``."""
    request = route.request(0)
    response = httpx.post(url + request.path, timeout=600, **request.options)
    if response.status_code in (404, 405):
        raise SystemExit(f"the served ingress has no POST {route.path} ({response.status_code})")
    if not response.is_success:
        raise SystemExit(f"POST {route.path} answered {response.status_code}: {response.text}")


def stop_ray() -> None:
    """Shut this process's local Ray down: its processes, the replicas and HAProxy leave the
    cores in about 2 s. (``serve.shutdown()`` first would wait 30 s for the controller in
    throughput mode, for nothing: the whole local instance goes.)"""
    import ray

    if ray.is_initialized():
        ray.shutdown()


# ---- the report


def comparison(measured: Measured) -> list[dict[str, Any]]:
    """Per level: /v1 over /encode_image and /v1 over the peer (medians; ``None`` where a
    side was not measured)."""
    at = {
        label: {level.concurrency: level for level in measured.medians(label)}
        for label in (V1, ENCODE_IMAGE, PEER)
    }
    rows = []
    for concurrency, v1 in sorted(at[V1].items()):
        row: dict[str, Any] = {"concurrency": concurrency}
        for key, other in (("v1_over_encode_image", ENCODE_IMAGE), ("v1_over_infinity", PEER)):
            level = at[other].get(concurrency)
            row[key] = round(v1.items_per_s / level.items_per_s, 3) if level else None
        rows.append(row)
    return rows


def goals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether each goal is met (``None`` where it was not measured)."""
    at_ratio = next((row for row in rows if row["concurrency"] == RATIO_CONCURRENCY), None)
    ratio = at_ratio["v1_over_encode_image"] if at_ratio else None
    peer = {row["concurrency"]: row["v1_over_infinity"] for row in rows}
    peer_measured = all(value is not None for value in peer.values()) and bool(peer)
    return {
        "v1_over_encode_image": {
            "concurrency": RATIO_CONCURRENCY,
            "ratio": ratio,
            "target": RATIO_GOAL,
            "met": None if ratio is None else ratio >= RATIO_GOAL,
        },
        "v1_over_infinity": {
            "ratios": peer,
            "target": 1.0,
            "met": all(value >= 1.0 for value in peer.values()) if peer_measured else None,
        },
    }


def agreement(vectors: dict[str, list[float]]) -> dict[str, float]:
    """Cosine between the first image's vectors from each pair of routes."""
    pairs = [(V1, ENCODE_IMAGE), (V1, PEER)]
    return {
        f"{first} ~ {second}": cosine(vectors[first], vectors[second])
        for first, second in pairs
        if first in vectors and second in vectors
    }


def print_table(run: Run, rows: list[dict[str, Any]], met: dict[str, Any]) -> None:
    """The figures per level and the goals, with the command that made them."""
    print(f"== {NAME}: medians of {run.rounds} round(s)  ({run.command})")
    print(f"{'c':>4}  {'route':<24}{'items/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    by_level: dict[int, list[tuple[str, Level]]] = {}
    for label in (V1, ENCODE_IMAGE, PEER):
        for level in run.measured.medians(label):
            by_level.setdefault(level.concurrency, []).append((label, level))
    ratios_at = {row["concurrency"]: row for row in rows}
    for concurrency, entries in sorted(by_level.items()):
        for label, level in entries:
            print(
                f"{concurrency:>4}  {label:<24}{level.items_per_s:>10.3f}"
                f"{level.p50_s * 1000:>10.1f}{level.p99_s * 1000:>10.1f}{level.errors:>8}"
            )
        row = ratios_at.get(concurrency, {})
        print(
            f"{'':>4}  v1/encode_image {row.get('v1_over_encode_image')}  "
            f"v1/infinity {row.get('v1_over_infinity')}"
        )
    for name, goal in met.items():
        print(f"goal {name}: {goal}")


def report(run: Run) -> Path:
    """Print the figures and write the JSON report."""
    rows = comparison(run.measured)
    met = goals(rows)
    print_table(run, rows, met)
    medians = {
        label: [asdict(level) for level in run.measured.medians(label)]
        for label in (V1, ENCODE_IMAGE, PEER)
    }
    body = {
        "benchmark": NAME,
        "command": run.command,
        "size": "tiny" if run.args.smoke else "full",
        "threads": run.args.threads,
        "serve_mode": run.args.serve_mode,
        "batch_wait_s": run.args.batch_wait_s,
        "batch": {"vlgraph": run.vlgraph_batch, "infinity": run.args.peer_batch_size},
        "machine": machine(),
        "images": {
            "count": len(run.images),
            "side": run.args.image_side,
            "mean_jpeg_bytes": round(statistics.mean(len(image) for image in run.images)),
        },
        "rounds": run.rounds,
        "phases": run.phases,
        "memory_mib": run.memory,
        # The harness's per-level slots stay empty: this benchmark's levels are per route.
        "served": [],
        "ratios": [],
        "levels": medians,
        "rounds_items_per_s": run.measured.items_per_s(),
        "comparison": rows,
        "goals": met,
        "extra": {
            "agreement": agreement(run.vectors),
            "goals_met": {name: goal["met"] for name, goal in met.items()},
        },
    }
    return write_report(NAME, body, Path(run.args.output_dir) / f"{NAME}.json")


# ---- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(FULL_LEVELS))
    parser.add_argument(
        "--requests-per-level", type=int, default=0, help="default: max(64, 8 x concurrency)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=FULL_IMAGES)
    parser.add_argument("--image-side", type=int, default=FULL_SIDE)
    parser.add_argument("--threads", type=int, default=2, help="torch threads, both servers")
    parser.add_argument("--cache-dir", default=".cache/vlgraph/checkpoints")
    parser.add_argument("--output-dir", default=str(RESULTS_DIR))
    parser.add_argument("--serve-mode", choices=["throughput", "classic"], default="throughput")
    parser.add_argument("--infinity-venv", default=str(infinity.DEFAULT_VENV))
    parser.add_argument("--peer-batch-size", type=int, default=16)
    parser.add_argument(
        "--batch-wait-s",
        type=float,
        help="the image encoder's batch_wait_timeout_s (diagnosis; default: the profile's)",
    )
    parser.add_argument(
        "--peer-replica-allocator",
        action="store_true",
        help="run the peer with vlgraph's replica malloc settings (default: glibc's)",
    )
    parser.add_argument(
        "--install-infinity",
        action="store_true",
        help="create the peer's environment first if it is missing (bench/peers/infinity_env.sh)",
    )
    parser.add_argument("--no-infinity", action="store_true", help="vlgraph only")
    parser.add_argument("--no-vlgraph", action="store_true", help="the peer only")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny checkpoint, two small levels, one round: proves it runs, measures nothing",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.image_side, args.rounds = SMOKE_IMAGES, SMOKE_SIDE, 1
    return args


def levels_of(args: argparse.Namespace) -> dict[int, int]:
    """Requests per concurrency level."""
    if args.smoke:
        return SMOKE_LEVELS
    return {c: args.requests_per_level or max(64, 8 * c) for c in args.concurrency}


def peer_wanted(args: argparse.Namespace) -> bool:
    """Whether this run measures the peer: not with ``--no-infinity``; in a smoke run only
    where its environment is installed; else installed first with ``--install-infinity``."""
    venv = Path(args.infinity_venv)
    if args.no_infinity:
        return False
    if not infinity.is_installed(venv):
        if args.install_infinity:
            infinity.install(venv)
        elif args.smoke:
            print(f"-- infinity is not installed in {venv}: vlgraph only", flush=True)
            return False
        else:
            raise SystemExit(f"no infinity in {venv}: bash bench/peers/infinity_env.sh")
    return True


def main(argv: list[str] | None = None) -> None:
    """Measure the peer, vlgraph, the peer again; print the figures and write the report."""
    args = parse_args(argv)
    # Before anything imports Ray Serve: its constants read these at import.
    os.environ.update(ServeMode(mode=args.serve_mode).environment())
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    size = "tiny" if args.smoke else "full"
    checkpoints = {
        key: ensure_checkpoint(family, args.cache_dir, size)
        for path in CLIP_PATHS
        for key, family in path.checkpoints.items()
    }
    with_peer = peer_wanted(args)
    with tempfile.TemporaryDirectory() as name:
        run = Run(
            args=args,
            command=command,
            checkpoints=checkpoints,
            folder=Path(name),
            images=photo_like_jpegs(args.images, args.image_side),
            levels=levels_of(args),
            rounds=args.rounds,
            warm_up=1 if args.smoke else 32,
            settle_s=0 if args.smoke else 10,
        )
        if with_peer:
            measure_peer(run, "infinity (before vlgraph)")
        if not args.no_vlgraph:
            measure_vlgraph(run)
        if with_peer and not args.smoke and not args.no_vlgraph:
            measure_peer(run, "infinity (after vlgraph)")
        report(run)


if __name__ == "__main__":
    main()
