"""docs/deploying.md, "Ray cluster", step by step through the command line: ``ray start
--head`` with token authentication, ``serve deploy`` of ``serve_config.yaml``, ``serve status``,
then ``serve shutdown`` and ``ray stop``.

The cluster is this machine with one fake GPU declared (``--num-gpus 1``), so Ray schedules
the profile's fractional shares as on a GPU node; the models are tiny CPU checkpoints, every
other setting is ``serve_config.yaml``'s. The code reaches the replicas as the installed
package (``pip install``), the way the Docker image ships it: no ``working_dir``.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.cluster_profile import CLUSTER_API_KEY, SERVE_CONFIG, tiny_gpu_application
from tests.support.common import free_port, release_ray
from tests.support.listening import listening_addresses
from vlgraph.access_config import hash_key

pytestmark = pytest.mark.cli

BIN = Path(sys.executable).parent


def run(command: list[str], env: dict[str, str], cwd: Path, timeout: float = 180):
    """One command-line call, as a user types it."""
    return subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@dataclass(frozen=True)
class LocalCluster:
    """A ``ray start --head`` cluster and what a user needs to reach it."""

    env: dict[str, str]
    folder: Path
    dashboard: str
    dashboard_port: int
    url: str
    config_file: Path

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: float = 180):
        """``serve ARGS --address DASHBOARD`` with this cluster's token."""
        command = [str(BIN / "serve"), *args, "--address", self.dashboard]
        return run(command, env or self.env, self.folder, timeout)


@pytest.fixture(scope="module")
def local_cluster(
    checkpoint_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    """docs/deploying.md's commands: a token, ``ray start --head`` on localhost, the deploy file."""
    release_ray()
    folder = tmp_path_factory.mktemp("local-cluster")
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith("RAY_")},
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "HOME": str(folder),  # no ~/.ray/auth_token of the machine's user gets in the way
    }
    dashboard_port, http_port = free_port(), free_port()
    start = [
        str(BIN / "ray"), "start", "--head", "--port", str(free_port()),
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
        "--num-cpus", "16", "--num-gpus", "1", "--disable-usage-stats",
    ]  # fmt: skip
    started = run(start, env, folder)
    assert started.returncode == 0, started.stdout + started.stderr
    # serve_config.yaml with tiny models, the API on a free loopback port.
    deploy_config = yaml.safe_load(SERVE_CONFIG.read_text())
    deploy_config["http_options"].update(host="127.0.0.1", port=http_port)
    deploy_config["applications"] = [tiny_gpu_application(checkpoint_cache, folder)]
    config_file = folder / "serve_config.yaml"
    config_file.write_text(yaml.safe_dump(deploy_config, sort_keys=False))
    try:
        yield LocalCluster(
            env=env,
            folder=folder,
            dashboard=f"http://127.0.0.1:{dashboard_port}",
            dashboard_port=dashboard_port,
            url=f"http://127.0.0.1:{http_port}",
            config_file=config_file,
        )
    finally:
        dashboard = f"http://127.0.0.1:{dashboard_port}"
        run([str(BIN / "serve"), "shutdown", "-y", "--address", dashboard], env, folder)
        stopped = run([str(BIN / "ray"), "stop", "--force"], env, folder)
        assert stopped.returncode == 0, stopped.stderr


def serve_status(cluster: LocalCluster) -> dict:
    """``serve status`` parsed (it prints YAML)."""
    result = cluster.cli("status")
    assert result.returncode == 0, result.stdout + result.stderr
    return yaml.safe_load(result.stdout)


def deploy_and_wait(cluster: LocalCluster, config_file: Path) -> dict:
    """``serve deploy`` the file and wait until the application is RUNNING; its status."""
    deployed = cluster.cli("deploy", str(config_file))
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    deadline = time.monotonic() + 420
    while True:
        status = serve_status(cluster)
        application = (status.get("applications") or {}).get("vlgraph", {})
        if application.get("status") in ("RUNNING", "DEPLOY_FAILED"):
            break
        assert time.monotonic() < deadline, f"not running after 420 s:\n{status}"
        time.sleep(2)
    assert application["status"] == "RUNNING", application
    return status


def test_serve_deploy_then_serve_status_shows_every_deployment_healthy(
    local_cluster: LocalCluster,
) -> None:
    status = deploy_and_wait(local_cluster, local_cluster.config_file)
    application = status["applications"]["vlgraph"]
    deployments = application["deployments"]
    # Every model of serve_config.yaml plus the ingress and the pipeline.
    assert len(deployments) >= 11, sorted(deployments)
    unhealthy = {name: d for name, d in deployments.items() if d["status"] != "HEALTHY"}
    assert not unhealthy, unhealthy
    assert status["proxies"] and set(status["proxies"].values()) == {"HEALTHY"}

    health = httpx.get(local_cluster.url + "/healthz", timeout=30)
    assert health.status_code == 200, health.text
    assert health.json()["profile"] == "gpu"
    # serve_config.yaml asks for API keys: the cluster's one opens the API, nothing else does.
    assert httpx.get(local_cluster.url + "/api/models", timeout=30).status_code == 401
    keyed = httpx.get(
        local_cluster.url + "/api/models", headers={"X-API-Key": CLUSTER_API_KEY}, timeout=30
    )
    assert keyed.status_code == 200, keyed.text


def ingress_replicas(cluster: LocalCluster) -> set[str]:
    """Actor ids of the live ingress replicas (``ray list actors`` on the dashboard)."""
    listed = run(
        [
            str(BIN / "ray"), "list", "actors", "--address", cluster.dashboard,
            "--filter", "state=ALIVE", "--limit", "10000", "--format", "json",
        ],
        cluster.env,
        cluster.folder,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stdout + listed.stderr
    return {
        actor["actor_id"]
        for actor in json.loads(listed.stdout)
        if actor["class_name"] == "ServeReplica:vlgraph:ingress"
    }


def test_a_key_rotated_by_serve_deploy_applies_without_restarting_replicas(
    local_cluster: LocalCluster,
) -> None:
    """docs/access.md's rotation: the ingress's user_config with the new key, ``serve
    deploy`` again; every ingress replica takes it in place (same actors), the old key is
    refused."""
    deploy_and_wait(local_cluster, local_cluster.config_file)
    before = ingress_replicas(local_cluster)
    assert len(before) == 2, before  # serve_config.yaml's two ingress replicas
    new_key = "vlg-rotated-cluster-key-0123456789abcdef"
    document = yaml.safe_load(local_cluster.config_file.read_text())
    application = document["applications"][0]
    # The ingress's own user_config, as docs/access.md shows: Serve applies it in place
    # (a change of the application's args would rebuild every deployment).
    application.setdefault("deployments", []).append(
        {
            "name": "ingress",
            "user_config": {
                "access": {
                    "mode": "keys",
                    "keys": [{"name": "cluster-tests", "sha256": hash_key(new_key)}],
                    "limits": application["args"]["access"]["limits"],
                }
            },
        }
    )
    rotated = local_cluster.folder / "rotated.yaml"
    rotated.write_text(yaml.safe_dump(document, sort_keys=False))
    try:
        deploy_and_wait(local_cluster, rotated)
        deadline = time.monotonic() + 60
        while True:
            answer = httpx.get(
                local_cluster.url + "/v1/models", headers={"X-API-Key": new_key}, timeout=30
            )
            if answer.status_code == 200:
                break
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.5)
        for _ in range(8):  # fresh connections reach both replicas
            assert (
                httpx.get(
                    local_cluster.url + "/v1/models",
                    headers={"Authorization": f"Bearer {new_key}"},
                    timeout=30,
                ).status_code
                == 200
            )
            old = httpx.get(
                local_cluster.url + "/v1/models",
                headers={"Authorization": f"Bearer {CLUSTER_API_KEY}"},
                timeout=30,
            )
            assert old.status_code == 401 and old.json()["error"]["code"] == "invalid_key"
        assert ingress_replicas(local_cluster) == before, "an ingress replica was restarted"
    finally:
        deploy_and_wait(local_cluster, local_cluster.config_file)


def test_cluster_refuses_a_client_without_the_token(local_cluster: LocalCluster) -> None:
    wrong = {**local_cluster.env, "RAY_AUTH_TOKEN": "not-the-token"}
    refused = local_cluster.cli("status", env=wrong)
    assert refused.returncode != 0
    assert "401" in refused.stdout + refused.stderr or "uthenticat" in refused.stderr
    # The Jobs API on the dashboard runs code for whoever reaches it: no token, no entry.
    jobs = httpx.get(f"{local_cluster.dashboard}/api/jobs/", timeout=10)
    assert jobs.status_code == 401, jobs.text


def test_dashboard_and_jobs_api_listen_on_localhost_only(local_cluster: LocalCluster) -> None:
    addresses = listening_addresses(local_cluster.dashboard_port)
    assert addresses == {"127.0.0.1"}, addresses
