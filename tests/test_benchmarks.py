"""The benchmarks build the application they claim to measure (no Ray needed)."""

from pathlib import Path

from bench.bench_blip_caption import bench_config
from graphs.app import build_app
from vlgraph.tiny_checkpoints import ensure_checkpoint


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
