"""LLaVA-OneVision builder (``llava_onevision``): a SigLIP tower and a Qwen2 language model
with its ChatML template (``LlavaOnevisionForConditionalGeneration``).

The tiny checkpoint keeps random weights (it is not trained on the world): it loads, prompts,
batches and generates like the real model, and its output follows its image.
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
from vlgraph.tiny.towers import qwen2_text_config, siglip_vision_config

#: LLaVA-OneVision's ChatML format, as the Hub checkpoints save it: each image is ``<image>``
#: on its own line before the text (the processor expands it into the image's tokens).
_LLAVA_ONEVISION_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] }}"
    "{%- else -%}"
    "{%- for item in message['content'] | selectattr('type', 'equalto', 'image') -%}"
    "{{ '<image>\\n' }}"
    "{%- endfor -%}"
    "{%- for item in message['content'] | selectattr('type', 'equalto', 'video') -%}"
    "{{ '<video>\\n' }}"
    "{%- endfor -%}"
    "{%- for item in message['content'] | selectattr('type', 'equalto', 'text') -%}"
    "{{ item['text'] }}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- endif -%}"
)

#: ``llava-hf/llava-onevision-qwen2-0.5b-ov-hf``'s anyres grid: 1 to 6 tiles of 384 px a side.
_FULL_GRID_PINPOINTS = [
    [384 * rows, 384 * columns] for rows in range(1, 7) for columns in range(1, 7)
]


@register("llava_onevision", trained=False)
def build_llava_onevision(folder: Path, size: CheckpointSize, needs: Mapping[str, Path]) -> None:
    """LLaVA-OneVision, ``llava-hf/llava-onevision-qwen2-0.5b-ov-hf`` dimensions when full.

    Tiny: 32 px tiles of 4 x 4 patches; the anyres grid is one tile or two side by side, so
    one square image costs 36 tokens (16 for the whole image, 16 for its tile, 4 newlines)
    and an image of a multi-image prompt 17 (the whole image and one newline).
    """
    import torch
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionImageProcessorPil,
        Qwen2Tokenizer,
    )

    from vlgraph.vlm_families import images_only_processor_class

    full = size is CheckpointSize.FULL
    chat = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    media = {"image_token": "<image>", "video_token": "<video>"}
    vocab, merges = train_bpe(
        Qwen2Tokenizer(), [*chat, *media.values()], TINY_BPE_VOCABULARY, byte_level=True
    )
    if full:
        vocab = pad_vocabulary(vocab, 151648, "Ġ")
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=media,
        model_max_length=32768 if full else 512,
    )
    tokenizer.add_special_tokens({"extra_special_tokens": chat}, replace_extra_special_tokens=False)
    image_size, patch_size = (384, 14) if full else (32, 8)
    grid_pinpoints = (
        _FULL_GRID_PINPOINTS
        if full
        else [[image_size, image_size], [image_size, 2 * image_size], [2 * image_size, image_size]]
    )
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": image_size, "width": image_size},
        image_grid_pinpoints=grid_pinpoints,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = images_only_processor_class("llava_onevision")(
        image_processor=image_processor,
        tokenizer=tokenizer,
        num_image_tokens=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="full",
        chat_template=_LLAVA_ONEVISION_CHAT_TEMPLATE,
        vision_aspect_ratio="anyres_max_9",
    )
    text_config = qwen2_text_config(tokenizer, full, 152000)
    vision_config = siglip_vision_config(26 if full else None, image_size, patch_size)
    config = LlavaOnevisionConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.image_token_id,
        video_token_index=tokenizer.video_token_id,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=grid_pinpoints,
        vision_aspect_ratio="anyres_max_9",
        tie_word_embeddings=True,
        initializer_range=0.02 if full else 0.125,
    )

    model = new_model(config, size)
    add_noise_to_zero_matrices(model)
    if not full:
        # At random init the prompt's last token outweighs the image tokens it attends to
        # (42 distinct captions for the world's 72 scenes); smaller token embeddings let the
        # output follow the image (60 of 72).
        with torch.no_grad():
            model.get_input_embeddings().weight /= 4
    greedy_generation_config(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    save_with_processor(model, processor, folder)
