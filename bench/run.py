"""Benchmark a model path: served through HTTP at a concurrency sweep, against the raw
in-process batched model and a naive one-at-a-time server, on the same inputs, in one run.

    python bench/run.py clip_image                 # full-size architecture, random weights
    python bench/run.py clip_text --concurrency 1 16 64
    python bench/run.py all --smoke                # every path, tiny checkpoints, 1-2 minutes

Order within a path: the raw model first (the machine to itself), then the naive server, then
the served app (Ray starts only then, so neither baseline pays for Ray's idle processes).
A path's ``prepare`` runs against each server before its sweep (VQA uploads its images once),
its ``extra`` against the served app after its sweep (the pipeline's stages alone).
Prints items/s, p50/p99, served/raw and served/naive per level and the peak memory of every
replica, and writes ``bench/results/<path>.json``. Paths: see ``bench/paths.py``.

``--smoke`` only proves that every path still runs (CI), and its figures mean nothing: tiny
checkpoints, two small levels, 64 px 2-step images, one warm-up request, and one pass over
the paths instead of one run each. Ray starts first and deploys every path in as few apps as
their settings allow (all but ``cache_hit``, which needs the cache the others must not have;
``bench/paths.py``'s ``shared_apps``) while every raw model runs, then one naive server
process with every path's routes (each under ``/<path>``); then each path's served sweep.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from dataclasses import dataclass, field, replace
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
    naive_servers,
    peak_memory_mib,
    ratios,
    sweep,
    this_process_peak_mib,
    use_replica_allocator_settings,
    write_report,
)
from bench.paths import (
    PATHS,
    BenchInputs,
    BenchPath,
    bench_app_config,
    raw_batch,
    shared_app_config,
    shared_apps,
)
from vlgraph.generation_params import MIN_SIZE
from vlgraph.serve_cli import ServeMode
from vlgraph.tiny import ensure_checkpoint

SMOKE_LEVELS = {1: 2, 4: 4}
#: Smoke images: the smallest side the app accepts and two steps. The smoke run makes about
#: 45 images; at 256 px and 10 steps each takes a tiny Stable Diffusion 0.6 s on two quiet
#: cores (and far longer on a busy machine), at 64 px and 2 steps 0.05 s.
SMOKE_IMAGE_SIDE = MIN_SIZE
SMOKE_IMAGE_STEPS = 2


@dataclass
class PathRun:
    """One path's inputs and settings, and its figures as each phase measures them."""

    path: BenchPath
    checkpoints: dict[str, Path]
    inputs: BenchInputs
    config: Any
    batch: int
    warm_up: int
    levels: dict[int, int]
    raw: dict[str, Any] | None = None
    memory: dict[str, Any] = field(default_factory=dict)
    naive: list[Level] = field(default_factory=list)
    served: list[Level] = field(default_factory=list)
    extra: dict[str, Any] | None = None
    #: Smoke runs only: which served app carried the path, with which other paths.
    shared_app: dict[str, Any] | None = None


class Runner:
    """Runs paths one after the other in this process, starting Ray once, when first needed.

    A full run measures each path alone, in turn: raw, naive server, its own served app. The
    smoke run proves every path still runs, in as little time as that takes: Ray starts first
    and deploys the served apps (every path whose models and cache agree in one app) while
    every path's raw model runs and then one naive server process with every path's routes;
    then each path's served sweep."""

    def __init__(self, args: argparse.Namespace, command: str):
        self.args = args
        self.command = command
        self._served_app: ServedApp | None = None

    def served_app(self) -> ServedApp:
        """The local Ray and Serve of this run, started on the first call."""
        if self._served_app is None:
            self._served_app = ServedApp(self.args.serve_mode)
        return self._served_app

    def levels(self, path: BenchPath) -> dict[int, int]:
        """Requests per concurrency level of ``path`` in this run."""
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

    def prepare(self, path: BenchPath, folder: Path) -> PathRun:
        """Checkpoints, inputs (under ``folder``) and the served settings of ``path``."""
        smoke = self.args.smoke
        size = "tiny" if smoke else self.args.size
        levels = self.levels(path)
        checkpoints = {
            key: ensure_checkpoint(family, self.args.cache_dir, size)
            for key, family in path.checkpoints.items()
        }
        count = min(max(levels.values()), 4 if smoke else 64)
        inputs = BenchInputs(path.make_inputs(count, folder), folder)
        if smoke:
            inputs = replace(inputs, image_side=SMOKE_IMAGE_SIDE, image_steps=SMOKE_IMAGE_STEPS)
        config = bench_app_config(path, checkpoints, folder, self.args.threads)
        batch = raw_batch(path, config)
        warm_up = 1 if smoke else batch
        if path.cache != "none":
            warm_up = len(inputs.items)  # every timed request is then a hit
        return PathRun(path, checkpoints, inputs, config, batch, warm_up, levels)

    def measure_raw(self, run: PathRun) -> None:
        """The raw in-process batched model, with this process's peak memory after it."""
        if run.path.raw is not None and not self.args.no_raw:
            run.raw = run.path.raw(run.checkpoints, run.inputs, run.batch)
        run.memory["raw_process"] = round(this_process_peak_mib(), 1)

    def measure_naive(self, runs: list[PathRun]) -> None:
        """The naive server's sweep of each run: one server process per run in a full run, one
        for them all in a smoke run."""
        if self.args.no_naive:
            return
        if not self.args.smoke:
            for run in runs:
                models = list(run.checkpoints.values())
                with naive_server(run.path.name, models, self.args.threads) as (url, pid):
                    run.naive = self.sweep(run.path, url, run.inputs, run.levels, run.warm_up)
                    run.memory["naive_server"] = round(peak_memory_mib(pid), 1)
            return
        models = {run.path.name: list(run.checkpoints.values()) for run in runs}
        with naive_servers(models, self.args.threads) as (urls, pid):
            for run in runs:
                url = urls[run.path.name]
                run.naive = self.sweep(run.path, url, run.inputs, run.levels, run.warm_up)
            for run in runs:
                run.memory["naive_server"] = round(peak_memory_mib(pid), 1)

    def measure_served(self, run: PathRun) -> None:
        """The path alone in its own served app: sweep, ``extra``, replica memory; deleted."""
        from graphs.app import build_app

        served_app = self.served_app()
        app_name = f"bench_{run.path.name}"
        url = served_app.run(build_app(run.config), app_name)
        self.measure_on(run, url)
        run.memory["replicas"] = served_app.replica_peaks_mib(app_name)
        served_app.delete(app_name)

    def start_shared_apps(self, runs: list[PathRun], folder: Path) -> dict[str, str]:
        """Start deploying the smoke run's served apps, without waiting: the runs grouped by
        :func:`shared_apps`, the first app at ``/``, the others under ``/<app name>``. Each
        run's base URL, by path name."""
        from graphs.app import build_app

        by_name = {run.path.name: run for run in runs}
        groups = [
            [by_name[path.name] for path in group]
            for group in shared_apps([run.path for run in runs])
        ]
        applications = {}
        for index, group in enumerate(groups):
            name = f"bench_smoke{index}"
            checkpoints = {key: c for run in group for key, c in run.checkpoints.items()}
            config = shared_app_config(
                [run.path for run in group], checkpoints, folder, self.args.threads
            )
            applications[name] = (build_app(config), "/" if index == 0 else f"/{name}")
            for run in group:
                run.shared_app = {"name": name, "paths": [r.path.name for r in group]}
        urls = self.served_app().start_many(applications)
        return {run.path.name: urls[run.shared_app["name"]] for run in runs}

    def measure_served_shared(self, runs: list[PathRun], urls: dict[str, str]) -> None:
        """The smoke run's served phase, once its apps are up: each run's sweep and ``extra``
        on its app (``urls`` by path name), then the replicas of its app. The apps stay up
        until Ray goes down with this process."""
        served_app = self.served_app()
        served_app.wait_running(sorted({run.shared_app["name"] for run in runs}))
        for run in runs:
            self.measure_on(run, urls[run.path.name])
        for run in runs:
            run.memory["replicas"] = served_app.replica_peaks_mib(run.shared_app["name"])

    def measure_on(self, run: PathRun, url: str) -> None:
        """The served sweep of ``run`` at ``url``, then its path's ``extra``."""
        run.served = self.sweep(run.path, url, run.inputs, run.levels, run.warm_up)
        run.extra = run.path.extra(url, run.inputs) if run.path.extra is not None else None

    def report(self, run: PathRun) -> Path:
        """Print the run's figures and write its JSON report."""
        report = {
            "benchmark": run.path.name,
            "command": self.command,
            "size": "tiny" if self.args.smoke else self.args.size,
            "threads": self.args.threads,
            "serve_mode": self.args.serve_mode,
            "batch": run.batch,
            "machine": machine(),
            "raw": run.raw,
            "memory_mib": run.memory,
            "served": run.served,
            "naive": run.naive,
            "ratios": ratios(run.served, run.raw["items_per_s"] if run.raw else 0.0, run.naive),
            "extra": run.extra,
        }
        if self.args.smoke:
            report["smoke"] = {
                "shared_app": run.shared_app,
                "image_side": run.inputs.image_side,
                "image_steps": run.inputs.image_steps,
                "warm_up": run.warm_up,
            }
        output = Path(self.args.output_dir) / f"{run.path.name}.json"
        return write_report(run.path.name, report, output)

    def run(self, path: BenchPath) -> Path:
        """Measure ``path`` alone: raw, then its naive server, then its own served app."""
        with tempfile.TemporaryDirectory() as name:
            run = self.prepare(path, Path(name))
            self.measure_raw(run)
            self.measure_naive([run])
            self.measure_served(run)
        return self.report(run)

    def run_smoke(self, paths: list[BenchPath]) -> list[Path]:
        """Every path of ``paths`` through its three ways in one pass (see the class): the
        served apps start deploying first, and come up while the raw models and the naive
        server run (on two cores, each of those leaves one mostly idle)."""
        with tempfile.TemporaryDirectory() as name:
            folder = Path(name)
            runs = []
            for path in paths:
                (folder / path.name).mkdir()
                runs.append(self.prepare(path, folder / path.name))
            urls = self.start_shared_apps(runs, folder)
            for run in runs:
                self.measure_raw(run)
            self.measure_naive(runs)
            self.measure_served_shared(runs, urls)
        return [self.report(run) for run in runs]


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
        "--smoke",
        action="store_true",
        help="tiny checkpoints, two small levels, small images, shared servers: proves every "
        "path runs, measures nothing",
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
    paths = [PATHS[name] for name in (PATHS if args.path == "all" else [args.path])]
    if args.smoke:
        runner.run_smoke(paths)
    else:
        for path in paths:
            runner.run(path)


if __name__ == "__main__":
    main()
