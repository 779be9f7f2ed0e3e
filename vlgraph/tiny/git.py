"""GIT builder (``git``): ``GitForCausalLM``, the architecture of ``microsoft/git-base``, an
image encoder whose tokens prefix a text decoder that writes the caption."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from vlgraph.tiny import CheckpointSize, register
from vlgraph.tiny.common import add_noise_to_zero_matrices, word_vocabulary


@register("git", trained=False)
def build_git(folder: Path, size: CheckpointSize, needs: Mapping[str, Path]) -> None:
    """GIT image captioning, base architecture when full, a few kilobytes when tiny."""
    from transformers import (
        BertTokenizer,
        CLIPImageProcessor,
        GitConfig,
        GitForCausalLM,
        GitProcessor,
    )

    vocab_size = 30522 if size is CheckpointSize.FULL else 512
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocabulary = [*specials, *word_vocabulary(vocab_size - len(specials))]
    token_ids = {token: index for index, token in enumerate(vocabulary)}
    tokenizer = BertTokenizer(vocab=token_ids, model_max_length=512)
    special = {
        "vocab_size": len(vocabulary),
        "pad_token_id": token_ids["[PAD]"],
        "bos_token_id": token_ids["[CLS]"],
        "eos_token_id": token_ids["[SEP]"],
    }
    if size is CheckpointSize.FULL:
        image_size = 224
        config = GitConfig(**special)
    else:
        image_size = 32
        config = GitConfig(
            vision_config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": image_size,
                "patch_size": 8,
                # Strong image features, so that a random decoder's caption follows the image.
                "initializer_range": 0.5,
            },
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=64,
            initializer_range=0.2,
            **special,
        )
    model = GitForCausalLM(config).eval()
    add_noise_to_zero_matrices(model.git.image_encoder)
    model.generation_config.max_new_tokens = 20
    model.save_pretrained(folder)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    GitProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
