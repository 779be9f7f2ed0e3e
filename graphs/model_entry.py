"""One model the application can serve, as the registry (:mod:`graphs.registry`) and the
profile's named models (:mod:`graphs.named_models`) describe it: its API name, profile
section, deployment and capabilities, and how it binds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray.serve import Application
from ray.serve.deployment import Deployment

from vlgraph.config import TINY_PREFIX, AppConfig, ModelFamilyConfig
from vlgraph.served_models import Capability, ServedModel
from vlgraph.tiny import trained_on_world


@dataclass(frozen=True)
class ModelEntry:
    """One model the application can serve."""

    name: str
    label: str
    section: str
    deployment: Deployment
    deployment_name: str
    capabilities: frozenset[Capability]
    #: Arguments of the deployment's constructor after (config, checkpoint folder, name).
    extra_args: tuple[Any, ...] = ()

    def config_of(self, config: AppConfig) -> ModelFamilyConfig | None:
        """This model's section of ``config`` (dotted path), None when not served."""
        found: Any = config
        for part in self.section.split("."):
            found = getattr(found, part)
        return found

    def bind(self, model: ModelFamilyConfig, checkpoint_cache_dir: str) -> Application:
        """The deployment of this model, with its Ray options from ``model``."""
        options = {"name": self.deployment_name, **model.serve_options()}
        return self.deployment.options(**options).bind(
            model, checkpoint_cache_dir, self.name, *self.extra_args
        )

    def served_as(self, model: ModelFamilyConfig) -> ServedModel:
        """What the ingress knows of this model when ``model`` serves it."""
        tiny = model.source.startswith(TINY_PREFIX)
        world = tiny and trained_on_world(model.source.removeprefix(TINY_PREFIX))
        return ServedModel(
            name=self.name,
            label=self.label,
            deployment=self.deployment_name,
            capabilities=self.capabilities,
            random_weights=tiny and not world,
            offline_world=world,
        )
