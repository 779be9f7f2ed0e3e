"""Applications of models a profile names itself (``models: {NAME: {task: ..., source: ...}}``),
served beside the session's app by the modules that test them: BLIP (every profile serves it)
and the named models, nothing else."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from graphs.app import build_app
from tests.support.common import make_test_config, wait_until_healthy
from vlgraph.config import AppConfig


def named_model(task: str, source: str, **fields: Any) -> dict[str, Any]:
    """A named model's profile block as the tests run it: CPU, one torch thread, a small CPU
    share, a deadline long enough for a loaded 2-core machine."""
    return {
        "task": task,
        "source": source,
        "device": "cpu",
        "torch_threads": 1,
        "batching": {"max_batch_size": 8, "batch_wait_timeout_s": 0.05},
        "deployment": {
            "max_ongoing_requests": 16,
            "request_timeout_s": 120,
            "ray_actor_options": {"num_cpus": 0.1},
        },
        **fields,
    }


@contextlib.contextmanager
def served_named_models(
    port: int,
    checkpoint_cache: Path,
    image_root: Path,
    route: str,
    named: dict[str, dict[str, Any]],
) -> Iterator[str]:
    """Serve BLIP and the ``named`` models (name -> profile block) as the application
    ``vlgraph-<route>`` under ``/<route>`` of the session's Ray; its URL until the block ends."""
    from ray import serve

    args = make_test_config(checkpoint_cache, image_root).model_dump(mode="json")
    args["profile"] = route
    args["models"] = {
        "blip": args["models"]["blip"],
        **dict.fromkeys(("blip2", "gemma", "intern_vlm")),
        **named,
    }
    args.update(dict.fromkeys(("vqa", "clip_image", "clip_text", "sd", "sdxl")))
    name = f"vlgraph-{route}"
    serve.run(build_app(AppConfig.model_validate(args)), name=name, route_prefix=f"/{route}")
    url = f"http://127.0.0.1:{port}/{route}"
    try:
        wait_until_healthy(url)
        yield url
    finally:
        serve.delete(name)
