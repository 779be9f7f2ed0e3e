"""Reachability of model deployments from Serve's own status objects (no Ray needed)."""

import pytest
from ray.serve._private.common import DeploymentStatus, DeploymentStatusTrigger, ReplicaState
from ray.serve.schema import DeploymentStatusOverview

from deployments.ingress.routes.health import model_health


def overview(status: DeploymentStatus, running: int, message: str = "") -> DeploymentStatusOverview:
    return DeploymentStatusOverview(
        status=status,
        status_trigger=DeploymentStatusTrigger.UNSPECIFIED,
        replica_states={ReplicaState.RUNNING: running} if running else {},
        message=message,
    )


@pytest.mark.parametrize(
    ("status", "running", "reachable"),
    [
        (DeploymentStatus.HEALTHY, 1, True),
        (DeploymentStatus.HEALTHY, 0, True),  # scaled to zero: the request starts a replica
        (DeploymentStatus.UPSCALING, 0, True),  # a replica is starting; the request waits
        (DeploymentStatus.UPDATING, 1, True),  # the old replica serves during an update
        (DeploymentStatus.UPDATING, 0, False),  # first deployment, nothing up yet
        (DeploymentStatus.UNHEALTHY, 0, False),
        (DeploymentStatus.UNHEALTHY, 1, True),  # one replica still runs and is routed to
        (DeploymentStatus.DEPLOY_FAILED, 0, False),
    ],
)
def test_reachability_follows_serves_status(
    status: DeploymentStatus, running: int, reachable: bool
) -> None:
    health = model_health({"blip_caption": overview(status, running)}, {"blip": "blip_caption"})
    assert health["blip"].reachable is reachable
    assert health["blip"].status == status.value
    assert health["blip"].running_replicas == running


def test_a_failed_deployment_says_why_and_a_missing_one_is_unreachable() -> None:
    failed = overview(DeploymentStatus.DEPLOY_FAILED, 0, "replica constructor raised OSError")
    health = model_health(
        {"gemma_caption": failed}, {"gemma": "gemma_caption", "blip": "blip_caption"}
    )
    assert health["gemma"].message == "replica constructor raised OSError"
    assert health["blip"].status == "MISSING" and health["blip"].reachable is False
