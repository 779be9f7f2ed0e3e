"""What every model-path benchmark shares: closed-loop HTTP load at a concurrency sweep, the
served app on Ray Serve, the naive one-request-at-a-time server, per-process peak memory, and
the printed and JSON report.

A path (see ``bench/paths.py``) says how to build its app, its requests, its raw batched model
call and its naive server; :func:`run_path` measures the three on the same inputs in one run.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from vlgraph.cpu_allocator import CPU_ALLOCATOR_ENV

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"


@dataclass(frozen=True)
class Request:
    """One HTTP request of a benchmark: method, path and httpx keyword arguments."""

    method: str
    path: str
    options: dict[str, Any] = field(default_factory=dict)
    #: How many model inputs the request carries (items/s counts these).
    items: int = 1


@dataclass
class Level:
    """The figures of one concurrency level."""

    concurrency: int
    requests: int
    items: int
    errors: int
    seconds: float
    items_per_s: float
    p50_s: float
    p99_s: float


# Below Linux's ephemeral range (32768-60999), where outgoing connections take their local
# ports, and above Ray's worker ports (10002-19999): a port the kernel hands out (bind to 0)
# comes from the ephemeral range, so a connection opened between the probe and the server's
# own bind can take it ("Failed to bind to address").
_QUIET_PORTS = range(20000, 32768)


def free_port() -> int:
    """A TCP port nothing listens on right now, from a range nobody else draws from."""
    for port in random.sample(_QUIET_PORTS, 200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free TCP port between {_QUIET_PORTS.start} and {_QUIET_PORTS.stop}")


async def closed_loop(
    url: str, make_request: Callable[[int], Request], concurrency: int, total: int
) -> Level:
    """``concurrency`` clients, each sending its next request when the last one answered,
    until ``total`` requests were sent. A non-2xx answer counts as an error."""
    latencies: list[float] = []
    errors = items = 0
    next_index = 0

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal next_index, errors, items
        while next_index < total:
            request = make_request(next_index)
            next_index += 1
            started = time.perf_counter()
            response = await client.request(request.method, request.path, **request.options)
            latencies.append(time.perf_counter() - started)
            if response.is_success:
                items += request.items
            else:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=1800, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return Level(
        concurrency=concurrency,
        requests=total,
        items=items,
        errors=errors,
        seconds=elapsed,
        items_per_s=items / elapsed,
        p50_s=statistics.median(latencies),
        p99_s=latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    )


def sweep(
    url: str, make_request: Callable[[int], Request], levels: dict[int, int], warm_up: int
) -> list[Level]:
    """Warm the path with ``warm_up`` requests, then each level in turn."""
    if warm_up:
        asyncio.run(closed_loop(url, make_request, min(warm_up, 8), warm_up))
    return [
        asyncio.run(closed_loop(url, make_request, concurrency, total))
        for concurrency, total in levels.items()
    ]


def peak_memory_mib(pid: int) -> float:
    """A process's peak resident memory (``VmHWM``), in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def this_process_peak_mib() -> float:
    """The peak resident memory of this process (the raw model runs here)."""
    return peak_memory_mib(os.getpid())


class ServedApp:
    """The application under test on a local Ray instance started once per process, in
    ``vlgraph-serve``'s ``throughput`` mode (HAProxy to the ingress, as the Docker image runs)
    or ``classic`` (Serve's Python proxy)."""

    def __init__(self, mode: str = "throughput") -> None:
        import ray
        from ray import serve

        from vlgraph.serve_cli import ServeMode

        # Ray's processes read Serve's mode from the environment they start with.
        os.environ.update(ServeMode(mode=mode).environment())
        if mode == "throughput":
            # HAProxy's stats and metrics ports are fixed by default: a second Serve in this
            # mode on the machine (another run, a test) would make ours fail to start.
            for variable in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT"):
                os.environ.setdefault(variable, str(free_port()))
        self.mode = mode
        self.port = free_port()
        # Logical CPUs only schedule replicas; the profile's shares (ingress 0.25, a model 1,
        # a second model 1) may add up past a 2-core machine's count, which would leave a
        # replica pending forever. Torch threads are set per model, not from this.
        # ``local``: always a new instance of our own, never one a ``ray start`` left running.
        ray.init(
            address="local",
            num_cpus=max(8, os.cpu_count() or 1),
            include_dashboard=False,
            log_to_driver=False,
        )
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        self.url = f"http://127.0.0.1:{self.port}"

    def run(self, application: Any, name: str) -> str:
        """Serve ``application`` at ``/`` (the ingress's routes as users see them)."""
        from ray import serve

        serve.run(application, name=name, route_prefix="/")
        return self.url

    def start_many(self, applications: dict[str, tuple[Any, str]]) -> dict[str, str]:
        """Start deploying several applications at once, by name: (application, route
        prefix) each, without waiting for them (:meth:`wait_running`). Their base URLs."""
        from ray import serve

        serve.run_many(
            [
                serve.RunTarget(target=application, name=name, route_prefix=prefix)
                for name, (application, prefix) in applications.items()
            ],
            wait_for_ingress_deployment_creation=False,
            wait_for_applications_running=False,
        )
        return {name: self.url + prefix.rstrip("/") for name, (_, prefix) in applications.items()}

    @staticmethod
    def wait_running(names: list[str], timeout_s: float = 900) -> None:
        """Wait until every application in ``names`` is running; raise if one fails."""
        from ray import serve

        deadline = time.monotonic() + timeout_s
        while True:
            applications = serve.status().applications
            pending = []
            for name in names:
                status = applications.get(name)
                if status is not None and status.status == "DEPLOY_FAILED":
                    raise RuntimeError(f"application {name} failed to deploy: {status.message}")
                if status is None or status.status != "RUNNING":
                    pending.append(name)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"not running after {timeout_s} s: {pending}")
            time.sleep(0.5)

    @staticmethod
    def replica_processes(name: str) -> dict[int, str]:
        """Process id -> ``application/deployment/replica`` of every live replica of ``name``."""
        # The actor table from the GCS: ``ray.util.state`` would need the dashboard, which
        # the benchmark leaves off (its processes would share the measured cores).
        from ray._private.state import actors

        processes = {}
        for actor in actors(actor_state_name="ALIVE").values():
            actor_name = actor["Name"] or ""
            if actor_name.startswith(f"SERVE_REPLICA::{name}#") and actor["Pid"]:
                processes[actor["Pid"]] = actor_name.removeprefix("SERVE_REPLICA::").replace(
                    "#", "/"
                )
        return processes

    @classmethod
    def replica_peaks_mib(cls, name: str) -> dict[str, float]:
        """Peak resident memory of every replica of application ``name``, by replica."""
        return {
            replica: round(peak_memory_mib(pid), 1)
            for pid, replica in cls.replica_processes(name).items()
        }

    @staticmethod
    def delete(name: str) -> None:
        from ray import serve

        serve.delete(name)


@contextmanager
def naive_server(
    path_name: str, checkpoints: list[Path], threads: int
) -> Iterator[tuple[str, int]]:
    """``bench/naive_server.py``: the same routes served by one FastAPI process that runs
    the model on each request as it comes, one at a time, no batching (what the original
    captioning services do), from ``checkpoints`` (one per model of the path, in its order).
    Yields its URL and pid; stopped at the end."""
    arguments = [path_name, *(str(checkpoint) for checkpoint in checkpoints)]
    with _naive_process(arguments, threads) as (url, pid):
        yield url, pid


@contextmanager
def naive_servers(
    checkpoints: dict[str, list[Path]], threads: int
) -> Iterator[tuple[dict[str, str], int]]:
    """:func:`naive_server` for several paths in one process (the smoke run: one start, one
    set of imports), each path's routes under ``/PATH``, from its checkpoints in
    ``checkpoints`` (by path name). Yields each path's base URL, by name, and the pid."""
    arguments = []
    for name, paths in checkpoints.items():
        arguments += ["--mount", name, *(str(checkpoint) for checkpoint in paths)]
    with _naive_process(arguments, threads) as (url, pid):
        yield {name: f"{url}/{name}" for name in checkpoints}, pid


@contextmanager
def _naive_process(arguments: list[str], threads: int) -> Iterator[tuple[str, int]]:
    """``bench/naive_server.py ARGUMENTS`` on a free port until it answers ``/ready``."""
    port = free_port()
    command = [
        sys.executable,
        str(REPO_ROOT / "bench" / "naive_server.py"),
        *arguments,
        "--port",
        str(port),
        "--threads",
        str(threads),
    ]
    env = {**os.environ, **CPU_ALLOCATOR_ENV, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(command, env=env, cwd=REPO_ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the naive server exited with {process.returncode}")
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the naive server did not start in 600 s")
            time.sleep(0.5)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=60)


def use_replica_allocator_settings() -> None:
    """Re-run this process with the allocator settings model replicas get, so that the raw
    model and the served path use the same malloc (glibc reads them at start-up only)."""
    if any(os.environ.get(key) != value for key, value in CPU_ALLOCATOR_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **CPU_ALLOCATOR_ENV})


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import torch

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d"),
    }


def ratios(served: list[Level], raw_items_per_s: float, naive: list[Level]) -> list[dict]:
    """Per concurrency level: served/raw and served/naive (naive at the same level)."""
    naive_at = {level.concurrency: level for level in naive}
    rows = []
    for level in served:
        row = {"concurrency": level.concurrency, "served_over_raw": None, "served_over_naive": None}
        if raw_items_per_s:
            row["served_over_raw"] = round(level.items_per_s / raw_items_per_s, 3)
        if level.concurrency in naive_at and naive_at[level.concurrency].items_per_s:
            row["served_over_naive"] = round(
                level.items_per_s / naive_at[level.concurrency].items_per_s, 3
            )
        rows.append(row)
    return rows


def write_report(name: str, report: dict[str, Any], output: Path | None = None) -> Path:
    """Print the figures with the command that made them and write them as JSON."""
    served: list[Level] = report["served"]
    naive: list[Level] = report.get("naive", [])
    raw = report.get("raw")
    print(f"== {name}  ({report['command']})")
    if raw:
        print(
            f"raw in-process, batch {raw['batch']}: {raw['items_per_s']:.3f} items/s "
            f"(peak {report['memory_mib'].get('raw_process', 0):.0f} MiB)"
        )
    for level, row in zip(served, report["ratios"], strict=True):
        naive_level = next((n for n in naive if n.concurrency == level.concurrency), None)
        naive_text = f"  naive {naive_level.items_per_s:.3f}/s" if naive_level else ""
        print(
            f"c={level.concurrency:3d}  served {level.items_per_s:8.3f} items/s  "
            f"p50 {level.p50_s * 1000:9.1f} ms  p99 {level.p99_s * 1000:9.1f} ms  "
            f"errors {level.errors}{naive_text}  served/raw {row['served_over_raw']}  "
            f"served/naive {row['served_over_naive']}"
        )
    print(f"peak memory (MiB): {report['memory_mib']}")
    for key, value in (report.get("extra") or {}).items():
        print(f"{key}: {json.dumps(value)}")
    written = {
        **report,
        "served": [asdict(level) for level in served],
        "naive": [asdict(level) for level in naive],
    }
    target = output or RESULTS_DIR / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(written, indent=2, default=str))
    print(f"wrote {target}")
    return target
