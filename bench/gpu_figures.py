"""The GPU figures: every model of ``serve_config.yaml`` resident on one GPU at once, each with
its fractional ``num_gpus``, in half precision, on full-size architectures with random weights
(the same compute as the real models; nothing downloaded), measured through HTTP.

    python bench/gpu_figures.py                      # every model of serve_config.yaml
    python bench/gpu_figures.py --skip blip2 gemma   # leave the big VLMs out

Figures: CLIP images/s end to end (base64 JPEG in, JPEG decode included), BLIP-base captions/s,
SD 1.5 512x512 50-step latency, SDXL 1024x1024 30-step latency, and the peak GPU memory of
every model replica (``nvidia-smi`` per process, sampled through the run). Anchors to beat:
clip-as-service 286 images/s (ViT-B/32, TITAN RTX); diffusers with SDPA on an A100: 1.59 s
(SD 1.5, 50 steps), 5.93 s (SDXL, 50 steps). Needs one CUDA GPU and the project installed
with ray and diffusers (see the device notes in docs/benchmarks.md). Writes bench/results/gpu.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shlex
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import REPO_ROOT, RESULTS_DIR, Request, ServedApp, closed_loop, machine
from bench.paths import photo_jpegs
from vlgraph.profiles import load_application, with_sources
from vlgraph.tiny import ensure_checkpoint

ANCHORS = {
    "clip_images_per_s": 286.0,
    "sd15_512_50_steps_s": 1.59,
    "sdxl_1024_50_steps_s": 5.93,
}


def gpu_profile(checkpoint_of: Callable[[str], Path], skip: set[str]) -> dict[str, Any]:
    """``serve_config.yaml``'s args with every source on ``checkpoint_of(family)`` (full-size
    random weights for the figures), one replica per model (all resident at once, each with
    its fractional GPU share and dtype), the result cache off, no API key asked for (the
    benchmark's own machine)."""
    args = load_application(REPO_ROOT / "serve_config.yaml")["args"]
    args = with_sources(args, lambda family: str(checkpoint_of(family)), replicas=1, skip=skip)
    args.update(cache={"backend": "none"}, environment="development", profile="gpu-bench")
    args["access"] = {**args.get("access", {}), "mode": "open"}
    return args


class GpuMemorySampler:
    """Peak GPU memory per process id, from ``nvidia-smi`` every half second."""

    def __init__(self) -> None:
        self.peaks: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GpuMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"]
        while not self._stop.wait(0.5):
            output = subprocess.run(query, capture_output=True, text=True, check=False).stdout
            for line in output.splitlines():
                pid, used = (part.strip() for part in line.split(","))
                mib = float(used.split()[0])
                self.peaks[int(pid)] = max(self.peaks.get(int(pid), 0.0), mib)


def throughput(url: str, make: Any, concurrency: int, total: int) -> dict[str, Any]:
    asyncio.run(closed_loop(url, make, min(concurrency, 8), min(total, 16)))  # warm up
    level = asyncio.run(closed_loop(url, make, concurrency, total))
    return level.__dict__


def generation_latency(url: str, model: str, size: int, steps: int, runs: int) -> dict:
    body = {"description": "a lighthouse on a cliff at dusk", "model": model, "width": size}
    body.update(height=size, num_inference_steps=steps, seed=0)
    make = lambda _: Request("POST", "/generate", {"json": body})  # noqa: E731
    asyncio.run(closed_loop(url, make, 1, 1))  # warm up
    return asyncio.run(closed_loop(url, make, 1, runs)).__dict__


def main(argv: list[str] | None = None) -> None:
    """Serve every model on the GPU, measure, print and write bench/results/gpu.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=".cache/vlgraph/checkpoints")
    parser.add_argument("--skip", nargs="*", default=[], help="model names to leave out")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=512, help="per throughput figure")
    parser.add_argument("--runs", type=int, default=3, help="generations per latency figure")
    parser.add_argument("--output", default=str(RESULTS_DIR / "gpu.json"))
    args = parser.parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])

    from graphs.app import build_app
    from vlgraph.config import AppConfig

    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        profile = gpu_profile(
            lambda family: ensure_checkpoint(family, args.cache_dir, "full"), set(args.skip)
        )
        profile["store"] = {"backend": "sqlite", "data_dir": str(folder / "data")}
        profile["ingress"] = {**profile["ingress"], "image_root": str(folder)}
        config = AppConfig.model_validate(profile)
        jpegs = photo_jpegs(64, folder)
        served = ServedApp()
        url = served.run(build_app(config), "gpu")
        figures: dict[str, Any] = {}
        with GpuMemorySampler() as sampler:
            if config.clip_image is not None:

                def clip(index: int) -> Request:
                    data = base64.b64encode(jpegs[index % len(jpegs)]).decode()
                    return Request("POST", "/encode_image", {"json": {"image_b64": data}})

                figures["clip_image"] = throughput(url, clip, args.concurrency, args.requests)

            def caption(index: int) -> Request:
                upload = ("images", (f"{index}.jpg", jpegs[index % len(jpegs)], "image/jpeg"))
                return Request("POST", "/api/caption-images", {"files": [upload]})

            figures["blip_caption"] = throughput(url, caption, args.concurrency, args.requests)
            if config.sd is not None:
                figures["sd15_512_50"] = generation_latency(url, "sd", 512, 50, args.runs)
            if config.sdxl is not None:
                figures["sdxl_1024_30"] = generation_latency(url, "sdxl", 1024, 30, args.runs)
        by_pid = served.replica_processes("gpu")
        memory = {by_pid[pid]: mib for pid, mib in sampler.peaks.items() if pid in by_pid}

    report = {
        "command": command,
        "machine": machine(),
        "figures": figures,
        "peak_gpu_memory_mib": memory,
        "anchors": ANCHORS,
    }
    print(json.dumps(report, indent=2, default=str))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
