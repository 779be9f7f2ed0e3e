"""The keyed application the access tests share: BLIP, the CLIP text encoder and Stable
Diffusion behind two ingress replicas whose rate-limit budgets live in the session's
redis-server, with the keys of :data:`KEYS` and the limits of :data:`LIMITS`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.common import make_test_config
from vlgraph.access_config import hash_key
from vlgraph.config import AppConfig

APP_NAME = "vlgraph-keyed"
ROUTE_PREFIX = "/keyed"
#: Every key by name; 'revoked' is not configured (a key that was removed).
KEYS = {
    name: f"vlg-test-{name}-key-0123456789abcdef"
    for name in ("alice", "tight", "streamer", "shared", "load", "recovered", "fuzz", "revoked")
}
ADMIN_KEY = "the-admin-key-of-the-keyed-app-0123"
#: The side of the streamed generations of the access tests.
STREAM_SIDE = 512
#: Named limits; a key uses the one named like it, else 'default'.
LIMITS = {
    "default": {"requests_per_minute": 1000, "max_in_flight": 16},
    "tight": {"requests_per_minute": 3},
    "streamer": {"max_in_flight": 1},
    "shared": {"requests_per_minute": 8},
    "load": {"requests_per_minute": 100_000, "max_in_flight": 64},
    "recovered": {"requests_per_minute": 2},
    "fuzz": {"requests_per_minute": 100_000},
}


@dataclass
class KeyedApp:
    """The keyed application: its URL, the args it was deployed with, its log folder."""

    url: str
    args: dict[str, Any]
    logs: Path

    def deploy(self, args: dict[str, Any]) -> None:
        """``serve.run`` these args under the keyed app's name (a redeploy applies them)."""
        from ray import serve

        from graphs.app import build_app

        serve.run(
            build_app(AppConfig.model_validate(args)),
            name=APP_NAME,
            route_prefix=ROUTE_PREFIX,
            logging_config={"encoding": "JSON", "logs_dir": str(self.logs)},
        )

    def get(self, path: str, key: str | None = None, header: str = "bearer", **kwargs: Any):
        """GET ``path`` with ``key`` in ``Authorization: Bearer`` or ``X-API-Key``."""
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            if header == "bearer":
                headers["Authorization"] = f"Bearer {key}"
            else:
                headers["X-API-Key"] = key
        return httpx.get(self.url + path, headers=headers, timeout=60, **kwargs)


def keyed_args(
    checkpoint_cache: Path, image_root: Path, data_dir: Path, redis_port: int
) -> dict[str, Any]:
    """The keyed app's args: the offline test profile cut down, keys required."""
    args = make_test_config(checkpoint_cache, image_root, data_dir).model_dump(mode="json")
    args["models"].update(blip2=None, gemma=None, intern_vlm=None)
    args.update(vqa=None, clip_image=None, sdxl=None)
    # Large images allowed, so that a stream lasts seconds (the stream-slot tests).
    args["sd"].update(max_height=STREAM_SIDE, max_width=STREAM_SIDE)
    args["ingress"]["deployment"]["num_replicas"] = 2
    args["cache"] = {"backend": "redis", "redis_host": "127.0.0.1", "redis_port": redis_port}
    args["admin"] = {"api_key": ADMIN_KEY, "debug": False}
    args["access"] = {
        "mode": "keys",
        "keys": [
            {"name": name, "sha256": hash_key(key)}
            for name, key in KEYS.items()
            if name != "revoked"
        ],
        "limits": LIMITS,
        "keys_env": None,
    }
    return args
