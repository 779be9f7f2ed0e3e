"""CLIP builders in sentence-transformers' Hub layouts: ``clip`` (``clip-ViT-B-32``) and
``clip-multilingual`` (the text encoder of ``clip-ViT-B-32-multilingual-v1``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from vlgraph.tiny import CheckpointSize, register
from vlgraph.tiny.common import (
    CAPTION_WORDS,
    TINY_BPE_VOCABULARY,
    pad_vocabulary,
    train_bpe,
    word_vocabulary,
    write_json,
)

#: sentence-transformers' module classes as the Hub's modules.json files name them.
_ST_MODULE = "sentence_transformers.models."


@register("clip")
def build_clip(folder: Path, size: CheckpointSize, needs: Mapping[str, Path]) -> None:
    """CLIP ViT-B/32 as sentence-transformers' ``clip-ViT-B-32`` lays it out on the Hub:
    ``modules.json`` naming one ``CLIPModel`` module in ``0_CLIPModel/`` (transformers' CLIP
    weights, processor and tokenizer). 512-dimensional embeddings at both sizes."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab, merges = train_bpe(
        CLIPTokenizer(),
        ["<|startoftext|>", "<|endoftext|>"],
        TINY_BPE_VOCABULARY,
        byte_level=True,
        end_of_word_suffix="</w>",
    )
    full = size is CheckpointSize.FULL
    if full:
        vocab = pad_vocabulary(vocab, 49408, "")
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    image_size = 224 if full else 64
    special_ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if full:
        config = CLIPConfig(text_config={"vocab_size": len(tokenizer), **special_ids})
    else:
        layers = {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        }
        config = CLIPConfig(
            text_config={**layers, "vocab_size": len(tokenizer), **special_ids},
            vision_config={**layers, "image_size": image_size, "patch_size": 16},
            projection_dim=512,
        )
    module = folder / "0_CLIPModel"
    CLIPModel(config).eval().save_pretrained(module)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(module)
    write_json(
        folder / "modules.json",
        [{"idx": 0, "name": "0", "path": "0_CLIPModel", "type": _ST_MODULE + "CLIPModel"}],
    )


@register("clip-multilingual")
def build_clip_multilingual(folder: Path, size: CheckpointSize, needs: Mapping[str, Path]) -> None:
    """The text encoder of ``clip-ViT-B-32-multilingual-v1`` in its Hub layout: DistilBERT
    (cased) at the root, mean pooling in ``1_Pooling/``, a linear map to CLIP's 512-dimensional
    space in ``2_Dense/``."""
    import torch
    from safetensors.torch import save_file
    from transformers import DistilBertConfig, DistilBertModel, DistilBertTokenizer

    full = size is CheckpointSize.FULL
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = word_vocabulary(119547 - len(specials) if full else 400)
    capitalised = [word.capitalize() for word in CAPTION_WORDS]
    tokens = list(dict.fromkeys([*specials, *capitalised, *words]))
    tokenizer = DistilBertTokenizer(
        vocab={token: index for index, token in enumerate(tokens)},
        do_lower_case=False,
        model_max_length=128,
    )
    if full:
        config = DistilBertConfig(vocab_size=len(tokens), pad_token_id=0)
    else:
        config = DistilBertConfig(
            vocab_size=len(tokens),
            dim=32,
            hidden_dim=64,
            n_layers=2,
            n_heads=2,
            max_position_embeddings=128,
            pad_token_id=0,
        )
    DistilBertModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_json(
        folder / "sentence_bert_config.json", {"max_seq_length": 128, "do_lower_case": False}
    )
    write_json(
        folder / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": config.dim,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    )
    dense = {
        "in_features": config.dim,
        "out_features": 512,
        "bias": False,
        "activation_function": "torch.nn.modules.linear.Identity",
    }
    write_json(folder / "2_Dense" / "config.json", dense)
    weight = torch.randn(512, config.dim) * (0.2 if not full else config.dim**-0.5)
    save_file({"linear.weight": weight.contiguous()}, str(folder / "2_Dense" / "model.safetensors"))
    write_json(
        folder / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": _ST_MODULE + "Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": _ST_MODULE + "Pooling"},
            {"idx": 2, "name": "2", "path": "2_Dense", "type": _ST_MODULE + "Dense"},
        ],
    )
