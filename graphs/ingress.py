"""Binding the ingress deployment, for every application builder: its Serve options from the
profile, and the access rules (API keys and limits) as its ``user_config``, so that a key
added, revoked or rotated reconfigures the replicas in place instead of restarting them."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import SecretStr
from ray.serve import Application

from deployments.ingress.deployment import IngressDeployment
from deployments.ingress.rate_limits import RedisTarget
from deployments.ingress.settings import IngressSettings
from vlgraph.access_config import AccessConfig, AccessRules
from vlgraph.config import CacheConfig, IngressConfig

logger = logging.getLogger("ray.serve")


class AccessNotConfiguredError(RuntimeError):
    """The profile asks for API keys and none is usable: the service does not start."""


def access_rules(access: AccessConfig, admin_key: SecretStr | None = None) -> AccessRules:
    """The keys and limits every ingress replica applies; refuses to start, saying how to set
    a key, when keys are required and none is configured."""
    try:
        rules = access.rules(admin_key)
    except ValueError as error:
        raise AccessNotConfiguredError(str(error)) from None
    if rules.mode == "open":
        logger.warning(
            "access is OPEN: anyone who reaches the port can use every model "
            "(access.mode: open). Use it on private networks only."
        )
    return rules


def rate_limit_redis(cache: CacheConfig) -> RedisTarget | None:
    """Where callers' budgets are shared: the cache's Redis when the profile has one."""
    if cache.backend != "redis":
        return None
    return RedisTarget(cache.redis_host, cache.redis_port, cache.redis_db, cache.timeout_s)


def bind_ingress(
    handles: dict[str, Any],
    settings: IngressSettings,
    ingress: IngressConfig,
    rules: AccessRules,
) -> Application:
    """The ingress deployment bound to the model handles, with ``rules`` as its user_config."""
    options = ingress.deployment.serve_options({"access": rules.model_dump(mode="json")})
    return IngressDeployment.options(**options).bind(handles, settings)
