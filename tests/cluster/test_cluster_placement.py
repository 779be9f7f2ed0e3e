"""Fractional GPU placement of the GPU profile on a simulated Ray cluster with fake GPUs.

Two nodes of one machine (``ray.cluster_utils.Cluster``), each declaring one GPU that Ray
schedules like a real one. ``serve_config.yaml`` is deployed as ``serve deploy`` would deploy
it (the declarative path: the controller imports ``graphs.app:build_app``), with its GPU and CPU
shares untouched and only the models swapped for tiny CPU checkpoints.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.cluster_profile import CLUSTER_API_KEY, gpu_shares, tiny_gpu_application
from tests.support.common import free_port, jpeg_bytes, noise_image, release_ray, wait_until_healthy

pytestmark = pytest.mark.cluster

APP = "vlgraph"
REPLICA_PREFIX = f"ServeReplica:{APP}:"


class SimulatedCluster:
    """A head node with one fake GPU, Serve on it, and room for a second GPU node."""

    def __init__(self) -> None:
        import ray
        from ray import serve
        from ray.cluster_utils import Cluster

        release_ray()
        self.port = free_port()
        # 16 logical CPUs: every deployment of the profile asks for one CPU per replica.
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 16, "num_gpus": 1, "include_dashboard": False},
        )
        ray.init(address=self.cluster.address, namespace="vlgraph-cluster", log_to_driver=False)
        # One proxy: every simulated node shares this machine's ports.
        serve.start(
            proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": self.port}
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def deploy(self, application: dict[str, Any]) -> None:
        """Deploy the application from its config, as ``serve deploy`` does."""
        from ray.serve.context import _get_global_client
        from ray.serve.schema import ServeDeploySchema

        schema = ServeDeploySchema.model_validate(
            {"proxy_location": "HeadOnly", "applications": [application]}
        )
        _get_global_client().deploy_apps(schema)

    def add_gpu_node(self) -> str:
        """A second node with one fake GPU; its node id."""
        node = self.cluster.add_node(num_cpus=8, num_gpus=1)
        self.cluster.wait_for_nodes()
        return node.node_id

    def close(self) -> None:
        """Serve, the driver and every simulated node down."""
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()
        self.cluster.shutdown()


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimulatedCluster]:
    simulated = SimulatedCluster()
    yield simulated
    simulated.close()


def wait_for_replicas(expected: dict[str, int], timeout_s: float = 300) -> dict[str, Any]:
    """Wait until each deployment runs its expected replica count and the app is RUNNING."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        status = serve.status().applications.get(APP)
        if status is not None and status.status == "RUNNING":
            running = {
                name: deployment.replica_states.get("RUNNING", 0)
                for name, deployment in status.deployments.items()
            }
            if all(running.get(name) == count for name, count in expected.items()):
                return status.deployments
        if time.monotonic() > deadline:
            raise AssertionError(f"replicas not running as {expected} in {timeout_s} s: {status}")
        time.sleep(1)


def replicas_by_node() -> dict[str, Counter]:
    """Alive replica actors of the app: node id -> Counter of deployment names."""
    import ray

    placed: dict[str, Counter] = {}
    for actor in ray._private.state.actors().values():
        name = actor["ActorClassName"]
        if actor["State"] == "ALIVE" and name.startswith(REPLICA_PREFIX):
            node = actor["Address"]["NodeID"]
            placed.setdefault(node, Counter())[name.removeprefix(REPLICA_PREFIX)] += 1
    return placed


def gpus_in_use() -> dict[str, float]:
    """GPU shares Ray has handed out on each node (total minus available)."""
    import ray

    available = ray._private.state.available_resources_per_node()
    return {
        node["NodeID"]: node["Resources"].get("GPU", 0) - available[node["NodeID"]].get("GPU", 0)
        for node in ray.nodes()
        if node["Alive"] and node["Resources"].get("GPU", 0) > 0
    }


def deployment_names(url: str) -> dict[str, str]:
    """Serve deployment name of every model, by model key (``/healthz`` names them)."""
    models = httpx.get(url + "/healthz", timeout=30).json()["models"]
    return {key: model["deployment"] for key, model in models.items()}


def test_every_deployment_of_the_gpu_profile_fits_one_gpu_then_spreads_to_a_second_node(
    cluster: SimulatedCluster, checkpoint_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("cluster-placement")
    application = tiny_gpu_application(checkpoint_cache, folder, replicas=1)
    cluster.deploy(application)
    wait_until_healthy(cluster.url, timeout_s=300)
    names = deployment_names(cluster.url)
    shares = {names[key]: share for key, share in gpu_shares(application).items()}
    assert len(shares) >= 9 and all(share > 0 for share in shares.values()), shares

    # One replica of every model on the one GPU node, each holding its configured share.
    wait_for_replicas(dict.fromkeys(shares, 1))
    (head,) = gpus_in_use()
    placed = replicas_by_node()
    assert set(placed) == {head}, placed
    assert all(placed[head][name] == 1 for name in shares), placed[head]
    configured = sum(shares.values())
    assert 0 < configured <= 1, "one replica of every model must fit one GPU"
    assert gpus_in_use()[head] == pytest.approx(configured)

    # Scaled past one GPU: BLIP to four replicas, three shares more than the head's GPU holds.
    second = cluster.add_gpu_node()
    blip = names["blip"]
    blip_options = application["args"]["models"]["blip"]["deployment"]
    blip_options["num_replicas"] = 4
    assert configured + 3 * shares[blip] > 1, "the test must ask for more than one GPU"
    cluster.deploy(application)
    wait_for_replicas({**dict.fromkeys(shares, 1), blip: 4})

    placed = replicas_by_node()
    in_use = gpus_in_use()
    assert placed[second][blip] >= 1, placed
    for node, counts in placed.items():
        held = sum(shares.get(name, 0) * count for name, count in counts.items())
        assert in_use.get(node, 0) == pytest.approx(held), (node, counts)
        assert in_use.get(node, 0) <= 1 + 1e-9, f"node {node} holds {in_use[node]} GPUs"
    assert sum(in_use.values()) == pytest.approx(configured + 3 * shares[blip])

    # The app still answers with BLIP spread over two nodes.
    for index in range(4):
        (folder / "images" / f"probe{index}.jpg").write_bytes(jpeg_bytes(noise_image(index)))
        body = {"image_path": f"probe{index}.jpg"}
        response = httpx.post(
            cluster.url + "/caption",
            json=body,
            headers={"X-API-Key": CLUSTER_API_KEY},
            timeout=60,
        )
        assert response.status_code == 200, response.text
