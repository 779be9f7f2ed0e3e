"""Who may call the API and how much: API keys and per-key rate limits (the profile's
``access`` section), and :func:`hash_key`, the one way a key becomes what is stored.

Keys are never kept in clear: the profile holds their SHA-256 (``vlgraph-keys new NAME``
prints a new key and its entry), and keys given in the environment (``VLGRAPH_API_KEYS``,
``name:key`` pairs separated by commas) are hashed when the profile is read. A plain SHA-256
suits API keys, which are long random strings, not passwords a person chose.

What the ingress applies is :class:`AccessRules`: the resolved keys (hashes only), limits and
switches, sent to its replicas as ``user_config`` so that adding, revoking or rotating a key
is a config change applied live, without restarting a replica.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

#: The environment variable holding API keys as ``name:key`` pairs, comma separated.
KEYS_ENV = "VLGRAPH_API_KEYS"
#: The environment variable that sets ``access.mode`` (``keys`` or ``open``).
MODE_ENV = "VLGRAPH_ACCESS"
#: Shortest key accepted from the environment: shorter keys can be guessed.
MIN_KEY_CHARS = 20
#: The limit a key without its own gets, and the anonymous callers' one.
DEFAULT_LIMIT = "default"
KEY_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"

HOW_TO_SET_KEYS = (
    f"set {KEYS_ENV}=name:key (several: name1:key1,name2:key2; `vlgraph-keys new NAME` makes "
    "a key and its profile entry), or list hashed keys under access.keys; to serve without "
    f"keys on a private network, set access.mode: open (or {MODE_ENV}=open)"
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def hash_key(key: str) -> str:
    """The stored form of an API key: its SHA-256, in hex."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class RateLimit(_Strict):
    """One caller's budget. Unset fields are unlimited."""

    requests_per_minute: int | None = Field(
        None, ge=1, le=1_000_000, description="Requests started in any 60-second window."
    )
    max_in_flight: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="Requests running at once (a stream counts until it ends or its client "
        "leaves).",
    )


class ApiKey(_Strict):
    """One API key, by name, stored as its SHA-256."""

    name: str = Field(pattern=KEY_NAME_PATTERN, description="Shown in metrics and logs.")
    sha256: str = Field(pattern=SHA256_PATTERN, description="hash_key(key): never the key.")
    limit: str | None = Field(
        None,
        description="Name of its limit under access.limits. Unset: the limit named like the "
        "key if there is one, else 'default'.",
    )


class AccessRules(_Strict):
    """What every ingress replica applies, resolved: keys as hashes only. It is the
    ingress's ``user_config`` (under ``access``), so a Serve config may also set it directly
    on the ingress deployment to change keys live (docs/access.md, "Rotating")."""

    mode: Literal["keys", "open"] = "keys"
    keys: tuple[ApiKey, ...] = ()
    limits: dict[str, RateLimit] = Field(default_factory=dict)
    anonymous: RateLimit | None = None
    #: The admin key's hash: refused as an API key, and told apart in metrics.
    admin_sha256: str | None = None

    def limit_of(self, key: ApiKey) -> RateLimit | None:
        """The limit that applies to ``key``."""
        return self.limits.get(key.limit or key.name) or self.limits.get(DEFAULT_LIMIT)


class AccessConfig(_Strict):
    """API keys and rate limits of every route, except liveness, metrics, the OpenAPI
    description and docs, and the page with its static files (docs/access.md)."""

    mode: Literal["keys", "open"] = Field(
        default_factory=lambda: (os.environ.get(MODE_ENV) or "keys").strip().lower(),
        description=f"keys: every protected route needs an API key, and the service refuses "
        f"to start without one. open: no key is asked for (private networks and development; "
        f"the log says so). ${MODE_ENV} overrides the default.",
    )
    keys: tuple[ApiKey, ...] = Field(
        (), description="Keys by name, as SHA-256 hashes (vlgraph-keys new NAME)."
    )
    keys_env: str | None = Field(
        KEYS_ENV,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable with more keys as name:key pairs, comma separated; "
        "hashed when the profile is read. null: none.",
    )
    limits: dict[str, RateLimit] = Field(
        default_factory=lambda: {
            DEFAULT_LIMIT: RateLimit(requests_per_minute=600, max_in_flight=32)
        },
        description="Named limits. A key uses its 'limit', else the one named like the key, "
        "else 'default' (no 'default': keys without a limit are unlimited).",
    )
    anonymous: RateLimit | None = Field(
        None,
        description="Limit of each client address when the mode is open; null: unlimited.",
    )

    @model_validator(mode="after")
    def _keys_are_distinct_and_limited(self) -> AccessConfig:
        _check_distinct(self.keys)
        for key in self.keys:
            if key.limit is not None and key.limit not in self.limits:
                raise ValueError(
                    f"access.keys {key.name!r} uses limit {key.limit!r}, which access.limits "
                    f"does not define (defined: {sorted(self.limits)})"
                )
        return self

    def rules(self, admin_key: SecretStr | None = None) -> AccessRules:
        """The resolved rules: the profile's keys and the environment's, hashed; raises
        ``ValueError`` with what to do when they cannot be served (no key in keys mode, a
        malformed or short key, the admin key reused as an API key)."""
        keys = (*self.keys, *self._environment_keys())
        _check_distinct(keys)
        admin_sha256 = hash_key(admin_key.get_secret_value()) if admin_key else None
        for key in keys:
            if key.sha256 == admin_sha256:
                raise ValueError(
                    f"API key {key.name!r} is the admin key (API_KEY): the admin key opens only "
                    "/api/admin/* and is never a valid API key; give them different values"
                )
        if self.mode == "keys" and not keys:
            raise ValueError(f"access.mode is keys but no API key is configured: {HOW_TO_SET_KEYS}")
        return AccessRules(
            mode=self.mode,
            keys=keys,
            limits=self.limits,
            anonymous=self.anonymous,
            admin_sha256=admin_sha256,
        )

    def _environment_keys(self) -> tuple[ApiKey, ...]:
        raw = os.environ.get(self.keys_env) if self.keys_env else None
        if not raw or not raw.strip():
            return ()
        keys = []
        for position, pair in enumerate(raw.split(","), start=1):
            name, separator, key = pair.strip().partition(":")
            if not separator or not re.match(KEY_NAME_PATTERN, name):
                raise ValueError(
                    f"{self.keys_env}: entry {position} is not name:key with a name of letters, "
                    "digits, '.', '_' or '-' (up to 64)"
                )
            if len(key) < MIN_KEY_CHARS or key != key.strip() or "," in key:
                raise ValueError(
                    f"{self.keys_env}: the key of {name!r} must be at least {MIN_KEY_CHARS} "
                    "characters without spaces or commas (`vlgraph-keys new NAME` makes one)"
                )
            keys.append(ApiKey(name=name, sha256=hash_key(key)))
        return tuple(keys)


def _check_distinct(keys: tuple[ApiKey, ...]) -> None:
    names = [key.name for key in keys]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"API key names must be distinct; repeated: {repeated}")
    hashes = [key.sha256 for key in keys]
    if len(set(hashes)) != len(hashes):
        raise ValueError("two API keys have the same value; each name needs its own key")
