"""Who is calling: the access rules and budgets of one ingress replica
(:class:`AccessGate`), the caller of the running request (:data:`CALLER`, set by the access
control in deployments/ingress/access.py) and what each caller is served, counted under its
name (:func:`record_tokens`, :func:`record_images`). No HTTP here: the gateway and the
replica's context use it too.
"""

from __future__ import annotations

import hmac
import logging
from contextvars import ContextVar
from typing import Any

from deployments.ingress.rate_limits import CallerBudgets
from vlgraph.access_config import AccessRules, ApiKey, hash_key
from vlgraph.messages import GenerationResult
from vlgraph.service_metrics import service_metrics

logger = logging.getLogger("ray.serve")

#: The name of the caller of the running request ('' outside a request).
CALLER: ContextVar[str] = ContextVar("vlgraph_caller", default="")


class AccessGate:
    """The rules in force and the callers' budgets of one ingress replica."""

    def __init__(self, rules: AccessRules, budgets: CallerBudgets):
        self.budgets = budgets
        self._apply(rules)

    @property
    def rules(self) -> AccessRules:
        """The rules applied to the next request."""
        return self._rules

    @rules.setter
    def rules(self, rules: AccessRules) -> None:
        self._apply(rules)
        logger.log(
            logging.WARNING if rules.mode == "open" else logging.INFO,
            "access: %s",
            "OPEN: no API key is asked for (access.mode: open)"
            if rules.mode == "open"
            else f"API keys required; {len(rules.keys)} key(s): "
            + ", ".join(key.name for key in rules.keys),
        )

    def _apply(self, rules: AccessRules) -> None:
        # Hashes as bytes once, so a request costs one hash and the comparisons.
        self._keys = [(bytes.fromhex(key.sha256), key) for key in rules.keys]
        self._admin = bytes.fromhex(rules.admin_sha256) if rules.admin_sha256 else None
        self._rules = rules

    @property
    def admin_sha256(self) -> str | None:
        """The admin key's hash in force (refused as an API key)."""
        return self._rules.admin_sha256

    def identify(self, presented: str) -> tuple[ApiKey | None, bool]:
        """The key ``presented`` is, and whether it is the admin key. Every configured hash
        is compared in constant time, whatever matches, so the time taken says nothing about
        which key (or how much of one) was right."""
        digest = bytes.fromhex(hash_key(presented))
        found: ApiKey | None = None
        for stored, key in self._keys:
            if hmac.compare_digest(stored, digest):
                found = key
        is_admin = self._admin is not None and hmac.compare_digest(self._admin, digest)
        return found, is_admin


def record_tokens(model: str, prompt: int, completion: int = 0) -> None:
    """Count the tokens the running request read and wrote, under its caller's name."""
    service_metrics().count_tokens(CALLER.get(), model, prompt, completion)


def record_images(model: str, results: Any) -> None:
    """Count the generated images among ``results`` (one result, or a tuple of them) under
    the running request's caller."""
    items = results if isinstance(results, tuple | list) else (results,)
    # The similar-image pipeline's result holds its generation.
    items = [getattr(item, "generation", item) for item in items]
    made = sum(1 for item in items if isinstance(item, GenerationResult) and item.image_png)
    service_metrics().count_images(CALLER.get(), model, made)
