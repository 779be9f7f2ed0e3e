"""Where BLIP generate loses time outside the model: thread, process and allocator.

Runs batched BLIP-base captioning (full-size architecture, random weights) through the
replica's own core (``BlipCaptioner.in_process``: decode, processor, ``generate``), loaded on
this process's main thread and run there, or run in a worker thread (the split a replica had
before its one model thread, ``vlgraph/model_thread.py``), or in a plain Ray actor with the
replicas' allocator settings (no Serve), and prints seconds per batch, CPU utilisation, system
time and minor page faults. Run it under both allocator settings to see their effect:

    python bench/diagnose_generate.py main
    python bench/diagnose_generate.py thread
    python bench/diagnose_generate.py ray-actor
    env MALLOC_ARENA_MAX=1 MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736 \
        MALLOC_TOP_PAD_=1073741824 python bench/diagnose_generate.py thread
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import resource
import time

import numpy as np
import torch
from PIL import Image

from deployments.blip_caption import BlipCaptioner
from vlgraph.config import BlipCaptionConfig
from vlgraph.messages import CaptionRequest
from vlgraph.tiny import ensure_checkpoint


def main() -> None:
    """Measure and print one line of figures."""
    args = parse_args()
    if args.where == "ray-actor":
        import ray

        from vlgraph.cpu_allocator import CPU_ALLOCATOR_ENV

        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        remote = ray.remote(num_cpus=1, runtime_env={"env_vars": CPU_ALLOCATOR_ENV})(measure)
        print(ray.get(remote.remote(args, "main")).replace("main:", "ray actor:", 1))
        ray.shutdown()
    else:
        print(measure(args, args.where))


def parse_args() -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("where", choices=["main", "thread", "ray-actor"])
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", default=".cache/vlgraph/checkpoints")
    return parser.parse_args()


def measure(args: argparse.Namespace, where: str) -> str:
    """Time ``args.batches`` batches on the main thread or a worker thread; one line."""
    torch.set_num_threads(args.threads)
    folder = ensure_checkpoint("blip-caption", args.cache_dir, "full")
    config = BlipCaptionConfig(
        source=str(folder),
        device="cpu",
        dtype="float32",
        generation={"max_new_tokens": args.tokens, "min_new_tokens": args.tokens},
    )
    captioner = BlipCaptioner.in_process(config, args.cache_dir)
    rng = np.random.default_rng(0)
    requests = [
        CaptionRequest(image=_jpeg(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)))
        for _ in range(args.batch)
    ]

    def one_batch() -> None:
        for result in captioner.caption_now(requests):
            if result.error is not None:
                raise RuntimeError(result.error.message)

    def timed() -> tuple[float, resource.struct_rusage, resource.struct_rusage]:
        one_batch()  # warm-up at the measured shape, in the measuring thread
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(args.batches):
            one_batch()
        return time.perf_counter() - started, before, resource.getrusage(resource.RUSAGE_SELF)

    if where == "main":
        elapsed, before, after = timed()
    else:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            elapsed, before, after = pool.submit(timed).result()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return (
        f"{where}: {elapsed / args.batches:.2f} s/batch of {args.batch}, "
        f"CPU {cpu / elapsed * 100:.0f}%, sys {after.ru_stime - before.ru_stime:.2f} s, "
        f"minor faults {after.ru_minflt - before.ru_minflt}, "
        f"context switches {after.ru_nvcsw - before.ru_nvcsw} voluntary, "
        f"{after.ru_nivcsw - before.ru_nivcsw} involuntary"
    )


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


if __name__ == "__main__":
    main()
