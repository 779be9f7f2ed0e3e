"""Where a model's weights come from: a factory-built checkpoint, a local folder, or the Hub.

:func:`resolve_model_path` gives the folder that ``from_pretrained`` loads. Missing weights
never hang a start-up: when a Hub id is neither cached nor reachable it raises
:class:`ModelUnavailableError` naming the model and the ways to provide it.

``vlgraph-fetch PROFILE.yaml`` pre-downloads every Hub model a profile names, for machines
(or container images) that will run without network.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import os
from pathlib import Path

from vlgraph.config import TINY_PREFIX
from vlgraph.errors import ModelUnavailableError
from vlgraph.tiny import ensure_checkpoint, families, is_built

#: Seconds to wait for the Hub before declaring it unreachable at start-up.
HUB_PROBE_TIMEOUT_S = 5.0

#: Files of other frameworks that Hub repos often carry beside the PyTorch weights.
_OTHER_FRAMEWORK_FILES = [
    "*.h5",
    "*.msgpack",
    "*.ot",
    "*.onnx",
    "onnx/*",
    "*.tflite",
    "*.mlmodel",
    "openvino/*",
]
#: PyTorch pickles, skipped where the repo also has safetensors (the same weights, safer).
_PICKLED_WEIGHTS = ["*.bin", "*.pth", "*.pt"]


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def _looks_like_path(source: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else is meant as a folder."""
    return source.startswith(("/", ".", "~")) or source.count("/") > 1


def source_field(name: str) -> str:
    """The profile field that sets model ``name``'s source, e.g. ``models.blip.source``."""
    from vlgraph.config import TOP_LEVEL_MODELS

    return f"{name}.source" if name in TOP_LEVEL_MODELS else f"models.{name}.source"


def _how_to_provide(name: str, source: str) -> str:
    return (
        f"Provide model '{name}' in one of these ways: set {source_field(name)} to a local "
        f"folder holding the checkpoint; pre-download it on a machine with network access "
        f"(`vlgraph-fetch PROFILE.yaml` or `hf download {source}`) and copy the Hugging Face "
        "cache (HF_HOME) here; or run the offline profile (`serve run configs/offline.yaml`), "
        "which trains tiny checkpoints on its offline world locally."
    )


def _tiny_family(name: str, source: str) -> str:
    """The registered family a ``tiny:`` source names."""
    family = source.removeprefix(TINY_PREFIX)
    if family not in families():
        raise ModelUnavailableError(
            f"model '{name}': unknown tiny checkpoint {source!r}; known: "
            + ", ".join(TINY_PREFIX + f for f in families())
        )
    return family


#: Files of a checkpoint folder that do not change what it computes.
_NOT_WEIGHTS = ("README*", "*.md", ".*")


def checkpoint_fingerprint(path: str | Path) -> str:
    """What identifies a checkpoint's computation: a sha256 over the relative path and
    contents of each of its files (documentation, caches and marker files left out), so that
    the same weights anywhere give the same fingerprint and any retrained or replaced file
    another. Search vectors carry it (an index never mixes encoders)."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(root.rglob("*")):
        relative = file.relative_to(root)
        if not file.is_file() or any(
            fnmatch.fnmatch(part, pattern) for part in relative.parts for pattern in _NOT_WEIGHTS
        ):
            continue
        digest.update(relative.as_posix().encode() + b"\0")
        with file.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def resolve_model_path(
    name: str, source: str, cache_dir: Path, revision: str | None = None, download: bool = True
) -> str:
    """Return a local folder with the weights of ``source``, downloading them if allowed.

    ``name`` is the model's key in the configuration, used in error messages.
    """
    if source.startswith(TINY_PREFIX):
        return str(ensure_checkpoint(_tiny_family(name, source), cache_dir))

    local = Path(source).expanduser()
    if local.is_dir():
        return str(local.resolve())
    if _looks_like_path(source):
        raise ModelUnavailableError(
            f"model '{name}': checkpoint folder {source!r} does not exist. "
            + _how_to_provide(name, source)
        )

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(source, revision=revision, local_files_only=True)
    except LocalEntryNotFoundError:
        pass
    if not download or _hub_offline():
        reason = "HF_HUB_OFFLINE is set" if _hub_offline() else "downloads are disabled here"
        raise ModelUnavailableError(
            f"model '{name}': {source!r} is not in the local Hugging Face cache and {reason}. "
            + _how_to_provide(name, source)
        )
    _probe_hub(name, source, revision)
    try:
        return snapshot_download(
            source, revision=revision, ignore_patterns=_files_to_skip(source, revision)
        )
    except Exception as error:  # network, auth and disk errors all end the start-up the same way
        raise ModelUnavailableError(
            f"model '{name}': downloading {source!r} failed ({type(error).__name__}: {error}). "
            + _how_to_provide(name, source)
        ) from error


def _files_to_skip(source: str, revision: str | None) -> list[str]:
    from huggingface_hub import HfApi

    return _OTHER_FRAMEWORK_FILES + pickled_duplicates(
        HfApi().list_repo_files(source, revision=revision)
    )


def pickled_duplicates(files: list[str]) -> list[str]:
    """Pickled weight files in folders that also hold safetensors: skipped, as duplicates.

    Judged per folder because sentence-transformers repositories mix both: the multilingual
    CLIP model has safetensors at the root and only ``2_Dense/pytorch_model.bin``."""
    with_safetensors = {os.path.dirname(name) for name in files if name.endswith(".safetensors")}
    return [
        name
        for name in files
        if os.path.dirname(name) in with_safetensors
        and any(fnmatch.fnmatch(os.path.basename(name), pattern) for pattern in _PICKLED_WEIGHTS)
    ]


def _probe_hub(name: str, source: str, revision: str | None) -> None:
    """Fail within seconds when the Hub cannot be reached, instead of hanging in a download."""
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(source, revision=revision, timeout=HUB_PROBE_TIMEOUT_S)
    except Exception as error:
        raise ModelUnavailableError(
            f"model '{name}': {source!r} is not in the local Hugging Face cache and the Hub "
            f"cannot be reached ({type(error).__name__}: {str(error).splitlines()[0][:200]}). "
            + _how_to_provide(name, source)
        ) from None


def check_model_available(name: str, source: str, cache_dir: Path, revision: str | None) -> str:
    """Start-up check without side effects: the weights are local, buildable, or downloadable
    right now. Returns how (``available``, or that a ``tiny:`` checkpoint is trained on first
    start); raises :class:`ModelUnavailableError` otherwise."""
    if source.startswith(TINY_PREFIX):
        family = _tiny_family(name, source)
        if is_built(family, cache_dir):
            return "available"
        return "not built yet: trained on first start (or by vlgraph-tiny)"
    try:
        resolve_model_path(name, source, cache_dir, revision, download=False)
    except ModelUnavailableError:
        if _hub_offline() or _looks_like_path(source):
            raise
        _probe_hub(name, source, revision)
        return "downloadable"
    return "available"


def main(argv: list[str] | None = None) -> None:
    """Pre-download (or with --check, check) the models of a profile into the Hugging Face cache."""
    import yaml

    from vlgraph.config import AppConfig

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("profile", help="a Serve config file such as serve_config.yaml")
    parser.add_argument(
        "--check",
        action="store_true",
        help="download and train nothing: exit 1 with instructions unless every model can be found",
    )
    args = parser.parse_args(argv)
    with open(args.profile) as file:
        document = yaml.safe_load(file)
    for application in document.get("applications", []):
        config = AppConfig.model_validate(application.get("args") or {})
        cache_dir = config.resolved_cache_dir()
        for name, model in config.served_models().items():
            try:
                if args.check:
                    outcome = check_model_available(name, model.source, cache_dir, model.revision)
                else:
                    path = resolve_model_path(name, model.source, cache_dir, model.revision)
                    outcome = f"-> {path}"
            except ModelUnavailableError as error:
                raise SystemExit(f"error: {error.message}") from None
            print(f"{name}: {model.source} {outcome}")


if __name__ == "__main__":
    main()
