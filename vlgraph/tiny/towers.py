"""Configs of the towers several builders share: Qwen2 language models (InternVL 3,
LLaVA-OneVision) and SigLIP vision towers (LLaVA-OneVision, PaliGemma), at tiny size or at the
dimensions of the real checkpoints. Registers no family."""

from __future__ import annotations

from typing import Any

from vlgraph.tiny.vlm_training import TINY_LAYERS

#: Qwen2-0.5B, the language model of InternVL3-1B and LLaVA-OneVision 0.5B.
_QWEN2_0_5B = {
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
}


def qwen2_text_config(tokenizer: Any, full: bool, full_vocabulary: int) -> dict[str, Any]:
    """A Qwen2 text config over ``tokenizer``: Qwen2-0.5B when ``full`` (a vocabulary of at
    least ``full_vocabulary``), tiny towers otherwise."""
    config = {
        "model_type": "qwen2",
        "vocab_size": max(len(tokenizer), full_vocabulary if full else 0),
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": True,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
    }
    if full:
        return config | _QWEN2_0_5B
    return config | {
        **TINY_LAYERS,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "initializer_range": 0.125,
    }


def siglip_vision_config(
    full_layers: int | None, image_size: int, patch_size: int
) -> dict[str, Any]:
    """A SigLIP vision tower without its pooling head: SigLIP so400m's width with
    ``full_layers`` layers, or tiny towers when ``full_layers`` is None."""
    if full_layers is None:
        tower: dict[str, Any] = {**TINY_LAYERS, "initializer_range": 0.125}
    else:
        tower = {
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": full_layers,
            "num_attention_heads": 16,
        }
    return tower | {
        "model_type": "siglip_vision_model",
        "image_size": image_size,
        "patch_size": patch_size,
        "vision_use_head": False,
    }
