"""PaliGemma 2 builder (``paligemma``): ``PaliGemmaForConditionalGeneration``, a SigLIP tower
whose tokens prefix a Gemma 2 language model.

PaliGemma has no chat template: it takes a task prefix (``caption en``, ``answer en ...``)
after its image tokens, and the processor writes ``<image>...<bos>prefix\\n`` itself. The
tiny checkpoint keeps random weights (it is not trained on the world): it loads, batches and
generates like the real model, and its output follows its image.
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
from vlgraph.tiny.towers import siglip_vision_config
from vlgraph.tiny.vlm_training import TINY_LAYERS


@register("paligemma", trained=False)
def build_paligemma(folder: Path, size: CheckpointSize, needs: Mapping[str, Path]) -> None:
    """PaliGemma 2, ``google/paligemma2-3b-pt-224`` dimensions when full.

    Saved without a chat template, as on the Hub. Tiny: 32 px images of 4 x 4 patches, so one
    image costs 16 tokens (256 at full size).
    """
    import torch
    from tokenizers import pre_tokenizers
    from transformers import (
        GemmaTokenizer,
        PaliGemmaConfig,
        PaliGemmaProcessor,
        SiglipImageProcessorPil,
    )
    from transformers.models.paligemma.processing_paligemma import EXTRA_TOKENS

    full = size is CheckpointSize.FULL
    names = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    byte_tokens = [f"<0x{value:02X}>" for value in range(256)]
    template = GemmaTokenizer()
    if not full:
        # As for Gemma 3: learn word pieces, not whole phrases joined by "▁".
        template.backend_tokenizer.pre_tokenizer = pre_tokenizers.Split("▁", "merged_with_next")
    vocab, merges = train_bpe(
        template, [*names, *byte_tokens], TINY_BPE_VOCABULARY, byte_level=False
    )
    if full:
        vocab = pad_vocabulary(vocab, 256000, "▁")
    # The Hub's order: the 1024 location and 128 segmentation tokens, then ``<image>``
    # (257152 at full size); the processor would append them the other way round.
    for token in [*EXTRA_TOKENS, "<image>"]:
        vocab[token] = len(vocab)
    tokenizer = GemmaTokenizer(
        vocab=vocab,
        merges=merges,
        extra_special_tokens={"image_token": "<image>"},
        model_max_length=8192 if full else 512,
    )
    image_size, patch_size = (224, 14) if full else (32, 8)
    image_seq_length = (image_size // patch_size) ** 2
    image_processor = SiglipImageProcessorPil(
        size={"height": image_size, "width": image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        image_seq_length=image_seq_length,
    )
    processor = PaliGemmaProcessor(image_processor, tokenizer)
    text_config = {
        "model_type": "gemma2",
        "vocab_size": max(len(tokenizer), 257216 if full else 0),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if full:
        text_config |= {
            "hidden_size": 2304,
            "intermediate_size": 9216,
            "num_hidden_layers": 26,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "head_dim": 256,
            "query_pre_attn_scalar": 256,
            "sliding_window": 4096,
            "max_position_embeddings": 8192,
        }
    else:
        text_config |= {
            **TINY_LAYERS,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "sliding_window": 512,
            "max_position_embeddings": 512,
            "initializer_range": 0.125,
        }
    vision_config = siglip_vision_config(27 if full else None, image_size, patch_size)
    config = PaliGemmaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.image_token_id,
        vocab_size=text_config["vocab_size"],
        projection_dim=text_config["hidden_size"],
        hidden_size=text_config["hidden_size"],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.02 if full else 0.125,
    )

    model = new_model(config, size)
    add_noise_to_zero_matrices(model)
    if not full:
        # Gemma multiplies its input embeddings by sqrt(hidden size): at random init the last
        # prompt token ("\n") then outweighs all the image tokens and the model repeats it,
        # whatever the image. Scaled-down embeddings let the output follow the image.
        with torch.no_grad():
            model.get_input_embeddings().weight /= text_config["hidden_size"] ** 0.5
    greedy_generation_config(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    save_with_processor(model, processor, folder)
