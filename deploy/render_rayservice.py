"""Write ``serve_config.yaml`` into ``deploy/rayservice.yaml``'s ``serveConfigV2``.

    python deploy/render_rayservice.py           # rewrite the manifest in place
    python deploy/render_rayservice.py --check   # exit 1 if the manifest is out of date

The Serve config is the GPU profile unchanged except for where state lives: on Kubernetes the
ingress replicas run on several pods, so the upload store and the result cache both go to
the manifest's Redis (``vlgraph-redis``) instead of SQLite on one pod's disk, and search to
the manifest's PostgreSQL with pgvector (``vlgraph-postgres``; the pods read its connection
string from the ``vlgraph-pgvector`` Secret as ``VLGRAPH_PGVECTOR_DSN``).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
MANIFEST = REPO_ROOT / "deploy" / "rayservice.yaml"
SERVE_CONFIG = REPO_ROOT / "serve_config.yaml"
REDIS = {"backend": "redis", "redis_host": "vlgraph-redis", "redis_port": 6379}
SEARCH = {"engine": "pgvector"}
BLOCK_KEY = re.compile(r"^(?P<indent> *)serveConfigV2: \|\n", re.M)


def kubernetes_serve_config(serve_config: dict[str, Any]) -> dict[str, Any]:
    """``serve_config.yaml`` with every application's store and cache on the shared Redis and
    its search on the shared PostgreSQL."""
    for application in serve_config["applications"]:
        application["args"]["store"] = dict(REDIS)
        application["args"]["cache"] = dict(REDIS)
        application["args"]["search"] = {**application["args"].get("search", {}), **SEARCH}
    return serve_config


def render(manifest: str, serve_config_text: str) -> str:
    """The manifest with its ``serveConfigV2`` block replaced by the rendered Serve config."""
    match = BLOCK_KEY.search(manifest)
    if match is None:
        raise ValueError("the manifest has no 'serveConfigV2: |' block")
    indent = " " * (len(match["indent"]) + 2)
    end = match.end()
    lines = manifest[end:].splitlines(keepends=True)
    consumed = 0
    for line in lines:
        if line.strip() and not line.startswith(indent):
            break
        consumed += len(line)
    config = kubernetes_serve_config(yaml.safe_load(serve_config_text))
    body = yaml.safe_dump(config, sort_keys=False, width=100)
    block = "".join(indent + line if line.strip() else line for line in body.splitlines(True))
    return manifest[:end] + block + manifest[end + consumed :]


def main(argv: list[str] | None = None) -> int:
    """Rewrite the manifest, or with ``--check`` report whether it is up to date."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if stale")
    args = parser.parse_args(argv)
    current = MANIFEST.read_text()
    rendered = render(current, SERVE_CONFIG.read_text())
    if args.check:
        if rendered != current:
            print(f"{MANIFEST} is out of date: run python deploy/render_rayservice.py")
            return 1
        return 0
    MANIFEST.write_text(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
