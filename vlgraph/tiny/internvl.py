"""InternVL 3 builder (``internvl``): a Qwen2 language model with its ChatML template.

The tiny checkpoint is trained on the world (:mod:`vlgraph.tiny.vlm_training`): captions for
any instruction, yes/no flags, and collective captions of two or three images.
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
from vlgraph.tiny.towers import qwen2_text_config
from vlgraph.tiny.vlm_training import (
    TINY_LAYERS,
    VisionLanguageRecipe,
    train_vision_language,
)

#: How the tiny checkpoint trains: captions for the offline profile's instruction, answers
#: ending with ``<|im_end|>`` as ChatML turns do.
TRAINING = VisionLanguageRecipe(
    family="internvl",
    caption_instruction="Describe this image in one sentence.",
    end_token="<|im_end|>",
    steps=450,
)

#: InternVL's ChatML format; each image is ``<IMG_CONTEXT>``, expanded by the processor.
_INTERNVL_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] }}"
    "{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}"
    "{{ '<IMG_CONTEXT>\\n' }}"
    "{%- elif item['type'] == 'video' -%}"
    "{{ '<video>\\n' }}"
    "{%- elif item['type'] == 'text' -%}"
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


@register("internvl")
def build_internvl(folder: Path, size: CheckpointSize, needs: Mapping[str, Path]) -> None:
    """InternVL 3 with a Qwen2 LM, ``OpenGVLab/InternVL3-1B-hf`` dimensions when full.

    The saved image processor keeps one tile per image (``crop_to_patches=False``).
    """
    from transformers import (
        GotOcr2ImageProcessorPil,
        InternVLConfig,
        Qwen2Tokenizer,
    )
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from vlgraph.vlm_families import internvl_processor_class

    full = size is CheckpointSize.FULL
    chat = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    images = {
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    }
    vocab, merges = train_bpe(
        Qwen2Tokenizer(), [*chat, *images.values()], TINY_BPE_VOCABULARY, byte_level=True
    )
    if full:
        vocab = pad_vocabulary(vocab, 151674, "Ġ")
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=images,
        model_max_length=8192,
    )
    tokenizer.add_special_tokens({"extra_special_tokens": chat}, replace_extra_special_tokens=False)
    image_size, patch_size = (448, 14) if full else (32, 8)
    image_seq_length = int((image_size // patch_size) ** 2 * 0.5**2)
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": image_size, "width": image_size},
        crop_to_patches=False,
        min_patches=1,
        max_patches=12,
        image_mean=IMAGENET_DEFAULT_MEAN,
        image_std=IMAGENET_DEFAULT_STD,
        do_convert_rgb=True,
    )
    processor = internvl_processor_class()(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=image_seq_length,
        chat_template=_INTERNVL_CHAT_TEMPLATE,
    )
    text_config = qwen2_text_config(tokenizer, full, 151674)
    if full:
        vision_config = {}  # the defaults: InternViT-300M at 448 px
    else:
        vision_config = {
            **TINY_LAYERS,
            "image_size": image_size,
            "patch_size": patch_size,
            "initializer_range": 0.125,
        }
    config = InternVLConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=image_seq_length,
        downsample_ratio=0.5,
        tie_word_embeddings=True,
    )

    model = new_model(config, size)
    add_noise_to_zero_matrices(model)
    if not full:
        train_vision_language(model, processor, TRAINING)
    greedy_generation_config(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    save_with_processor(model, processor, folder)
