"""Qwen2.5-VL builder (``qwen2_5_vl``): ``Qwen2_5_VLForConditionalGeneration`` with its ChatML
template.

The tiny checkpoint keeps random weights: towers of about 0.3 M parameters whose greedy output
follows the image (different images give different tokens) without meaning anything. Images
are resized to between 32x32 and 48x48 pixels, a few image tokens each.

Qwen2.5-VL's processor always wants a video processor, which needs torchvision, so
``AutoProcessor`` cannot load it without torchvision (on tiny and real checkpoints alike):
:func:`~vlgraph.vlm_families.images_only_processor_class` builds and loads it for images
only.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from vlgraph.tiny import CheckpointSize, register
from vlgraph.tiny.common import (
    TINY_BPE_VOCABULARY,
    add_noise_to_zero_matrices,
    greedy_generation_config,
    new_model,
    pad_vocabulary,
    save_with_processor,
    train_bpe,
)
from vlgraph.tiny.vlm_training import TINY_LAYERS

#: Qwen2.5-VL's ChatML format, as in Qwen's own template: a default system turn, each image
#: as ``<|vision_start|><|image_pad|><|vision_end|>`` (the processor repeats the pad token
#: once per merged patch), ``Picture N:`` before it when ``add_vision_id`` is set.
_QWEN2_5_VL_CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) -%}"
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] }}"
    "{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' or 'image' in item or 'image_url' in item -%}"
    "{%- set image_count.value = image_count.value + 1 -%}"
    "{%- if add_vision_id -%}"
    "{{ 'Picture ' + image_count.value | string + ': ' }}"
    "{%- endif -%}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif 'text' in item -%}"
    "{{ item['text'] }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- endif -%}"
)


@register("qwen2_5_vl", trained=False)
def build_qwen2_5_vl(folder: Path, size: CheckpointSize, needs: Mapping[str, Path]) -> None:
    """Qwen2.5-VL, ``Qwen/Qwen2.5-VL-3B-Instruct`` dimensions when full."""
    from transformers import Qwen2_5_VLConfig, Qwen2Tokenizer, Qwen2VLImageProcessorPil
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    from vlgraph.vlm_families import images_only_processor_class

    full = size is CheckpointSize.FULL
    chat = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vision = [
        "<|vision_start|>",
        "<|vision_end|>",
        "<|vision_pad|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ]
    vocab, merges = train_bpe(
        Qwen2Tokenizer(), [*chat, *vision], TINY_BPE_VOCABULARY, byte_level=True
    )
    if full:
        vocab = pad_vocabulary(vocab, 151665, "Ġ")
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=131072 if full else 8192,
    )
    tokenizer.add_special_tokens(
        {"extra_special_tokens": [*chat, *vision]}, replace_extra_special_tokens=False
    )
    if full:  # Qwen's own: 4 to 16384 image tokens of 28x28 pixels
        patch_size, min_pixels, max_pixels = 14, 56 * 56, 28 * 28 * 16384
    else:  # 4 to 9 image tokens of 16x16 pixels
        patch_size, min_pixels, max_pixels = 8, 32 * 32, 48 * 48
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        patch_size=patch_size,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )
    processor = images_only_processor_class("qwen2_5_vl")(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=_QWEN2_5_VL_CHAT_TEMPLATE,
    )
    token_id = tokenizer.convert_tokens_to_ids
    text_config = {
        "vocab_size": max(len(tokenizer), 151936 if full else 0),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "tie_word_embeddings": True,
    }
    vision_config = {
        "patch_size": patch_size,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "in_channels": 3,
    }
    if full:
        text_config |= {
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1e6,
                "mrope_section": [16, 24, 24],
            },
        }
        vision_config |= {
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "out_hidden_size": 2048,
            "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
            "tokens_per_second": 2,
        }
    else:
        text_config |= {
            **TINY_LAYERS,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "rms_norm_eps": 1e-6,
            # Head dimension 16: the three sections (time, height, width) share its 8 halves.
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1e6,
                "mrope_section": [2, 3, 3],
            },
            "initializer_range": 0.125,
        }
        vision_config |= {
            "depth": TINY_LAYERS["num_hidden_layers"],
            "hidden_size": TINY_LAYERS["hidden_size"],
            "intermediate_size": TINY_LAYERS["intermediate_size"],
            "num_heads": TINY_LAYERS["num_attention_heads"],
            "out_hidden_size": TINY_LAYERS["hidden_size"],
            # Windows of 2x2 merged patches (32 px); the last block attends to the whole image.
            "window_size": 32,
            "fullatt_block_indexes": [TINY_LAYERS["num_hidden_layers"] - 1],
            "tokens_per_second": 2,
            "initializer_range": 0.125,
        }
    config = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
        tie_word_embeddings=True,
    )

    model = new_model(config, size)
    add_noise_to_zero_matrices(model)
    greedy_generation_config(
        model, [tokenizer.eos_token_id, tokenizer.pad_token_id], tokenizer.pad_token_id
    )
    model.generation_config.bos_token_id = tokenizer.pad_token_id
    save_with_processor(model, processor, folder)
