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
from vlgraph.tiny.training import train, world_pool
from vlgraph.tiny.world import LANGUAGES, all_scenes, world_words

#: sentence-transformers' module classes as the Hub's modules.json files name them.
_ST_MODULE = "sentence_transformers.models."


@register("clip")
def build_clip(folder: Path, size: CheckpointSize, needs: Mapping[str, Path]) -> None:
    """CLIP ViT-B/32 as sentence-transformers' ``clip-ViT-B-32`` lays it out on the Hub:
    ``modules.json`` naming one ``CLIPModel`` module in ``0_CLIPModel/`` (transformers' CLIP
    weights, processor and tokenizer). 512-dimensional embeddings at both sizes; the tiny one
    is trained contrastively on the world's images and captions."""
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
    image_size = 224 if full else TINY_CLIP_IMAGE_SIZE
    special_ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if full:
        config = CLIPConfig(text_config={"vocab_size": len(tokenizer), **special_ids})
    else:
        layers = {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        }
        config = CLIPConfig(
            text_config={**layers, "vocab_size": len(tokenizer), **special_ids},
            vision_config={**layers, "image_size": image_size, "patch_size": 8},
            projection_dim=512,
        )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model = CLIPModel(config)
    if not full:
        _train_clip(model, processor)
    module = folder / "0_CLIPModel"
    model.eval().save_pretrained(module)
    processor.save_pretrained(module)
    write_json(
        folder / "modules.json",
        [{"idx": 0, "name": "0", "path": "0_CLIPModel", "type": _ST_MODULE + "CLIPModel"}],
    )


#: Side of the tiny CLIP's input images (patch 8: 16 patches).
TINY_CLIP_IMAGE_SIZE = 32
CLIP_TRAINING_STEPS = 1200
#: The share of the image-to-image term in CLIP's loss.
IMAGE_TO_IMAGE_WEIGHT = 0.5


def _train_clip(model, processor) -> None:
    """Contrastive training: each step holds two images of each of the 72 scenes and their
    captions, so every caption has exactly one right image in the batch. Captions are
    matched with the first images; the first images with the second (another drawing of the
    same scene), so that pictures of one thing are each other's nearest (image search)."""
    import torch

    # The second drawings are larger, as pictures people search with are: a picture is
    # near another of the same thing whatever its resolution.
    pools = [world_pool(seed=1), world_pool(seed=2, size=128)]
    scenes = all_scenes()
    pixels, by_scene = [], []
    for pool in pools:
        pixels.append(processor(images=pool.images, return_tensors="pt")["pixel_values"])
        indices: dict = {scene: [] for scene in scenes}
        for index, scene in enumerate(pool.scenes):
            indices[scene].append(index)
        by_scene.append(indices)
    text = processor.tokenizer(
        [scene.caption for scene in scenes], padding=True, return_tensors="pt"
    )
    targets = torch.arange(len(scenes))
    generator = torch.Generator().manual_seed(1)

    def pick(pool: int):
        indices = by_scene[pool]
        chosen = [
            indices[scene][int(torch.randint(len(indices[scene]), (), generator=generator))]
            for scene in scenes
        ]
        return pixels[pool][chosen]

    def symmetric(logits):
        return (
            torch.nn.functional.cross_entropy(logits, targets)
            + torch.nn.functional.cross_entropy(logits.T, targets)
        ) / 2

    def loss_of_step(step: int):
        output = model(pixel_values=torch.cat([pick(0), pick(1)]), **text)
        images = output.image_embeds  # unit length
        logits = output.logits_per_text[:, : len(scenes)]
        same_scene = images[: len(scenes)] @ images[len(scenes) :].T * model.logit_scale.exp()
        return symmetric(logits) + IMAGE_TO_IMAGE_WEIGHT * symmetric(same_scene)

    model.train()
    train("clip", model.parameters(), loss_of_step, CLIP_TRAINING_STEPS, learning_rate=2e-3)


@register("clip-multilingual", needs=("clip",))
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
    spoken = world_words()
    capitalised = [word.capitalize() for word in (*spoken, *CAPTION_WORDS)]
    tokens = list(dict.fromkeys([*specials, *spoken, *capitalised, *words]))
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
            dim=64,
            hidden_dim=128,
            n_layers=2,
            n_heads=2,
            max_position_embeddings=128,
            pad_token_id=0,
        )
    model = DistilBertModel(config)
    dense_layer = torch.nn.Linear(config.dim, 512, bias=False)
    with torch.no_grad():
        dense_layer.weight.normal_(0.0, 0.2 if not full else config.dim**-0.5)
    if not full:
        _distil_into_clip_space(model, dense_layer, tokenizer, needs["clip"])
    model.eval().save_pretrained(folder)
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
    weight = dense_layer.weight.detach().contiguous()
    save_file({"linear.weight": weight}, str(folder / "2_Dense" / "model.safetensors"))
    write_json(
        folder / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": _ST_MODULE + "Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": _ST_MODULE + "Pooling"},
            {"idx": 2, "name": "2", "path": "2_Dense", "type": _ST_MODULE + "Dense"},
        ],
    )


MULTILINGUAL_STEPS = 200


def _distil_into_clip_space(model, dense_layer, tokenizer, clip_folder: Path) -> None:
    """Train the multilingual encoder (mean-pooled DistilBERT, then the dense map) so that a
    caption in any of the world's languages lands on the trained CLIP's vector of the English
    caption, as ``clip-ViT-B-32-multilingual-v1`` was distilled from CLIP."""
    import torch
    from sentence_transformers import SentenceTransformer

    teacher = SentenceTransformer(str(clip_folder), device="cpu")
    scenes = all_scenes()
    with torch.no_grad():
        targets = teacher.encode([scene.caption for scene in scenes], convert_to_tensor=True)
    texts, rows = [], []
    for row, scene in enumerate(scenes):
        for language in LANGUAGES:
            caption = scene.caption_in(language)
            texts += [caption, caption[0].upper() + caption[1:]]
            rows += [row, row]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    mask = encoded["attention_mask"].unsqueeze(-1).float()
    wanted = targets[rows]

    def loss_of_step(step: int):
        hidden = model(**encoded).last_hidden_state
        vectors = dense_layer((hidden * mask).sum(1) / mask.sum(1))
        cosine = torch.nn.functional.cosine_similarity(vectors, wanted).mean()
        return torch.nn.functional.mse_loss(vectors, wanted) + (1 - cosine)

    model.train()
    parameters = [*model.parameters(), *dense_layer.parameters()]
    train("clip-multilingual", parameters, loss_of_step, MULTILINGUAL_STEPS, learning_rate=2e-3)
