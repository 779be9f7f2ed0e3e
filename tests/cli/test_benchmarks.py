"""The benchmarks build the application they claim to measure, and every one of them runs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.bench_blip_caption import bench_config
from bench.gpu_figures import gpu_profile
from bench.paths import (
    PATHS,
    bench_app_config,
    model_config,
    shared_app_config,
    shared_apps,
)
from graphs.app import build_app
from tests.support.common import REPO_ROOT, release_ray
from vlgraph.config import AppConfig
from vlgraph.tiny import ensure_checkpoint


def test_blip_benchmark_serves_blip_alone_without_a_cache(
    checkpoint_cache: Path, tmp_path: Path
) -> None:
    # A cache would answer the benchmark's repeated images without the model, and a default
    # Hub model left in the profile would fail the build offline.
    checkpoint = ensure_checkpoint("blip-caption", checkpoint_cache, "tiny")
    config = bench_config(checkpoint, tmp_path, 8, 20, 2, True, 64, 2)

    assert set(config.served_models()) == {"blip"}
    assert config.cache.backend == "none"
    assert config.models.blip.deployment.num_replicas == 2
    assert config.models.blip.batching.max_batch_size == 8
    build_app(config)


@pytest.mark.cli
def test_every_benchmark_path_runs_on_tiny_checkpoints(
    checkpoint_cache: Path, tmp_path: Path
) -> None:
    """``python bench/run.py all --smoke``: every path's raw model, naive server and served
    app answer on tiny checkpoints, and each writes its JSON report (benchmarks cannot rot).
    A ``cli`` test: the command starts its own local Ray, after the session's is released.
    About two minutes on a quiet 2-core machine: one naive server process and one Ray for
    every path, the served paths in two apps deployed at once, small images."""
    finished = run_bench(["bench/run.py", "all"], checkpoint_cache, tmp_path, timeout_s=900)
    for name in PATHS:
        report = json.loads((tmp_path / f"{name}.json").read_text())
        assert report["command"].startswith("python bench/run.py all --smoke")
        assert [level["concurrency"] for level in report["served"]] == [1, 4]
        assert all(level["errors"] == 0 and level["items"] > 0 for level in report["served"])
        assert all(level["errors"] == 0 for level in report["naive"])
        assert report["memory_mib"]["replicas"], report["memory_mib"]
        assert f"== {name}" in finished.stdout


def run_bench(
    arguments: list[str], checkpoint_cache: Path, tmp_path: Path, timeout_s: int = 600
) -> subprocess.CompletedProcess:
    """``python <arguments> --smoke`` on its own local Ray (the session's released), its
    reports in ``tmp_path``; it must succeed."""
    release_ray()
    command = [
        sys.executable,
        *arguments,
        "--smoke",
        "--cache-dir",
        str(checkpoint_cache),
        "--output-dir",
        str(tmp_path),
    ]
    finished = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    return finished


def run_smoke(
    script: str, checkpoint_cache: Path, tmp_path: Path
) -> tuple[subprocess.CompletedProcess, dict]:
    """``python bench/<script>.py --smoke`` on its own local Ray (the session's released):
    its output, and its report ``<script minus bench_>.json``, which names the command."""
    finished = run_bench([f"bench/{script}.py"], checkpoint_cache, tmp_path)
    report = json.loads((tmp_path / f"{script.removeprefix('bench_')}.json").read_text())
    assert report["command"].startswith(f"python bench/{script}.py --smoke")
    return finished, report


@pytest.mark.cli
def test_the_openai_embeddings_benchmark_runs_on_tiny_checkpoints(
    checkpoint_cache: Path, tmp_path: Path
) -> None:
    """``python bench/bench_openai_embeddings.py --smoke``: vlgraph's ``/v1/embeddings`` and
    ``/encode_image`` answer every timed image request on the tiny CLIP checkpoints, with
    the same vector, and the run writes its JSON report (the infinity peer too where its
    environment is installed). A ``cli`` test: its own local Ray, after the session's is
    released. About 45 s on a quiet 2-core machine (one Ray start, 10 tiny requests a
    route), 15 s more with the peer."""
    finished, report = run_smoke("bench_openai_embeddings", checkpoint_cache, tmp_path)
    levels = report["levels"]
    for route in (
        "vlgraph /v1/embeddings",
        "vlgraph /encode_image",
        *(["infinity /embeddings"] if levels["infinity /embeddings"] else []),
    ):
        assert [level["concurrency"] for level in levels[route]] == [1, 4], route
        assert all(level["errors"] == 0 and level["items"] > 0 for level in levels[route])
    assert [row["concurrency"] for row in report["comparison"]] == [1, 4]
    agreement = report["extra"]["agreement"]
    assert "vlgraph /v1/embeddings ~ vlgraph /encode_image" in agreement, agreement
    for pair, similarity in agreement.items():
        assert similarity > 0.999, pair
    assert report["memory_mib"]["replicas"], report["memory_mib"]
    assert "== openai_embeddings" in finished.stdout


@pytest.mark.cli
def test_the_openai_chat_benchmark_runs_on_tiny_checkpoints(
    checkpoint_cache: Path, tmp_path: Path
) -> None:
    """``python bench/bench_openai_chat.py --smoke``: whole and streamed chat replies on the
    tiny InternVL, each level's figures written. A ``cli`` test: its own local Ray. About
    40 s on a quiet 2-core machine."""
    finished, report = run_smoke("bench_openai_chat", checkpoint_cache, tmp_path)
    assert [row["concurrency"] for row in report["levels"]] == [1, 2]
    for row in report["levels"]:
        assert 0 < row["stream_first_token_p50_s"] <= row["stream_total_p50_s"], row
        assert row["whole_total_p50_s"] > 0 and row["tokens_p50"] >= 1, row
    assert "stream: first token" in finished.stdout


@pytest.mark.cli
def test_the_search_benchmark_runs_on_tiny_checkpoints(
    checkpoint_cache: Path, tmp_path: Path
) -> None:
    """``python bench/bench_search.py --smoke``: 500 stored vectors searched through HTTP
    and in process (exact below ``exact_below``, so recall 1.0), and 16 files through
    ``vlgraph-index`` against the raw tiny CLIP, each figure written. A ``cli`` test: its
    own local Ray. About a minute on a quiet 2-core machine."""
    finished, report = run_smoke("bench_search", checkpoint_cache, tmp_path)
    (size,) = report["sizes"]
    assert size["vectors"] == 500
    assert size["http_floor_p50_ms (GET /api/models, no search)"] > 0
    assert size["http_p50_ms"] > 0
    assert size["recall_at_10"] == 1.0
    (bulk,) = report["bulk_indexing"]
    assert bulk["clip"] == "tiny" and bulk["images"] == 16
    assert bulk["summary"].startswith("indexed 16, already indexed 0, refused 0")
    assert bulk["served_over_raw"] > 0
    assert "== search" in finished.stdout


def test_the_smoke_run_shares_an_app_only_where_each_path_keeps_its_settings(
    checkpoint_cache: Path, tmp_path: Path
) -> None:
    """The smoke run serves the paths in as few apps as it can: a path joins an app only
    when the app gives each of its models exactly the settings the path's own app would, and
    has its cache. The cache hit path needs the cache that the others must not have."""
    groups = shared_apps(list(PATHS.values()))
    assert [[path.name for path in group] for group in groups] == [
        [name for name in PATHS if name != "cache_hit"],
        ["cache_hit"],
    ]
    for group in groups:
        checkpoints = {
            key: ensure_checkpoint(family, checkpoint_cache, "tiny")
            for path in group
            for key, family in path.checkpoints.items()
        }
        shared = shared_app_config(group, checkpoints, tmp_path, 2)
        for path in group:
            alone = bench_app_config(path, checkpoints, tmp_path, 2)
            for key in path.checkpoints:
                assert model_config(shared, key) == model_config(alone, key), (path.name, key)
            assert shared.cache == alone.cache
        build_app(shared)


@pytest.mark.parametrize("name", sorted(PATHS))
def test_each_benchmark_app_serves_only_its_models(
    name: str, checkpoint_cache: Path, tmp_path: Path
) -> None:
    """A benchmark app copies the CPU profile's blocks for its models onto its checkpoints
    and leaves every other model out (a Hub id left in would fail offline)."""
    path = PATHS[name]
    checkpoints = {
        key: ensure_checkpoint(family, checkpoint_cache, "tiny")
        for key, family in path.checkpoints.items()
    }
    config = bench_app_config(path, checkpoints, tmp_path, 2)
    served = config.served_models()
    assert set(served) == {key.rpartition(".")[2] for key in path.checkpoints} | {"blip"}
    for key, checkpoint in checkpoints.items():
        assert served[key.rpartition(".")[2]].source == str(checkpoint)
        assert served[key.rpartition(".")[2]].torch_threads == 2
    assert config.cache.backend == path.cache
    build_app(config)


def test_the_gpu_benchmark_keeps_every_model_resident_in_its_share(
    checkpoint_cache: Path, tmp_path: Path
) -> None:
    """``bench/gpu_figures.py`` serves serve_config.yaml's models all at once, one replica
    each, in half precision with their fractional GPU shares (checked on tiny checkpoints:
    the GPU run uses full-size ones)."""
    args = gpu_profile(lambda family: ensure_checkpoint(family, checkpoint_cache, "tiny"), set())
    args["store"] = {"backend": "sqlite", "data_dir": str(tmp_path)}
    config = AppConfig.model_validate(args)
    models = config.served_models()
    assert set(models) >= {"blip", "vqa", "clip_image", "clip_text", "sd", "sdxl"}
    shares = 0.0
    for name, model in models.items():
        assert model.deployment.num_replicas == 1 and model.deployment.autoscaling_config is None
        assert model.dtype in ("float16", "bfloat16"), name
        shares += model.deployment.ray_actor_options.num_gpus
    assert 0 < shares <= 1
    assert config.cache.backend == "none"
    build_app(config)
