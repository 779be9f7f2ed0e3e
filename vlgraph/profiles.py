"""Variants of a profile: the same deployments, GPU shares and options with other model sources.

``bench/gpu_figures.py`` serves ``serve_config.yaml`` on full-size random-weight checkpoints;
the cluster tests serve it on tiny ones, on CPU, with its fractional ``num_gpus`` kept so that
Ray places every replica as it would on GPUs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

#: Model blocks that sit at the top level of the args (the rest are under ``models``).
TOP_LEVEL_MODELS = ("vqa", "clip_image", "clip_text", "sd", "sdxl")
#: The checkpoint family of each model key whose block names none.
FAMILY_OF = {
    "blip": "blip-caption",
    "vqa": "blip-vqa",
    "clip_image": "clip",
    "clip_text": "clip-multilingual",
}


def load_application(config_file: Path) -> dict[str, Any]:
    """The one application of a Serve config file (``serve run`` / ``serve deploy`` format)."""
    (application,) = yaml.safe_load(Path(config_file).read_text())["applications"]
    return application


def model_slots(args: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str]]:
    """``(parent, key)`` of every model block of the args, set or not: ``parent[key]``."""
    for key in args.get("models", {}):
        yield args["models"], key
    for key in TOP_LEVEL_MODELS:
        if key in args:
            yield args, key


def checkpoint_family(key: str, block: dict[str, Any]) -> str:
    """The checkpoint family of a model block (its ``family``, else the key's)."""
    return block.get("family") or FAMILY_OF[key]


def with_sources(
    args: dict[str, Any],
    source_of: Callable[[str], str],
    *,
    replicas: int | None = None,
    skip: set[str] = frozenset(),
    **block_fields: Any,
) -> dict[str, Any]:
    """A copy of ``args`` with every model's source replaced by ``source_of(family)`` and
    ``block_fields`` set in every model block (``device="cpu"``, ...). ``replicas`` replaces
    autoscaling with that fixed count; models in ``skip`` are left out (BLIP, which the app
    requires, keeps its block). GPU shares, CPU shares and queue bounds stay as they are."""
    args = copy.deepcopy(args)
    for parent, key in model_slots(args):
        block = parent[key]
        if block is None:
            continue
        if key in skip:
            parent[key] = None if key != "blip" else block
            continue
        deployment = dict(block.get("deployment", {}))
        if replicas is not None:
            deployment.pop("autoscaling_config", None)
            deployment["num_replicas"] = replicas
        parent[key] = {
            **block,
            **block_fields,
            "source": source_of(checkpoint_family(key, block)),
            "deployment": deployment,
        }
    return args
