"""Factory of deterministic random checkpoints in the standard Hugging Face layout.

No weights can be downloaded on the machines this project is built and tested on, so the
offline profile, the tests and the benchmarks load checkpoints that this module writes: a
config, ``model.safetensors``, the tokenizer and the processor, saved with ``save_pretrained``
into a folder that the ordinary ``from_pretrained(path)`` code loads like a Hub snapshot.

Each model family adds one builder with :func:`register`. A builder receives an empty folder
and a :class:`CheckpointSize`; ``tiny`` gives a sub-megabyte model for tests, ``full`` the
default (real-size) architecture with random weights, which runs the same compute as the real
model for benchmarks.

Usage: ``ensure_checkpoint("blip-caption", cache_dir)`` returns the folder, building it once.
"""

from __future__ import annotations

import argparse
import enum
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

#: Bump when a builder changes, so that stale folders in a cache are not reused.
FACTORY_VERSION = 1

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
    return sorted(_BUILDERS)


def ensure_checkpoint(
    family: str, cache_dir: Path | str, size: CheckpointSize | str = CheckpointSize.TINY
) -> Path:
    """Return the folder of a ``family`` checkpoint under ``cache_dir``, building it if needed.

    Safe to call from several processes at once: each builds into a private temporary folder
    and renames it into place; the first rename wins and the others discard their copy.
    """
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


def _build_deterministically(builder: Builder, folder: Path, size: CheckpointSize) -> None:
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        builder(folder, size)


def _word_vocabulary(size: int) -> list[str]:
    """Lower-case word pieces: plain words first so tiny captions read like text."""
    words = [
        "a",
        "an",
        "the",
        "of",
        "on",
        "in",
        "with",
        "and",
        "at",
        "by",
        "near",
        "two",
        "three",
        "man",
        "woman",
        "dog",
        "cat",
        "bird",
        "car",
        "street",
        "beach",
        "tree",
        "house",
        "table",
        "room",
        "field",
        "water",
        "sky",
        "sitting",
        "standing",
        "red",
        "blue",
        "green",
        "white",
        "black",
        "small",
        "large",
        "photo",
        "picture",
        "view",
        "group",
        "people",
    ]
    vocabulary = list(dict.fromkeys(words))
    vocabulary += [f"w{i}" for i in range(size - len(vocabulary))]
    return vocabulary[:size]


def _add_noise_to_zero_matrices(model) -> None:
    """Refill all-zero weight matrices with noise so that random models do not ignore inputs."""
    import torch

    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2 and not parameter.any():
                parameter.normal_(0.0, 0.2)


@register("blip-caption")
def build_blip_caption(folder: Path, size: CheckpointSize) -> None:
    """BLIP image captioning (``BlipForConditionalGeneration``), base architecture when full."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    vocab_size = 30524 if size is CheckpointSize.FULL else 512
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = _word_vocabulary(vocab_size - len(specials) - 2)
    vocabulary = [*specials, *words, "[DEC]", "[ENC]"]
    token_ids = {token: index for index, token in enumerate(vocabulary)}
    tokenizer = BertTokenizer(
        vocab=token_ids, bos_token="[DEC]", extra_special_tokens=["[ENC]"], model_max_length=512
    )

    if size is CheckpointSize.FULL:
        image_size = 384
        config = BlipConfig()
    else:
        image_size = 64
        config = BlipConfig(
            vision_config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": image_size,
                "patch_size": 16,
            },
            text_config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "encoder_hidden_size": 32,
                "max_position_embeddings": 64,
            },
            projection_dim=32,
        )
        # Defaults (vision 1e-10, text 0.02) give every image the same caption: the image
        # signal must be strong enough to steer a random decoder.
        config.vision_config.initializer_range = 0.5
        config.text_config.initializer_range = 0.2
    config.text_config.vocab_size = len(vocabulary)
    config.text_config.pad_token_id = token_ids["[PAD]"]
    config.text_config.bos_token_id = token_ids["[DEC]"]
    config.text_config.sep_token_id = token_ids["[SEP]"]
    config.text_config.eos_token_id = token_ids["[SEP]"]

    model = BlipForConditionalGeneration(config).eval()
    _add_noise_to_zero_matrices(model.vision_model)
    model.generation_config.max_new_tokens = 20
    model.save_pretrained(folder)

    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)


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


if __name__ == "__main__":
    main()
