"""Gemma 3 builder (``gemma3``): ``Gemma3ForConditionalGeneration`` with its chat template.

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
from vlgraph.tiny.vlm_training import (
    TINY_LAYERS,
    VisionLanguageRecipe,
    train_vision_language,
)

#: How the tiny checkpoint trains: captions for the offline profile's instruction, answers
#: ending the turn as Gemma's do.
TRAINING = VisionLanguageRecipe(
    family="gemma3",
    caption_instruction="Describe this image in one sentence.",
    end_token="<end_of_turn>",
    steps=400,
)

#: Gemma 3's chat format: ``<start_of_turn>user ... <end_of_turn>``, images as
#: ``<start_of_image>`` that the processor expands into soft tokens.
_GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}"
    "{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] | trim }}"
    "{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}"
    "{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}"
    "{{ item['text'] | trim }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<start_of_turn>model\\n' }}"
    "{%- endif -%}"
)


@register("gemma3")
def build_gemma3(folder: Path, size: CheckpointSize, needs: Mapping[str, Path]) -> None:
    """Gemma 3 (``Gemma3ForConditionalGeneration``), ``google/gemma-3-4b-it`` dims when full."""
    from tokenizers import pre_tokenizers
    from transformers import (
        Gemma3Config,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
        GemmaTokenizer,
    )

    full = size is CheckpointSize.FULL
    names = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    turns = ["<start_of_turn>", "<end_of_turn>"]
    images = {
        "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>",
        "image_token": "<image_soft_token>",
    }
    byte_tokens = [f"<0x{value:02X}>" for value in range(256)]
    template = GemmaTokenizer()
    if not full:
        # Gemma's pre-tokenizer splits nothing once spaces are "▁", so its BPE would merge
        # whole phrases ("a▁purple▁triangle▁on▁a▁"): learn word pieces, one token per world word.
        template.backend_tokenizer.pre_tokenizer = pre_tokenizers.Split("▁", "merged_with_next")
    vocab, merges = train_bpe(
        template,
        [*names, *turns, *images.values(), *byte_tokens],
        TINY_BPE_VOCABULARY,
        byte_level=False,
    )
    if full:
        vocab = pad_vocabulary(vocab, 262144, "▁")
    tokenizer = GemmaTokenizer(
        vocab=vocab, merges=merges, extra_special_tokens=images, model_max_length=8192
    )
    tokenizer.add_special_tokens(
        {"extra_special_tokens": turns}, replace_extra_special_tokens=False
    )
    image_size, mm_tokens = (896, 256) if full else (32, 4)
    image_processor = Gemma3ImageProcessorPil(
        size={"height": image_size, "width": image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = Gemma3Processor(
        image_processor, tokenizer, chat_template=_GEMMA3_CHAT_TEMPLATE, image_seq_length=mm_tokens
    )
    text_config = {
        "vocab_size": max(len(tokenizer), 262208 if full else 0),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if full:
        text_config |= {
            "hidden_size": 2560,
            "intermediate_size": 10240,
            "num_hidden_layers": 34,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "head_dim": 256,
            "query_pre_attn_scalar": 256,
            "sliding_window": 1024,
            "rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
            },
        }
        vision_config = {
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 27,
            "num_attention_heads": 16,
            "patch_size": 14,
        }
    else:
        text_config |= {
            **TINY_LAYERS,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "sliding_window": 512,
            "layer_types": ["sliding_attention", "full_attention"],
            "max_position_embeddings": 512,
            "initializer_range": 0.125,
        }
        vision_config = {**TINY_LAYERS, "patch_size": 8}
    vision_config |= {
        "model_type": "siglip_vision_model",
        "image_size": image_size,
        "vision_use_head": False,
    }
    config = Gemma3Config(
        text_config=text_config,
        vision_config=vision_config,
        mm_tokens_per_image=mm_tokens,
        boi_token_index=tokenizer.boi_token_id,
        eoi_token_index=tokenizer.eoi_token_id,
        image_token_index=tokenizer.image_token_id,
        initializer_range=0.02 if full else 0.125,
    )

    model = new_model(config, size)
    add_noise_to_zero_matrices(model)
    if not full:
        train_vision_language(model, processor, TRAINING)
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    greedy_generation_config(model, [tokenizer.eos_token_id, end_of_turn], tokenizer.pad_token_id)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    save_with_processor(model, processor, folder)
