"""``serve_config.yaml`` as the cluster tests deploy it: every deployment, GPU share, CPU share,
queue bound and replica setting as written, only the models on tiny checkpoints on CPU.

Ray schedules fractional ``num_gpus`` on the fake GPUs the test nodes declare, exactly as on
real ones; the tiny models just run on the CPU inside those replicas.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.common import REPO_ROOT
from vlgraph.access_config import hash_key
from vlgraph.profiles import load_application, model_slots, with_sources
from vlgraph.tiny import ensure_checkpoint

SERVE_CONFIG = REPO_ROOT / "serve_config.yaml"
#: The API key of the cluster tests' deployments (serve_config.yaml requires one).
CLUSTER_API_KEY = "vlgraph-cluster-tests-key-0123456789"


def tiny_gpu_application(
    checkpoint_cache: Path, folder: Path, replicas: int | None = None
) -> dict[str, Any]:
    """serve_config.yaml's application with tiny CPU models, its files under ``folder``, and
    :data:`CLUSTER_API_KEY` as its one API key.

    ``replicas`` replaces every model's autoscaling with that fixed count (one replica of
    every model resident at once: what "packs onto one GPU" means)."""
    application = load_application(SERVE_CONFIG)

    def tiny_source(family: str) -> str:
        return str(ensure_checkpoint(family, checkpoint_cache, "tiny"))

    args = with_sources(
        application["args"],
        tiny_source,
        replicas=replicas,
        device="cpu",
        dtype="float32",
        torch_threads=1,
    )
    (folder / "images").mkdir(parents=True, exist_ok=True)
    args["ingress"] = {**args["ingress"], "image_root": str(folder / "images")}
    args["store"] = {**args["store"], "data_dir": str(folder / "data")}
    args["checkpoint_cache_dir"] = str(checkpoint_cache)
    args["access"] = {
        **args.get("access", {}),
        "keys": [{"name": "cluster-tests", "sha256": hash_key(CLUSTER_API_KEY)}],
    }
    return {**application, "args": args}


def gpu_shares(application: dict[str, Any]) -> dict[str, float]:
    """``num_gpus`` of each model block of the application, by model key."""
    shares = {}
    for parent, key in model_slots(application["args"]):
        if parent[key] is not None:
            options = parent[key]["deployment"].get("ray_actor_options", {})
            shares[key] = float(options.get("num_gpus", 0))
    return shares
