"""Factory of deterministic random checkpoints in the standard Hugging Face layout.

No weights can be downloaded on the machines this project is built and tested on, so the
offline profile, the tests and the benchmarks load checkpoints that this package writes: a
config, ``model.safetensors``, the tokenizer and the processor, saved with ``save_pretrained``
into a folder that the ordinary ``from_pretrained(path)`` code loads like a Hub snapshot.

Each model family adds one builder with :func:`register`, in a module of this package
(``blip``, ``clip``, ``blip2``, ``gemma3``, ``internvl``, ``stable_diffusion``; shared helpers
in ``common``). :func:`families` and :func:`ensure_checkpoint` first import every module of
the package, so a new family needs only its new module. A builder receives an empty folder
and a :class:`CheckpointSize`; ``tiny`` gives a sub-megabyte model for tests, ``full`` the
default (real-size) architecture with random weights, which runs the same compute as the real
model for benchmarks.

Usage: ``ensure_checkpoint("blip-caption", cache_dir)`` returns the folder, building it once.
``vlgraph-tiny`` (:func:`main`) builds them from the command line.
"""

from __future__ import annotations

import argparse
import enum
import importlib
import os
import pkgutil
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

#: Bump when a builder changes, so that stale folders in a cache are not reused.
FACTORY_VERSION = 2

_COMPLETE_MARKER = ".vlgraph-complete"


class CheckpointSize(enum.StrEnum):
    """How big a generated checkpoint is."""

    TINY = "tiny"
    FULL = "full"


Builder = Callable[[Path, CheckpointSize], None]
_BUILDERS: dict[str, Builder] = {}


def register(family: str) -> Callable[[Builder], Builder]:
    """Register ``builder`` as the factory of ``family`` checkpoints."""

    def decorator(builder: Builder) -> Builder:
        _BUILDERS[family] = builder
        return builder

    return decorator


def families() -> list[str]:
    """Names of the model families the factory can build."""
    _discover_families()
    return sorted(_BUILDERS)


def ensure_checkpoint(
    family: str, cache_dir: Path | str, size: CheckpointSize | str = CheckpointSize.TINY
) -> Path:
    """Return the folder of a ``family`` checkpoint under ``cache_dir``, building it if needed.

    Safe to call from several processes at once: each builds into a private temporary folder
    and renames it into place; the first rename wins and the others discard their copy.
    """
    _discover_families()
    if family not in _BUILDERS:
        raise KeyError(f"unknown tiny checkpoint family {family!r}; known: {', '.join(families())}")
    size = CheckpointSize(size)
    cache_dir = Path(cache_dir).expanduser().resolve()
    target = cache_dir / f"{family}-{size.value}-v{FACTORY_VERSION}"
    if (target / _COMPLETE_MARKER).exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache_dir))
    try:
        _build_deterministically(_BUILDERS[family], staging, size)
        (staging / _COMPLETE_MARKER).write_text(f"{family} {size.value} v{FACTORY_VERSION}\n")
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / _COMPLETE_MARKER).exists():
                # A half-written folder from a crashed run: replace it.
                shutil.rmtree(target, ignore_errors=True)
                os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


#: Modules of this package that hold shared code and register no family.
SHARED_MODULES = frozenset({"common"})

_discovered = False


def family_modules() -> list[str]:
    """Names of the modules of this package that register families (all but the shared ones
    and those whose name starts with an underscore)."""
    return sorted(
        info.name
        for info in pkgutil.iter_modules(__path__)
        if not info.name.startswith("_") and info.name not in SHARED_MODULES
    )


def _discover_families() -> None:
    """Import every family module of the package once, so that their :func:`register` run."""
    global _discovered
    if _discovered:
        return
    for name in family_modules():
        importlib.import_module(f"{__name__}.{name}")
    _discovered = True


def _build_deterministically(builder: Builder, folder: Path, size: CheckpointSize) -> None:
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        builder(folder, size)


def main(argv: list[str] | None = None) -> None:
    """Command line: build checkpoints and print their folders."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "families", nargs="*", help=f"families to build (default all: {families()})"
    )
    parser.add_argument("--cache-dir", default=".cache/vlgraph/checkpoints")
    parser.add_argument("--size", choices=[s.value for s in CheckpointSize], default="tiny")
    args = parser.parse_args(argv)
    for family in args.families or families():
        print(ensure_checkpoint(family, args.cache_dir, args.size))
