"""The ingress deployment: the one HTTP entry of the application.

It holds the model handles and the services built from :class:`IngressSettings`
(:class:`~deployments.ingress.context.IngressContext`); its FastAPI app is built on the
replica by :func:`deployments.ingress.app.create_api` once the constructor has run (Serve's
late-bound ingress). The application builder binds this class without importing any HTTP
code: FastAPI and the routes are imported only where the app is built.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.ingress.context import IngressContext
from deployments.ingress.settings import GuardSettings, IngressSettings
from vlgraph.access_config import AccessRules


class Ingress:
    """Routes requests to the model deployments; owns validation and error mapping."""

    def __init__(self, handles: dict[str, DeploymentHandle], settings: IngressSettings):
        self._context = IngressContext.create(handles, settings)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply the access rules (keys and limits) live: a key added, revoked or rotated in
        the Serve config reaches every replica without restarting it."""
        rules = AccessRules.model_validate(user_config["access"])
        if rules.admin_sha256 is None:  # set from the admin key when the app was built
            rules = rules.model_copy(update={"admin_sha256": self._context.access.admin_sha256})
        self._context.access.rules = rules

    def __serve_build_asgi_app__(self) -> Any:
        """The FastAPI app of this replica (called by Serve after ``__init__``)."""
        from deployments.ingress.app import create_api

        return create_api(self._context, GuardSettings.from_config(self._context.config))


IngressDeployment = serve.deployment(serve.ingress()(Ingress), name="ingress")
