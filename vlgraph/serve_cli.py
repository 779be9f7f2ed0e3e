"""``vlgraph-serve PROFILE.yaml``: ``serve run`` with document 001's ``PORT`` (and ``HOST``).

Serve reads its listening address only from the profile's ``http_options``; there is no
environment variable for it. This command validates ``PORT``/``HOST``, writes the profile
with them applied to a temporary file and hands over to ``serve run`` (extra arguments pass
through), so ``PORT=9000 vlgraph-serve configs/offline.yaml`` listens on 9000.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import yaml
from pydantic import Field, ValidationError

from vlgraph.config import StrictModel


class ListenAddress(StrictModel):
    """Where Serve's HTTP proxy listens, from the environment; unset keeps the profile's."""

    port: int | None = Field(None, ge=1, le=65535, description="PORT")
    host: str | None = Field(None, min_length=1, description="HOST")

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> ListenAddress:
        """``PORT`` and ``HOST``; empty values count as unset."""
        return cls.model_validate(
            {"port": environ.get("PORT") or None, "host": environ.get("HOST") or None}
        )


def apply_listen_address(profile: dict, address: ListenAddress) -> dict:
    """The profile with ``http_options`` host and port replaced where ``address`` sets them."""
    http_options = dict(profile.get("http_options") or {})
    if address.port is not None:
        http_options["port"] = address.port
    if address.host is not None:
        http_options["host"] = address.host
    return {**profile, "http_options": http_options}


def main(argv: list[str] | None = None) -> None:
    """Validate the environment, write the effective profile and exec ``serve run``."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0].startswith("-"):
        sys.exit("usage: vlgraph-serve PROFILE.yaml [serve run options]")
    try:
        address = ListenAddress.from_environment(os.environ)
    except ValidationError as error:
        problem = error.errors()[0]
        name = str(problem["loc"][0]).upper()
        sys.exit(f"{name}={os.environ.get(name)!r} is invalid: {problem['msg']}")
    profile_path = Path(args[0])
    try:
        profile = yaml.safe_load(profile_path.read_text())
    except (OSError, yaml.YAMLError) as error:
        sys.exit(f"cannot read profile {profile_path}: {error}")
    if not isinstance(profile, dict):
        sys.exit(f"profile {profile_path} is not a Serve config file (a YAML mapping)")
    effective = apply_listen_address(profile, address)
    with tempfile.NamedTemporaryFile(
        "w", prefix=f"vlgraph-{profile_path.stem}-", suffix=".yaml", delete=False
    ) as handle:
        yaml.safe_dump(effective, handle, sort_keys=False)
    options = effective["http_options"]
    print(
        f"vlgraph-serve: {profile_path} on {options.get('host', '127.0.0.1')}:"
        f"{options.get('port', 8000)} ({handle.name})",
        flush=True,
    )
    os.execvp("serve", ["serve", "run", handle.name, *args[1:]])


if __name__ == "__main__":
    main()
