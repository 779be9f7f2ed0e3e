"""Application metrics of the ingress, through Ray's metrics API (``ray.serve.metrics``).

They reach Ray's own Prometheus endpoint on every node (and the Ray dashboard's Grafana) like
Serve's built-in metrics, prefixed ``ray_`` and tagged with the application, deployment and
replica. ``GET /metrics`` on the API port returns the same series, read from the Prometheus
endpoint of the node the answering ingress replica runs on.
"""

from __future__ import annotations

import functools
from typing import Any

#: Every series this module defines starts with this (Ray adds ``ray_`` in front).
METRIC_PREFIX = "vlgraph_"

#: Upper bounds (seconds) of the model latency histogram's buckets.
LATENCY_BOUNDARIES = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]


class ServiceMetrics:
    """Requests by route, model, status and caller (the API key's name, never the key);
    access refusals by reason; tokens and images served by caller; cache hits, misses and
    errors; rate limits admitted without Redis; model latency; denoising steps."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self.requests = metrics.Counter(
            "vlgraph_requests",
            description="HTTP requests answered, by route, model, status code and caller (the "
            "API key's name; anonymous when access is open; empty for open routes).",
            tag_keys=("route", "model", "status", "key"),
        )
        self.refusals = metrics.Counter(
            "vlgraph_access_refusals",
            description="Requests refused before any work, by caller and reason: missing_key, "
            "malformed_key, invalid_key, admin_key, key_in_query, rate_limited, "
            "too_many_in_flight.",
            tag_keys=("key", "reason"),
        )
        self.rate_limit_fail_open = metrics.Counter(
            "vlgraph_rate_limit_fail_open",
            description="Rate-limit checks skipped because Redis failed or was down: the "
            "request was admitted.",
        )
        self.tokens = metrics.Counter(
            "vlgraph_tokens",
            description="Tokens read (prompt) and written (completion) for each caller.",
            tag_keys=("key", "model", "kind"),
        )
        self.images = metrics.Counter(
            "vlgraph_images_served",
            description="Images generated for each caller.",
            tag_keys=("key", "model"),
        )
        self.cache_events = metrics.Counter(
            "vlgraph_cache_events",
            description="Result cache lookups and failures: hit, miss or error.",
            tag_keys=("event",),
        )
        self.model_latency = metrics.Histogram(
            "vlgraph_model_latency_seconds",
            description="Seconds from the ingress's call to a model deployment to its answer.",
            boundaries=LATENCY_BOUNDARIES,
            tag_keys=("model",),
        )
        self.generation_steps = metrics.Counter(
            "vlgraph_generation_steps",
            description="Denoising steps run by the image generators (a cancelled stream stops "
            "adding to it).",
            tag_keys=("model",),
        )

    def count_request(self, route: str, model: str, status: int, key: str = "") -> None:
        """One answered HTTP request."""
        self.requests.inc(tags={"route": route, "model": model, "status": str(status), "key": key})

    def count_refusal(self, key: str, reason: str) -> None:
        """One request refused by the access control."""
        self.refusals.inc(tags={"key": key, "reason": reason})

    def count_rate_limit_fail_open(self) -> None:
        """One rate-limit check that Redis could not answer (the request went on)."""
        self.rate_limit_fail_open.inc()

    def count_tokens(self, key: str, model: str, prompt: int, completion: int = 0) -> None:
        """Tokens a caller's request read and wrote."""
        for kind, count in (("prompt", prompt), ("completion", completion)):
            if count:
                self.tokens.inc(count, tags={"key": key, "model": model, "kind": kind})

    def count_images(self, key: str, model: str, images: int) -> None:
        """Images generated for a caller."""
        if images:
            self.images.inc(images, tags={"key": key, "model": model})

    def count_cache_event(self, event: str) -> None:
        """``hit``, ``miss`` or ``error``."""
        self.cache_events.inc(tags={"event": event})

    def observe_model_latency(self, model: str, seconds: float) -> None:
        """One model call's latency as the ingress saw it (queueing included)."""
        self.model_latency.observe(seconds, tags={"model": model})

    def count_generation_steps(self, model: str, steps: int = 1) -> None:
        """Denoising steps a generator ran."""
        self.generation_steps.inc(steps, tags={"model": model})


@functools.cache
def service_metrics() -> ServiceMetrics:
    """This replica's metrics, created on first use (metrics live in the replica process)."""
    return ServiceMetrics()


def ray_metrics_url() -> str:
    """The Prometheus endpoint of the Ray node this process runs on."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    node: dict[str, Any] = next(n for n in ray.nodes() if n["NodeID"] == node_id)
    return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"


def only_vlgraph_series(exposition: str) -> str:
    """The lines of a Prometheus text exposition that belong to this module's metrics."""
    keep = []
    for line in exposition.splitlines():
        name = line.split(" ", 3)[2] if line.startswith("# ") else line
        if name.startswith("ray_" + METRIC_PREFIX):
            keep.append(line)
    return "\n".join(keep) + "\n"
