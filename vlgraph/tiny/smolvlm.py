"""SmolVLM builder (``smolvlm``): ``Idefics3ForConditionalGeneration`` and its
``Idefics3Processor``, the architecture of ``HuggingFaceTB/SmolVLM-256M-Instruct``, with
SmolVLM's chat template.

SmolVLM (v1) checkpoints are Idefics3 models on the Hub. The later ``SmolVLMProcessor`` of
SmolVLM2 always wants a video processor, which needs torchvision, and imports ``num2words``:
``AutoProcessor`` cannot load it here, while ``Idefics3Processor`` has no video processor and
loads with ``AutoProcessor`` (its image processor falls back to the PIL variant).

The tiny checkpoint is trained on the world (:mod:`vlgraph.tiny.vlm_training`): captions for
any instruction, yes/no flags, and collective captions of two or three images. Its processor
gives the model what SmolVLM's does, ``pixel_values`` of shape (prompts, images, C, H, W) with
a ``pixel_attention_mask``, but without image splitting: each image is one 32-pixel frame of 4
image tokens (``do_image_splitting=False``, as SmolVLM runs when told not to split), which
keeps training cheap and lets it mirror whole images. The full-size checkpoint splits as
SmolVLM does: tiles of 512 pixels plus a global view.
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
#: ending with ``<end_of_utterance>`` as SmolVLM's turns do.
TRAINING = VisionLanguageRecipe(
    family="smolvlm",
    caption_instruction="Describe this image in one sentence.",
    end_token="<end_of_utterance>",
    steps=650,
)

#: SmolVLM's chat format: ``<|im_start|>User:<image>...<end_of_utterance>\nAssistant:``;
#: each ``<image>`` is expanded by the processor into its tiles' tokens.
_SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>"
    "{%- for message in messages -%}"
    "{{ message['role'] | capitalize }}"
    "{%- if message['content'] is string -%}"
    "{{ ': ' + message['content'] }}"
    "{%- else -%}"
    "{%- if message['content'][0]['type'] == 'image' -%}"
    "{{ ':' }}"
    "{%- else -%}"
    "{{ ': ' }}"
    "{%- endif -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'text' -%}"
    "{{ item['text'] }}"
    "{%- elif item['type'] == 'image' -%}"
    "{{ '<image>' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<end_of_utterance>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ 'Assistant:' }}"
    "{%- endif -%}"
)


@register("smolvlm")
def build_smolvlm(folder: Path, size: CheckpointSize, needs: Mapping[str, Path]) -> None:
    """SmolVLM (Idefics3 classes), ``HuggingFaceTB/SmolVLM-256M-Instruct`` dimensions when full."""
    from transformers import (
        GPT2Tokenizer,
        Idefics3Config,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )
    from transformers.image_utils import PILImageResampling

    full = size is CheckpointSize.FULL
    chat = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    images = ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"]
    # The processor writes each tile of a split image after its <row_R_col_C> token (6x6 at most).
    tiles = [f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)]
    specials = [*chat, *images, *tiles]
    vocab, merges = train_bpe(GPT2Tokenizer(), specials, TINY_BPE_VOCABULARY, byte_level=True)
    if full:
        vocab = pad_vocabulary(vocab, 49280, "Ġ")
    tokenizer = GPT2Tokenizer(
        vocab=vocab,
        merges=merges,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        model_max_length=8192,
    )
    tokenizer.add_special_tokens(
        {"extra_special_tokens": specials}, replace_extra_special_tokens=False
    )
    if full:  # SmolVLM's own: up to 4x4 tiles of 512 px plus the global view, 64 tokens each
        image_size, patch_size, scale_factor, longest_edge = 512, 16, 4, 2048
    else:  # one 32 px frame per image, 4 tokens
        image_size, patch_size, scale_factor, longest_edge = 32, 8, 2, 32
    image_seq_len = (image_size // patch_size) ** 2 // scale_factor**2
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": longest_edge},
        max_image_size={"longest_edge": image_size},
        do_image_splitting=full,
        resample=PILImageResampling.LANCZOS,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = Idefics3Processor(
        image_processor,
        tokenizer,
        image_seq_len=image_seq_len,
        chat_template=_SMOLVLM_CHAT_TEMPLATE,
    )
    end_of_utterance = tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    text_config = {
        "model_type": "llama",
        "vocab_size": max(len(tokenizer), 49280 if full else 0),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": end_of_utterance,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e5},
    }
    if full:
        text_config |= {
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "head_dim": 64,
            "max_position_embeddings": 8192,
        }
        vision_config = {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
        }
    else:
        text_config |= {
            **TINY_LAYERS,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "initializer_range": 0.125,
        }
        vision_config = {**TINY_LAYERS, "initializer_range": 0.125}
    vision_config |= {"image_size": image_size, "patch_size": patch_size}
    config = Idefics3Config(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=processor.image_token_id,
        scale_factor=scale_factor,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )

    model = new_model(config, size)
    add_noise_to_zero_matrices(model)
    if not full:
        train_vision_language(model, processor, TRAINING)
    greedy_generation_config(
        model, [end_of_utterance, tokenizer.pad_token_id], tokenizer.pad_token_id
    )
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    save_with_processor(model, processor, folder)
