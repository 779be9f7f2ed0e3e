"""The infinity-emb peer (``infinity_emb v2``, 0.0.78): its environment, and one server
process on a free loopback port, serving a sentence-transformers CLIP checkpoint's
``0_CLIPModel`` folder on the CPU with torch, as ``clip``.

Its ``POST /embeddings`` takes infinity's image form: ``{"model": "clip", "input":
["data:image/jpeg;base64,..."], "modality": "image"}``.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.harness import REPO_ROOT, free_port
from vlgraph.cpu_allocator import CPU_ALLOCATOR_ENV

#: Where ``infinity_env.sh`` puts the peer's environment by default (git-ignored).
DEFAULT_VENV = REPO_ROOT / ".cache" / "vlgraph" / "peers" / "infinity-venv"
ENV_SCRIPT = Path(__file__).resolve().parent / "infinity_env.sh"
#: The name the peer serves its model under (the ``model`` of every request).
SERVED_MODEL = "clip"
#: Attempts at a free port: another process may take the one we picked before the peer binds.
PORT_ATTEMPTS = 3


@dataclass(frozen=True)
class PeerServer:
    """A running peer: its base URL, pid and log file."""

    url: str
    pid: int
    log: Path


def is_installed(venv: Path = DEFAULT_VENV) -> bool:
    """Whether ``venv`` holds a peer environment (its ``infinity_emb`` command)."""
    return (venv / "bin" / "infinity_emb").is_file()


def install(venv: Path = DEFAULT_VENV) -> Path:
    """Create the peer's environment with ``infinity_env.sh`` (kept if it already works)."""
    subprocess.run(["bash", str(ENV_SCRIPT), str(venv)], check=True, stdout=subprocess.DEVNULL)
    return venv


def peer_environment(threads: int, replica_allocator: bool) -> dict[str, str]:
    """The peer's process environment: offline, no telemetry, ``threads`` torch threads,
    nothing of this project's environment that would reach its Python (``PYTHONPATH``), and
    glibc's default malloc unless ``replica_allocator`` (then vlgraph's replicas' settings)."""
    env = {key: value for key, value in os.environ.items() if key not in CPU_ALLOCATOR_ENV}
    for key in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(key, None)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        DO_NOT_TRACK="1",
        INFINITY_ANONYMOUS_USAGE_STATS="0",
        OMP_NUM_THREADS=str(threads),
    )
    if replica_allocator:
        env.update(CPU_ALLOCATOR_ENV)
    return env


def server_command(
    venv: Path, model_folder: Path, port: int, batch_size: int, warm_up: bool
) -> list[str]:
    """``infinity_emb v2`` serving ``model_folder`` as :data:`SERVED_MODEL` on ``port``."""
    return [
        str(venv / "bin" / "infinity_emb"),
        "v2",
        "--model-id",
        str(model_folder),
        "--served-model-name",
        SERVED_MODEL,
        "--engine",
        "torch",
        "--device",
        "cpu",
        "--batch-size",
        str(batch_size),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model-warmup" if warm_up else "--no-model-warmup",
    ]


@contextmanager
def infinity_server(
    model_folder: Path,
    log_folder: Path,
    *,
    venv: Path = DEFAULT_VENV,
    batch_size: int = 16,
    threads: int = 2,
    replica_allocator: bool = False,
    warm_up: bool = True,
    timeout_s: float = 300,
) -> Iterator[PeerServer]:
    """The peer serving ``model_folder`` until ``GET /health`` answers; stopped at the end.
    A port taken between picking and binding is retried on another."""
    env = peer_environment(threads, replica_allocator)
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = free_port()
        log = log_folder / f"infinity-{port}.log"
        command = server_command(venv, model_folder, port, batch_size, warm_up)
        with log.open("w") as output:
            process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            if _wait_healthy(process, url, timeout_s):
                yield PeerServer(url, process.pid, log)
                return
            if attempt == PORT_ATTEMPTS or "address already in use" not in _tail(log).lower():
                raise RuntimeError(f"infinity exited with {process.returncode}:\n{_tail(log)}")
        finally:
            _stop(process)


def _wait_healthy(process: subprocess.Popen, url: str, timeout_s: float) -> bool:
    """True once ``GET /health`` answers 200; false if the process exits first."""
    deadline = time.monotonic() + timeout_s
    while process.poll() is None:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"infinity did not answer {url}/health in {timeout_s} s")
        time.sleep(0.5)
    return False


def _stop(process: subprocess.Popen) -> None:
    """Terminate ``process`` (killed after 30 s) and wait for it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tail(log: Path, characters: int = 3000) -> str:
    """The end of ``log``."""
    return log.read_text(errors="replace")[-characters:] if log.exists() else ""
