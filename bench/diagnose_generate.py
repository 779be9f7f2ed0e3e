"""Where BLIP generate loses time outside the model: thread placement and the allocator.

Runs batched BLIP-base generate (full-size architecture, random weights) in this process,
either on the main thread or in a worker thread as a Serve replica does, and prints seconds
per batch, CPU utilisation, system time and minor page faults. Run it under both allocator
settings to see their effect:

    python bench/diagnose_generate.py main
    python bench/diagnose_generate.py thread
    env MALLOC_ARENA_MAX=1 MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736 \
        MALLOC_TOP_PAD_=1073741824 python bench/diagnose_generate.py thread
"""

from __future__ import annotations

import argparse
import concurrent.futures
import resource
import time

import numpy as np
import torch
from PIL import Image
from transformers import BlipForConditionalGeneration, BlipProcessor

from vlgraph.tiny_checkpoints import ensure_checkpoint


def main() -> None:
    """Measure and print one line of figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("where", choices=["main", "thread"])
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", default=".cache/vlgraph/checkpoints")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    folder = ensure_checkpoint("blip-caption", args.cache_dir, "full")
    processor = BlipProcessor.from_pretrained(folder)
    model = BlipForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
        for _ in range(args.batch)
    ]
    kwargs = {"max_new_tokens": args.tokens, "min_new_tokens": args.tokens, "do_sample": False}

    def one_batch() -> None:
        with torch.inference_mode():
            model.generate(**processor(images=images, return_tensors="pt"), **kwargs)

    def run_all() -> None:
        for _ in range(args.batches):
            one_batch()

    one_batch()  # warm-up at the measured shape
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    if args.where == "main":
        run_all()
    else:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(run_all).result()
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(
        f"{args.where}: {elapsed / args.batches:.2f} s/batch of {args.batch}, "
        f"CPU {cpu / elapsed * 100:.0f}%, sys {after.ru_stime - before.ru_stime:.2f} s, "
        f"minor faults {after.ru_minflt - before.ru_minflt}"
    )


if __name__ == "__main__":
    main()
