"""``deploy/rayservice.yaml``: the KubeRay manifest that runs Dockerfile.gpu's image.

No Kubernetes cluster runs here. The Kubernetes objects (Redis, its Service, the network
policies) and the Ray pod templates are validated against Kubernetes' own OpenAPI schemas with
``kubernetes-validate`` (bundled, offline, strict); the RayService fields are checked here;
its Serve config must be ``serve_config.yaml``'s and pass vlgraph's validation.
"""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import ray
import yaml

from deploy.render_rayservice import MANIFEST, SERVE_CONFIG, render
from vlgraph.config import AppConfig
from vlgraph.profiles import model_slots

KUBERNETES_VERSION = "1.33.0"


@pytest.fixture(scope="module")
def documents() -> dict[str, dict[str, Any]]:
    """The manifest's objects by ``kind/name``."""
    return {
        f"{doc['kind']}/{doc['metadata']['name']}": doc
        for doc in yaml.safe_load_all(MANIFEST.read_text())
    }


@pytest.fixture(scope="module")
def ray_cluster(documents: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return documents["RayService/vlgraph"]["spec"]["rayClusterConfig"]


def pod_templates(ray_cluster: dict[str, Any]) -> list[dict[str, Any]]:
    groups = [ray_cluster["headGroupSpec"], *ray_cluster["workerGroupSpecs"]]
    return [group["template"] for group in groups]


def test_the_manifest_carries_serve_config_yaml() -> None:
    manifest = MANIFEST.read_text()
    assert render(manifest, SERVE_CONFIG.read_text()) == manifest, (
        "deploy/rayservice.yaml is out of date: run python deploy/render_rayservice.py"
    )


def test_its_serve_config_is_the_gpu_profile_with_state_in_redis(
    documents, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = yaml.safe_load(documents["RayService/vlgraph"]["spec"]["serveConfigV2"])
    original = yaml.safe_load(SERVE_CONFIG.read_text())
    with pytest.raises(ValueError, match="VLGRAPH_PGVECTOR_DSN"):  # without the Secret
        AppConfig.model_validate(served["applications"][0]["args"])
    # The pods read it from the vlgraph-pgvector Secret.
    dsn = "postgresql://vlgraph:secret@vlgraph-postgres:5432/vlgraph"
    monkeypatch.setenv("VLGRAPH_PGVECTOR_DSN", dsn)
    config = AppConfig.model_validate(served["applications"][0]["args"])
    assert config.store.backend == "redis" and config.cache.backend == "redis"
    assert config.store.redis_host == config.cache.redis_host == "vlgraph-redis"
    assert config.searches() and config.search_engine() == "pgvector"
    assert config.search.pgvector_dsn.get_secret_value() == dsn
    # Everything else exactly as serve_config.yaml says.
    for document in (served, original):
        for key in ("store", "cache", "search"):
            document["applications"][0]["args"].pop(key, None)
    assert served == original


def test_search_is_shared_in_postgres_that_only_ray_pods_reach(documents, ray_cluster) -> None:
    postgres = documents["StatefulSet/vlgraph-postgres"]["spec"]["template"]["spec"]
    (container,) = postgres["containers"]
    assert container["image"].startswith("pgvector/pgvector:")
    assert postgres["securityContext"]["runAsNonRoot"] is True
    assert documents["Service/vlgraph-postgres"]["spec"]["ports"][0]["port"] == 5432
    policy = documents["NetworkPolicy/vlgraph-postgres"]["spec"]
    assert policy["ingress"][0]["ports"] == [{"port": 5432, "protocol": "TCP"}]
    for template in pod_templates(ray_cluster):
        env = {item["name"]: item for item in template["spec"]["containers"][0]["env"]}
        secret = env["VLGRAPH_PGVECTOR_DSN"]["valueFrom"]["secretKeyRef"]
        assert (secret["name"], secret["key"]) == ("vlgraph-pgvector", "dsn")


def test_kubernetes_objects_and_pod_templates_pass_kubernetes_schemas(documents, ray_cluster):
    for name, document in documents.items():
        if not name.startswith("RayService/"):
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    for template in pod_templates(ray_cluster):
        pod_template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": "ray-pod"},
            "template": template,
        }
        kubernetes_validate.validate(pod_template, KUBERNETES_VERSION, strict=True)


def test_ray_pods_run_the_image_as_non_root_with_token_auth(ray_cluster) -> None:
    assert ray_cluster["rayVersion"] == ray.__version__
    assert ray_cluster["authOptions"] == {"mode": "token"}
    images = set()
    for template in pod_templates(ray_cluster):
        security = template["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001
        (container,) = template["spec"]["containers"]
        images.add(container["image"])
        assert container["resources"]["limits"]["memory"]
    assert len(images) == 1, "head and workers run the same image"
    assert ray_cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"


def test_the_gpu_workers_can_hold_every_deployment_at_its_maximum(documents, ray_cluster):
    """Serve's autoscaling can reach every deployment's max_replicas within the GPU pods the
    worker group may add, each model within one pod's GPU."""
    (workers,) = ray_cluster["workerGroupSpecs"]
    (container,) = workers["template"]["spec"]["containers"]
    gpus_per_pod = int(container["resources"]["limits"]["nvidia.com/gpu"])
    served = yaml.safe_load(documents["RayService/vlgraph"]["spec"]["serveConfigV2"])
    needed = 0.0
    for parent, key in model_slots(served["applications"][0]["args"]):
        deployment = parent[key]["deployment"]
        share = deployment["ray_actor_options"]["num_gpus"]
        assert 0 < share <= gpus_per_pod, key
        scaling = deployment.get("autoscaling_config")
        needed += share * (scaling["max_replicas"] if scaling else deployment["num_replicas"])
    assert needed <= workers["maxReplicas"] * gpus_per_pod


def test_only_the_api_is_open_and_redis_keeps_every_write(documents) -> None:
    ray_policy = documents["NetworkPolicy/vlgraph-ray"]["spec"]
    open_rules = [rule for rule in ray_policy["ingress"] if "from" not in rule]
    assert [rule["ports"] for rule in open_rules] == [[{"port": 8000, "protocol": "TCP"}]]
    (operator_rule,) = [
        rule
        for rule in ray_policy["ingress"]
        if any(port["port"] == 8265 for port in rule.get("ports", []))
    ]
    (source,) = operator_rule["from"]
    assert source["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
    for name, document in documents.items():
        if name.startswith("Service/"):
            assert all(port["port"] not in (8265, 52365) for port in document["spec"]["ports"])

    redis = documents["StatefulSet/vlgraph-redis"]["spec"]["template"]["spec"]
    (container,) = redis["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--appendfsync") + 1] == "always"
    major, minor = (int(part) for part in container["image"].split(":")[1].split(".")[:2])
    assert (major, minor) >= (7, 2), "WAITAOF needs Redis 7.2"
