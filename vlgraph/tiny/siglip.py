"""SigLIP builder (``siglip``): the ``SiglipModel`` dual encoder with its ``SiglipProcessor``.

Laid out as ``google/siglip-base-patch16-224`` is on the Hub (transformers' ``config.json``,
``model.safetensors``, the image processor and the tokenizer at the root), so that
``AutoModel.from_pretrained(folder)`` and ``AutoProcessor.from_pretrained(folder)`` load it.

Upstream's ``SiglipTokenizer`` needs the ``sentencepiece`` package, which is not installed, and a
``spiece.model`` file nobody can download. The tokenizer here reproduces its behaviour with the
``tokenizers`` library and is saved as a ``tokenizer.json`` that the generic
``TokenizersBackend`` loads: a unigram vocabulary laid out like SigLIP's (``<pad>`` 0, ``</s>``
1, ``<unk>`` 2), the same text canonicalisation (punctuation removed, lower case, runs of
white space collapsed), ``</s>`` appended, ``</s>`` as the padding token and 64 tokens of
context. SigLIP pools the text at the last position, so texts must be padded to
``max_length`` (64) as it was trained.

The tiny checkpoint keeps random weights (``trained=False``); image and text vectors have the
same dimension (32 tiny, 768 full) and ``logit_scale`` / ``logit_bias`` start where SigLIP's
training starts (log 10 and -10).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlgraph.tiny import CheckpointSize, register
from vlgraph.tiny.common import (
    CAPTION_WORDS,
    PROMPT_WORDS,
    add_noise_to_zero_matrices,
    english_world_words,
)

#: SigLIP's text context: ``max_position_embeddings`` and the tokenizer's ``model_max_length``.
SIGLIP_CONTEXT = 64
#: The vocabulary size of ``google/siglip-base-patch16-224``.
_SIGLIP_VOCABULARY = 32000
#: Tiny towers: two layers of 32, patch 8 on 32 px images (16 patches).
_TINY_LAYERS = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
}
TINY_SIGLIP_IMAGE_SIZE = 32
#: SigLIP's sigmoid loss starts training from ``logit_scale = log 10`` and ``logit_bias = -10``
#: (transformers' random init leaves both at zero).
_LOGIT_SCALE = math.log(10.0)
_LOGIT_BIAS = -10.0
#: Characters that SigLIP's canonicalisation removes (Python's ``string.punctuation``).
_PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"


def _unigram_vocabulary(size: int | None) -> list[tuple[str, float]]:
    """SigLIP's special tokens, then a word piece per tiny word (lower case, as the normalizer
    leaves text), then single characters so that any text tokenizes; padded to ``size`` with
    word-like pieces that the tokenizer never produces."""
    words = dict.fromkeys([*english_world_words(), *CAPTION_WORDS, *PROMPT_WORDS])
    vocabulary = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -3.0)]
    vocabulary += [(f"\u2581{word.lower()}", -5.0) for word in words]
    vocabulary += [(character, -10.0) for character in "abcdefghijklmnopqrstuvwxyz0123456789"]
    vocabulary = list(dict(vocabulary).items())  # each piece once (in its first place)
    index = 0
    while size is not None and len(vocabulary) < size:
        vocabulary.append((f"\u2581w{index}", -20.0))
        index += 1
    return vocabulary


def _siglip_tokenizer(size: CheckpointSize) -> Any:
    """A ``tokenizers``-backed stand-in for ``SiglipTokenizer`` (see the module docstring)."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import TokenizersBackend

    full = size is CheckpointSize.FULL
    vocabulary = _unigram_vocabulary(_SIGLIP_VOCABULARY if full else None)
    backend = Tokenizer(Unigram(vocabulary, unk_id=2, byte_fallback=False))
    punctuation = "".join("\\" + character for character in _PUNCTUATION)
    backend.normalizer = normalizers.Sequence(
        [
            normalizers.Replace(Regex(f"[{punctuation}]"), ""),
            normalizers.Lowercase(),
            normalizers.Replace(Regex(r"\s+"), " "),
            normalizers.Strip(),
        ]
    )
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return TokenizersBackend(
        tokenizer_object=backend,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
        model_max_length=SIGLIP_CONTEXT,
    )


@register("siglip", trained=False)
def build_siglip(folder: Path, size: CheckpointSize, needs: Mapping[str, Path]) -> None:
    """SigLIP (``SiglipModel`` + ``SiglipProcessor``): ``google/siglip-base-patch16-224``
    dimensions (768-dimensional vectors, 224 px, patch 16) when full, random 32-dimensional
    towers on 32 px images when tiny."""
    import torch
    from transformers import AutoModel, SiglipConfig, SiglipImageProcessorPil, SiglipProcessor

    full = size is CheckpointSize.FULL
    tokenizer = _siglip_tokenizer(size)
    special_ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.eos_token_id,  # SigLIP has no bos token
    }
    text_config: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "max_position_embeddings": SIGLIP_CONTEXT,
        **special_ids,
    }
    vision_config: dict[str, Any] = {"image_size": 224, "patch_size": 16}
    if not full:
        text_config |= _TINY_LAYERS
        vision_config = {
            **_TINY_LAYERS,
            "image_size": TINY_SIGLIP_IMAGE_SIZE,
            "patch_size": 8,
        }
    config = SiglipConfig(text_config=text_config, vision_config=vision_config)
    image_side = vision_config["image_size"]
    image_processor = SiglipImageProcessorPil(
        size={"height": image_side, "width": image_side},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    dtype = torch.bfloat16 if full else torch.float32
    model = AutoModel.from_config(config, dtype=dtype).eval()  # SiglipModel
    with torch.no_grad():
        model.logit_scale.fill_(_LOGIT_SCALE)
        model.logit_bias.fill_(_LOGIT_BIAS)
    if not full:
        add_noise_to_zero_matrices(model)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
