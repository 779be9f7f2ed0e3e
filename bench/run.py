"""Benchmark a model path: served through HTTP at a concurrency sweep, against the raw
in-process batched model and a naive one-at-a-time server, on the same inputs, in one run.

    python bench/run.py clip_image                 # full-size architecture, random weights
    python bench/run.py clip_text --concurrency 1 16 64
    python bench/run.py all --smoke                # every path, tiny checkpoints, seconds

Order within a path: the raw model first (the machine to itself), then the naive server, then
the served app (Ray starts only then, so neither baseline pays for Ray's idle processes).
A path's ``prepare`` runs against each server before its sweep (VQA uploads its images once),
its ``extra`` against the served app after its sweep (the pipeline's stages alone).
Prints items/s, p50/p99, served/raw and served/naive per level and the peak memory of every
replica, and writes ``bench/results/<path>.json``. Paths: see ``bench/paths.py``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (
    RESULTS_DIR,
    Level,
    ServedApp,
    machine,
    naive_server,
    peak_memory_mib,
    ratios,
    sweep,
    this_process_peak_mib,
    use_replica_allocator_settings,
    write_report,
)
from bench.paths import PATHS, BenchInputs, BenchPath, bench_app_config, raw_batch
from vlgraph.serve_cli import ServeMode
from vlgraph.tiny_checkpoints import ensure_checkpoint

SMOKE_LEVELS = {1: 2, 4: 4}


class Runner:
    """Runs paths one after the other in this process, starting Ray once, when first needed."""

    def __init__(self, args: argparse.Namespace, command: str):
        self.args = args
        self.command = command
        self._served_app: ServedApp | None = None

    def served_app(self) -> ServedApp:
        if self._served_app is None:
            self._served_app = ServedApp(self.args.serve_mode)
        return self._served_app

    def levels(self, path: BenchPath) -> dict[int, int]:
        if self.args.smoke:
            return SMOKE_LEVELS
        chosen = self.args.concurrency or path.default_levels
        return {
            c: self.args.requests_per_level or max(path.requests_minimum, path.requests_factor * c)
            for c in chosen
        }

    @staticmethod
    def sweep(
        path: BenchPath, url: str, inputs: BenchInputs, levels: dict[int, int], warm_up: int
    ) -> list[Level]:
        """The path's ``prepare`` against ``url`` (uploads), then the sweep of its requests."""
        prepared = path.prepare(url, inputs) if path.prepare is not None else inputs
        return sweep(url, lambda index: path.request(prepared, index), levels, warm_up)

    def run(self, path: BenchPath) -> Path:
        from graphs.app import build_app

        size = "tiny" if self.args.smoke else self.args.size
        levels = self.levels(path)
        with tempfile.TemporaryDirectory() as name:
            folder = Path(name)
            checkpoints = {
                key: ensure_checkpoint(family, self.args.cache_dir, size)
                for key, family in path.checkpoints.items()
            }
            count = min(max(levels.values()), 4 if self.args.smoke else 64)
            inputs = BenchInputs(path.make_inputs(count, folder), folder)
            config = bench_app_config(path, checkpoints, folder, self.args.threads)
            batch = raw_batch(path, config)
            warm_up = len(inputs.items) if path.cache != "none" else batch

            raw = None
            if path.raw is not None and not self.args.no_raw:
                raw = path.raw(checkpoints, inputs, batch)
            memory: dict[str, Any] = {"raw_process": round(this_process_peak_mib(), 1)}

            naive = []
            if not self.args.no_naive:
                models = list(checkpoints.values())
                with naive_server(path.name, models, self.args.threads) as (url, pid):
                    naive = self.sweep(path, url, inputs, levels, warm_up)
                    memory["naive_server"] = round(peak_memory_mib(pid), 1)

            served_app = self.served_app()
            app_name = f"bench_{path.name}"
            url = served_app.run(build_app(config), app_name)
            served = self.sweep(path, url, inputs, levels, warm_up)
            extra = path.extra(url, inputs) if path.extra is not None else None
            memory["replicas"] = served_app.replica_peaks_mib(app_name)
            served_app.delete(app_name)

        report = {
            "benchmark": path.name,
            "command": self.command,
            "size": size,
            "threads": self.args.threads,
            "serve_mode": self.args.serve_mode,
            "batch": batch,
            "machine": machine(),
            "raw": raw,
            "memory_mib": memory,
            "served": served,
            "naive": naive,
            "ratios": ratios(served, raw["items_per_s"] if raw else 0.0, naive),
            "extra": extra,
        }
        output = Path(self.args.output_dir) / f"{path.name}.json"
        return write_report(path.name, report, output)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", choices=[*PATHS, "all"])
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--concurrency", type=int, nargs="+", help="default: the path's sweep")
    parser.add_argument("--requests-per-level", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads, every model")
    parser.add_argument("--cache-dir", default=".cache/vlgraph/checkpoints")
    parser.add_argument("--output-dir", default=str(RESULTS_DIR))
    parser.add_argument(
        "--serve-mode",
        choices=["throughput", "classic"],
        default="throughput",
        help="how Serve carries HTTP (vlgraph-serve's VLGRAPH_SERVE_MODE; the image's default)",
    )
    parser.add_argument("--no-raw", action="store_true")
    parser.add_argument("--no-naive", action="store_true")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny checkpoints, two small levels: seconds"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the chosen path (or all) and print the figures with the command that made them."""
    args = parse_args(argv)
    use_replica_allocator_settings()
    # Before anything imports Ray Serve: its constants read these at import.
    os.environ.update(ServeMode(mode=args.serve_mode).environment())
    import torch

    torch.set_num_threads(args.threads)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    runner = Runner(args, command)
    for name in PATHS if args.path == "all" else [args.path]:
        runner.run(PATHS[name])


if __name__ == "__main__":
    main()
