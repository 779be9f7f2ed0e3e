"""Factory of deterministic checkpoints in the standard Hugging Face layout.

No weights can be downloaded on the machines this project is built and tested on, so the
offline profile, the tests and the benchmarks load checkpoints that this package writes: a
config, ``model.safetensors``, the tokenizer and the processor, saved with ``save_pretrained``
into a folder that the ordinary ``from_pretrained(path)`` code loads like a Hub snapshot.

``tiny`` checkpoints are small models trained, at build time, on the procedural world of
:mod:`vlgraph.tiny.world` (a coloured shape on a plain background), so that they caption,
answer, embed and draw that world correctly and tests can check meaning; ``full`` ones have the
real-size architecture with random weights, which runs the same compute as the real model for
benchmarks.

Each model family adds one builder with :func:`register`, in a module of this package
(``blip``, ``clip``, ``blip2``, ``gemma3``, ``internvl``, ``stable_diffusion``, ``git``; shared
helpers in ``common``, ``training`` and ``world``). :func:`families` and
:func:`ensure_checkpoint` first import every module of the package, so a new family needs only
its new module. A builder receives an empty folder, a :class:`CheckpointSize` and the folders
of the families it declared it ``needs`` (a trained CLIP text tower for Stable Diffusion...).

A checkpoint's folder is named by a hash of its recipe (the source of its builder and of the
shared modules, and its dependencies' hashes): a changed recipe builds anew, an unchanged one
is reused. Training is deterministic (fixed seeds and step counts).

Usage: ``ensure_checkpoint("blip-caption", cache_dir)`` returns the folder, building it once.
``vlgraph-tiny`` (:func:`main`) builds them ahead of time from the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import fcntl
import hashlib
import importlib
import inspect
import os
import pkgutil
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

#: Where ``tiny:`` checkpoints are built when nothing else is configured (relative to the
#: working directory: the repository for ``serve run configs/offline.yaml``).
DEFAULT_CHECKPOINT_CACHE = ".cache/vlgraph/checkpoints"

#: Bump to rebuild every checkpoint even though no recipe source changed.
FACTORY_VERSION = 3

_COMPLETE_MARKER = ".vlgraph-complete"


class CheckpointSize(enum.StrEnum):
    """How big a generated checkpoint is: ``tiny`` (trained on the world), ``full`` (random)."""

    TINY = "tiny"
    FULL = "full"


Builder = Callable[[Path, CheckpointSize, Mapping[str, Path]], None]


@dataclass(frozen=True)
class Family:
    """A registered builder, the families whose tiny checkpoints it builds on, and whether its
    tiny checkpoint is trained on the world (or left random)."""

    builder: Builder
    needs: tuple[str, ...]
    trained: bool


_FAMILIES: dict[str, Family] = {}


def register(
    family: str, needs: tuple[str, ...] = (), trained: bool = True
) -> Callable[[Builder], Builder]:
    """Register ``builder`` as the factory of ``family`` checkpoints.

    ``needs`` names families whose tiny checkpoints the builder starts from; it receives their
    folders (built first) as its third argument, an empty mapping at full size. ``trained``
    false marks a family whose tiny checkpoint keeps random weights.
    """

    def decorator(builder: Builder) -> Builder:
        _FAMILIES[family] = Family(builder, needs, trained)
        return builder

    return decorator


def trained_on_world(family: str) -> bool:
    """Whether ``family``'s tiny checkpoint is trained on the world (false: random weights)."""
    _discover_families()
    return family in _FAMILIES and _FAMILIES[family].trained


def families() -> list[str]:
    """Names of the model families the factory can build."""
    _discover_families()
    return sorted(_FAMILIES)


#: Modules of this package that hold shared code and register no family.
SHARED_MODULES = frozenset(
    {
        "common",
        "training",
        "world",
        "towers",
        "blip_training",
        "vlm_training",
        "diffusion_training",
    }
)

_PACKAGE_IMPORT = re.compile(r"^\s*from vlgraph\.tiny\.(\w+) import", re.MULTILINE)


def recipe_hash(family: str, size: CheckpointSize | str = CheckpointSize.TINY) -> str:
    """A hash of what a checkpoint is made from: the factory version, the source of the
    family's builder module and of every module of this package it imports (directly or not)
    and, at tiny size, the recipes of the families it needs."""
    _discover_families()
    size = CheckpointSize(size)
    entry = _FAMILIES[family]
    digest = hashlib.sha256(f"{FACTORY_VERSION} {family} {size.value}".encode())
    for source in _recipe_sources(inspect.getmodule(entry.builder).__name__):
        digest.update(source.encode())
    if size is CheckpointSize.TINY:
        for needed in entry.needs:
            digest.update(recipe_hash(needed, size).encode())
    return digest.hexdigest()[:12]


def _recipe_sources(module: str) -> list[str]:
    """The source of ``module`` and of the modules of this package it imports, in name order."""
    seen: dict[str, str] = {}
    pending = [module]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen[name] = inspect.getsource(importlib.import_module(name))
        pending += [f"{__name__}.{found}" for found in _PACKAGE_IMPORT.findall(seen[name])]
    return [seen[name] for name in sorted(seen)]


def checkpoint_folder(
    family: str, cache_dir: Path | str, size: CheckpointSize | str = CheckpointSize.TINY
) -> Path:
    """Where ``family``'s checkpoint of this recipe lives (or will) under ``cache_dir``."""
    size = CheckpointSize(size)
    folder = Path(cache_dir).expanduser().resolve()
    return folder / f"{family}-{size.value}-{recipe_hash(family, size)}"


def resolve_checkpoint_cache_dir(folder: Path | str | None) -> Path:
    """Where ``tiny:`` checkpoints are built: ``folder``, else ``$VLGRAPH_CACHE_DIR``, else
    :data:`DEFAULT_CHECKPOINT_CACHE`, made absolute."""
    chosen = Path(folder or os.environ.get("VLGRAPH_CACHE_DIR") or DEFAULT_CHECKPOINT_CACHE)
    return chosen.expanduser().resolve()


def is_built(family: str, cache_dir: Path | str, size: CheckpointSize | str = "tiny") -> bool:
    """Whether the checkpoint of the current recipe is complete in ``cache_dir``."""
    return (checkpoint_folder(family, cache_dir, size) / _COMPLETE_MARKER).exists()


def ensure_checkpoint(
    family: str, cache_dir: Path | str, size: CheckpointSize | str = CheckpointSize.TINY
) -> Path:
    """Return the folder of a ``family`` checkpoint under ``cache_dir``, building it if needed.

    Safe to call from several processes at once: a lock file per checkpoint lets one process
    build (train) it while the others wait for it; the build goes to a private temporary
    folder that is renamed into place when complete, so a crash leaves no half-written
    checkpoint behind.
    """
    _discover_families()
    if family not in _FAMILIES:
        raise KeyError(f"unknown tiny checkpoint family {family!r}; known: {', '.join(families())}")
    size = CheckpointSize(size)
    target = checkpoint_folder(family, cache_dir, size)
    if (target / _COMPLETE_MARKER).exists():
        return target
    entry = _FAMILIES[family]
    needs = {}
    if size is CheckpointSize.TINY:
        needs = {needed: ensure_checkpoint(needed, cache_dir, size) for needed in entry.needs}
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.parent / f".{target.name}.lock"):
        if (target / _COMPLETE_MARKER).exists():  # built by another process while we waited
            return target
        shutil.rmtree(target, ignore_errors=True)  # a half-written folder from a crashed run
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            started = time.monotonic()
            _build_deterministically(entry.builder, staging, size, needs)
            seconds = time.monotonic() - started
            (staging / _COMPLETE_MARKER).write_text(
                f"{family} {size.value} {recipe_hash(family, size)} built in {seconds:.0f} s\n"
            )
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def stale_checkpoints(
    family: str, cache_dir: Path | str, size: CheckpointSize | str = CheckpointSize.TINY
) -> list[Path]:
    """Folders (and lock files) of ``family`` at ``size`` under ``cache_dir`` built from
    older recipes: nothing loads them any more."""
    current = checkpoint_folder(family, cache_dir, size)
    prefix = f"{family}-{CheckpointSize(size).value}-"
    names = {path: path.name.removeprefix(".") for path in current.parent.glob(f"*{prefix}*")}
    # the current recipe's folder, lock and staging folders all start with its name
    return sorted(
        path
        for path, name in names.items()
        if name.startswith(prefix) and not name.startswith(current.name)
    )


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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


def _build_deterministically(
    builder: Builder, folder: Path, size: CheckpointSize, needs: Mapping[str, Path]
) -> None:
    import torch

    # One thread: the same float reductions on every machine (so the same weights), and no
    # oversubscription slowdown when other processes share the cores, which costs tiny models
    # far more than a second thread gains them.
    threads = torch.get_num_threads()
    if size is CheckpointSize.TINY:
        torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            builder(folder, size, needs)
    finally:
        torch.set_num_threads(threads)


def _built(chosen: list[str], cache_dir: Path, size: str, jobs: int) -> list[Path]:
    """The folders of the ``chosen`` families, built ``jobs`` at a time, each once the
    families it needs are built: those that others need first, then the other trained ones,
    the random ones last."""
    if jobs <= 1 or len(chosen) <= 1:
        return [ensure_checkpoint(family, cache_dir, size) for family in chosen]
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
    from multiprocessing import get_context

    needed = {need for family in chosen for need in _FAMILIES[family].needs}
    waiting = sorted(
        chosen,
        key=lambda family: (family not in needed, not _FAMILIES[family].trained),
    )
    folders: dict[str, Path] = {}
    running: dict[Future, str] = {}
    # Spawned, not forked: a forked copy of a process that has used torch's threads can hang.
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        while waiting or running:
            for family in list(waiting):
                unbuilt = [need for need in _FAMILIES[family].needs if need in chosen]
                if len(running) < jobs and all(need in folders for need in unbuilt):
                    waiting.remove(family)
                    running[pool.submit(ensure_checkpoint, family, cache_dir, size)] = family
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                folders[running.pop(future)] = future.result()
    return [folders[family] for family in chosen]


def main(argv: list[str] | None = None) -> None:
    """Command line: build (train) checkpoints ahead of time and print their folders."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "families", nargs="*", help=f"families to build (default all: {families()})"
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="where to build; default: $VLGRAPH_CACHE_DIR, else .cache/vlgraph/checkpoints "
        "(where `serve run configs/offline.yaml` looks)",
    )
    parser.add_argument("--size", choices=[s.value for s in CheckpointSize], default="tiny")
    parser.add_argument(
        "--prune",
        action="store_true",
        help="then delete these families' checkpoints built from older recipes",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="checkpoints built at once, each in its own process on one torch thread (the "
        "same weights as one at a time); default: the CPU count, at most 4",
    )
    args = parser.parse_args(argv)
    cache_dir = resolve_checkpoint_cache_dir(args.cache_dir)
    started = time.monotonic()
    chosen = args.families or families()
    for family, folder in zip(chosen, _built(chosen, cache_dir, args.size, args.jobs), strict=True):
        print(folder, flush=True)
        for stale in stale_checkpoints(family, cache_dir, args.size) if args.prune else []:
            if stale.is_dir():
                shutil.rmtree(stale)
            else:
                stale.unlink()
            print(f"removed {stale}", file=sys.stderr)
    print(f"vlgraph-tiny: done in {time.monotonic() - started:.0f} s", file=sys.stderr)
