"""BLIP-2 builder (``blip2``): an OPT language model behind a Q-Former.

The tiny checkpoint is trained on the world (:mod:`vlgraph.tiny.vlm_training`): plain captions,
captions for an instruction, and yes/no flags; BLIP-2 reads one image per prompt.
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

#: How the tiny checkpoint trains. Its prompts end with "Answer:", its answers with "</s>".
TRAINING = VisionLanguageRecipe(
    family="blip2", caption_instruction=None, end_token="</s>", steps=500, answer_prefix=" "
)


@register("blip2")
def build_blip2(folder: Path, size: CheckpointSize, needs: Mapping[str, Path]) -> None:
    """BLIP-2 with an OPT language model, ``Salesforce/blip2-opt-2.7b`` dimensions when full."""
    from transformers import (
        Blip2Config,
        Blip2Processor,
        BlipImageProcessorPil,
        GPT2Tokenizer,
    )
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    full = size is CheckpointSize.FULL
    vocab, merges = train_bpe(
        GPT2Tokenizer(), ["<s>", "<pad>", "</s>", "<unk>"], TINY_BPE_VOCABULARY, byte_level=True
    )
    if full:
        vocab = pad_vocabulary(vocab, 50265, "Ġ")
    tokenizer = GPT2Tokenizer(
        vocab=vocab,
        merges=merges,
        bos_token="</s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        add_bos_token=True,
        model_max_length=2048 if full else 256,
    )
    image_size = 224 if full else 32
    image_processor = BlipImageProcessorPil(
        size={"height": image_size, "width": image_size},
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
        do_convert_rgb=True,
    )
    num_query_tokens = 32 if full else 8
    # The processor adds the <image> token to the tokenizer: read the sizes after it.
    processor = Blip2Processor(image_processor, tokenizer, num_query_tokens=num_query_tokens)
    text_config = {
        "model_type": "opt",
        "vocab_size": max(len(tokenizer), 50272 if full else 0),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if full:
        text_config |= {
            "hidden_size": 2560,
            "ffn_dim": 10240,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "word_embed_proj_dim": 2560,
            "max_position_embeddings": 2048,
        }
        # The vision (ViT-g, 224 px) and Q-Former defaults are BLIP-2's.
        config = Blip2Config(text_config=text_config, num_query_tokens=num_query_tokens)
    else:
        text_config |= {
            "hidden_size": 64,
            "ffn_dim": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "word_embed_proj_dim": 64,
            "max_position_embeddings": 256,
            "init_std": 0.125,
        }
        config = Blip2Config(
            vision_config={
                **TINY_LAYERS,
                "image_size": image_size,
                "patch_size": 8,
                "initializer_range": 0.125,
            },
            qformer_config={
                **TINY_LAYERS,
                "cross_attention_frequency": 1,
                "encoder_hidden_size": TINY_LAYERS["hidden_size"],
                "max_position_embeddings": 64,
                "initializer_range": 0.125,
            },
            text_config=text_config,
            num_query_tokens=num_query_tokens,
            initializer_range=0.125,
        )
    config.image_token_index = tokenizer.convert_tokens_to_ids(processor.image_token.content)

    model = new_model(config, size)
    add_noise_to_zero_matrices(model)
    if not full:
        train_vision_language(model, processor, TRAINING)
    greedy_generation_config(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    save_with_processor(model, processor, folder)
