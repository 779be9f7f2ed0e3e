"""Cold start of a vision-language model scaled to zero: the first request through HTTP
(starts a replica and loads the weights) against the next one, on the same image.

    python bench/bench_cold_start.py                                   # tiny blip2 gemma intern_vlm
    python bench/bench_cold_start.py --size full --models intern_vlm   # InternVL3-1B size, bf16

Each trial deploys the app with the chosen models at zero replicas, sends two identical
``POST /api/caption-images`` requests and prints both latencies.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

FAMILY_OF = {"blip2": "blip2", "gemma": "gemma3", "intern_vlm": "internvl"}


def jpeg(size: int) -> bytes:
    """A random ``size`` x ``size`` JPEG."""
    pixels = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def model_config(model: str, size: str, cache_dir: Path) -> dict:
    """The model at zero replicas; full size loads the factory's real-size folder in bf16."""
    from vlgraph.tiny import ensure_checkpoint

    family = FAMILY_OF[model]
    full = size == "full"
    return {
        "family": family,
        "source": str(ensure_checkpoint(family, cache_dir, size)) if full else f"tiny:{family}",
        "device": "cpu",
        "dtype": "bfloat16" if full else "float32",
        "torch_threads": 2 if full else 1,
        "generation": {"max_new_tokens": 1 if full else 8},
        "deployment": {
            "autoscaling_config": {
                "min_replicas": 0,
                "initial_replicas": 0,
                "max_replicas": 1,
                "upscale_delay_s": 0,
            },
            "max_ongoing_requests": 16,
            "ray_actor_options": {"num_cpus": 1 if full else 0.1},
        },
    }


def main() -> None:
    """Run the trials and print one line per model and trial."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(FAMILY_OF), choices=list(FAMILY_OF))
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--cache-dir", default=".cache/vlgraph/checkpoints")
    args = parser.parse_args()

    import ray
    from ray import serve

    from graphs.app import build_app
    from vlgraph.config import TOP_LEVEL_MODELS, AppConfig

    cache_dir = Path(args.cache_dir).resolve()
    # Logical CPUs as the test session declares them, so that the small CPU shares below fit
    # beside a full-size replica on a 2-core machine.
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": 8012})
    image = jpeg(448 if args.size == "full" else 96)
    for model in args.models:
        for trial in range(args.trials):
            config = AppConfig.model_validate(
                {
                    "profile": "bench",
                    "access": {"mode": "open"},  # the benchmark's own machine
                    "checkpoint_cache_dir": str(cache_dir),
                    "cache": {"backend": "none"},
                    **dict.fromkeys(TOP_LEVEL_MODELS),
                    "ingress": {"deployment": {"ray_actor_options": {"num_cpus": 0.1}}},
                    "models": {
                        "blip": {
                            "source": "tiny:blip-caption",
                            "device": "cpu",
                            "deployment": {"ray_actor_options": {"num_cpus": 0.1}},
                        },
                        **{name: None for name in FAMILY_OF},
                        model: model_config(model, args.size, cache_dir),
                    },
                }
            )
            serve.run(build_app(config), name="cold", route_prefix="/cold")
            latencies = []
            for _ in range(2):
                started = time.perf_counter()
                response = httpx.post(
                    "http://127.0.0.1:8012/cold/api/caption-images",
                    params={"model": model},
                    files=[("images", ("a.jpg", image, "image/jpeg"))],
                    timeout=600,
                )
                response.raise_for_status()
                latencies.append(time.perf_counter() - started)
            print(
                f"{model} ({args.size}) trial {trial}: first request {latencies[0]:.2f} s, "
                f"next {latencies[1]:.3f} s",
                flush=True,
            )
            serve.delete("cold")
    ray.shutdown()


if __name__ == "__main__":
    main()
