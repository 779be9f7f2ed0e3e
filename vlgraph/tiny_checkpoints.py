"""Factory of deterministic random checkpoints in the standard Hugging Face layout.

No weights can be downloaded on the machines this project is built and tested on, so the
offline profile, the tests and the benchmarks load checkpoints that this module writes: a
config, ``model.safetensors``, the tokenizer and the processor, saved with ``save_pretrained``
into a folder that the ordinary ``from_pretrained(path)`` code loads like a Hub snapshot.

Each model family adds one builder with :func:`register`. A builder receives an empty folder
and a :class:`CheckpointSize`; ``tiny`` gives a sub-megabyte model for tests, ``full`` the
default (real-size) architecture with random weights, which runs the same compute as the real
model for benchmarks.

Usage: ``ensure_checkpoint("blip-caption", cache_dir)`` returns the folder, building it once.
"""

from __future__ import annotations

import argparse
import enum
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

#: Bump when a builder changes, so that stale folders in a cache are not reused.
FACTORY_VERSION = 2

_COMPLETE_MARKER = ".vlgraph-complete"


class CheckpointSize(enum.StrEnum):
    """How big a generated checkpoint is."""

    TINY = "tiny"
    FULL = "full"


Builder = Callable[[Path, CheckpointSize], None]
_BUILDERS: dict[str, Builder] = {}


def register(family: str) -> Callable[[Builder], Builder]:
    """Register ``builder`` as the factory of ``family`` checkpoints."""

    def decorator(builder: Builder) -> Builder:
        _BUILDERS[family] = builder
        return builder

    return decorator


def families() -> list[str]:
    """Names of the model families the factory can build."""
    return sorted(_BUILDERS)


def ensure_checkpoint(
    family: str, cache_dir: Path | str, size: CheckpointSize | str = CheckpointSize.TINY
) -> Path:
    """Return the folder of a ``family`` checkpoint under ``cache_dir``, building it if needed.

    Safe to call from several processes at once: each builds into a private temporary folder
    and renames it into place; the first rename wins and the others discard their copy.
    """
    if family not in _BUILDERS:
        raise KeyError(f"unknown tiny checkpoint family {family!r}; known: {', '.join(families())}")
    size = CheckpointSize(size)
    cache_dir = Path(cache_dir).expanduser().resolve()
    target = cache_dir / f"{family}-{size.value}-v{FACTORY_VERSION}"
    if (target / _COMPLETE_MARKER).exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache_dir))
    try:
        _build_deterministically(_BUILDERS[family], staging, size)
        (staging / _COMPLETE_MARKER).write_text(f"{family} {size.value} v{FACTORY_VERSION}\n")
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / _COMPLETE_MARKER).exists():
                # A half-written folder from a crashed run: replace it.
                shutil.rmtree(target, ignore_errors=True)
                os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _build_deterministically(builder: Builder, folder: Path, size: CheckpointSize) -> None:
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        builder(folder, size)


#: Caption words: tiny vocabularies list them first so that tiny captions read like text.
_CAPTION_WORDS = (
    "a",
    "an",
    "the",
    "of",
    "on",
    "in",
    "with",
    "and",
    "at",
    "by",
    "near",
    "two",
    "three",
    "man",
    "woman",
    "dog",
    "cat",
    "bird",
    "car",
    "street",
    "beach",
    "tree",
    "house",
    "table",
    "room",
    "field",
    "water",
    "sky",
    "sitting",
    "standing",
    "red",
    "blue",
    "green",
    "white",
    "black",
    "small",
    "large",
    "photo",
    "picture",
    "view",
    "group",
    "people",
    "yes",  # flag questions are scored by the "yes" and "no" tokens
    "no",
)


def _word_vocabulary(size: int) -> list[str]:
    """Lower-case word pieces: plain words first so tiny captions read like text."""
    vocabulary = list(dict.fromkeys(_CAPTION_WORDS))
    vocabulary += [f"w{i}" for i in range(size - len(vocabulary))]
    return vocabulary[:size]


def _add_noise_to_zero_matrices(model) -> None:
    """Refill all-zero weight matrices with noise so that random models do not ignore inputs."""
    import torch

    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2 and not parameter.any():
                parameter.normal_(0.0, 0.2)


def _blip_parts(size: CheckpointSize):
    """The config, tokenizer and image processor that BLIP's captioning and VQA checkpoints
    share: base architecture when full, a few kilobytes of weights when tiny."""
    from transformers import BertTokenizer, BlipConfig, BlipImageProcessor

    vocab_size = 30524 if size is CheckpointSize.FULL else 512
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = _word_vocabulary(vocab_size - len(specials) - 2)
    vocabulary = [*specials, *words, "[DEC]", "[ENC]"]
    token_ids = {token: index for index, token in enumerate(vocabulary)}
    tokenizer = BertTokenizer(
        vocab=token_ids, bos_token="[DEC]", extra_special_tokens=["[ENC]"], model_max_length=512
    )

    if size is CheckpointSize.FULL:
        image_size = 384
        config = BlipConfig()
    else:
        image_size = 64
        config = BlipConfig(
            vision_config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": image_size,
                "patch_size": 16,
            },
            text_config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "encoder_hidden_size": 32,
                "max_position_embeddings": 64,
            },
            projection_dim=32,
        )
        # Defaults (vision 1e-10, text 0.02) give every image the same caption: the image
        # signal must be strong enough to steer a random decoder.
        config.vision_config.initializer_range = 0.5
        config.text_config.initializer_range = 0.2
    config.text_config.vocab_size = len(vocabulary)
    config.text_config.pad_token_id = token_ids["[PAD]"]
    config.text_config.bos_token_id = token_ids["[DEC]"]
    config.text_config.sep_token_id = token_ids["[SEP]"]
    config.text_config.eos_token_id = token_ids["[SEP]"]
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    return config, tokenizer, image_processor


@register("blip-caption")
def build_blip_caption(folder: Path, size: CheckpointSize) -> None:
    """BLIP image captioning (``BlipForConditionalGeneration``), base architecture when full."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    config, tokenizer, image_processor = _blip_parts(size)
    model = BlipForConditionalGeneration(config).eval()
    _add_noise_to_zero_matrices(model.vision_model)
    model.generation_config.max_new_tokens = 20
    model.save_pretrained(folder)
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)


@register("blip-vqa")
def build_blip_vqa(folder: Path, size: CheckpointSize) -> None:
    """BLIP visual question answering (``BlipForQuestionAnswering``, the architecture of
    ``Salesforce/blip-vqa-base``), base architecture when full."""
    from transformers import BlipForQuestionAnswering, BlipProcessor

    config, tokenizer, image_processor = _blip_parts(size)
    model = BlipForQuestionAnswering(config).eval()
    _add_noise_to_zero_matrices(model.vision_model)
    model.generation_config.max_new_tokens = 10
    model.save_pretrained(folder)
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)


def _write_json(path: Path, value: object) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


#: sentence-transformers' module classes as the Hub's modules.json files name them.
_ST_MODULE = "sentence_transformers.models."


@register("clip")
def build_clip(folder: Path, size: CheckpointSize) -> None:
    """CLIP ViT-B/32 as sentence-transformers' ``clip-ViT-B-32`` lays it out on the Hub:
    ``modules.json`` naming one ``CLIPModel`` module in ``0_CLIPModel/`` (transformers' CLIP
    weights, processor and tokenizer). 512-dimensional embeddings at both sizes."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab, merges = _train_bpe(
        CLIPTokenizer(),
        ["<|startoftext|>", "<|endoftext|>"],
        _TINY_BPE_VOCABULARY,
        byte_level=True,
        end_of_word_suffix="</w>",
    )
    full = size is CheckpointSize.FULL
    if full:
        vocab = _pad_vocabulary(vocab, 49408, "")
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
    _write_json(
        folder / "modules.json",
        [{"idx": 0, "name": "0", "path": "0_CLIPModel", "type": _ST_MODULE + "CLIPModel"}],
    )


@register("clip-multilingual")
def build_clip_multilingual(folder: Path, size: CheckpointSize) -> None:
    """The text encoder of ``clip-ViT-B-32-multilingual-v1`` in its Hub layout: DistilBERT
    (cased) at the root, mean pooling in ``1_Pooling/``, a linear map to CLIP's 512-dimensional
    space in ``2_Dense/``."""
    import torch
    from safetensors.torch import save_file
    from transformers import DistilBertConfig, DistilBertModel, DistilBertTokenizer

    full = size is CheckpointSize.FULL
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = _word_vocabulary(119547 - len(specials) if full else 400)
    capitalised = [word.capitalize() for word in _CAPTION_WORDS]
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
    _write_json(
        folder / "sentence_bert_config.json", {"max_seq_length": 128, "do_lower_case": False}
    )
    _write_json(
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
    _write_json(folder / "2_Dense" / "config.json", dense)
    weight = torch.randn(512, config.dim) * (0.2 if not full else config.dim**-0.5)
    save_file({"linear.weight": weight.contiguous()}, str(folder / "2_Dense" / "model.safetensors"))
    _write_json(
        folder / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": _ST_MODULE + "Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": _ST_MODULE + "Pooling"},
            {"idx": 2, "name": "2", "path": "2_Dense", "type": _ST_MODULE + "Dense"},
        ],
    )


#: Words of the families' prompts and of the tests' instructions; tiny BPE tokenizers learn them.
_PROMPT_WORDS = (
    "question",
    "answer",
    "what",
    "is",
    "this",
    "describe",
    "colours",
    "colors",
    "detail",
    "image",
    "user",
    "model",
    "assistant",
    "system",
)

#: Answers that the server scores by the logits of the first answer token: each must be one token.
_ANSWER_WORDS = ("yes", "no")

#: Tokens in the vocabulary of a tiny byte-level BPE tokenizer (256 of them are single bytes).
_TINY_BPE_VOCABULARY = 640

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


def _bpe_training_text() -> list[str]:
    """Short texts for tiny BPE tokenizers: each word bare, after a space, and capitalised.

    Yes and no are the most frequent words, so that every form of them becomes one token.
    """
    texts = []
    for word in (*_CAPTION_WORDS, *_PROMPT_WORDS, *_ANSWER_WORDS):
        repeats = 50 if word in _ANSWER_WORDS else 5
        for form in (word, word.capitalize()):
            texts += [form, f" {form}"] * repeats
    texts += ["Question: What is this? Answer:", "Describe the colours of this picture in detail."]
    return texts


def _train_bpe(
    template,
    specials: list[str],
    vocab_size: int,
    byte_level: bool,
    end_of_word_suffix: str | None = None,
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a BPE vocabulary and merges with the normalizer and pre-tokenizer of ``template``.

    ``specials`` take the first ids; ``end_of_word_suffix`` marks word ends as CLIP's BPE
    does (``</w>``). Returns what the tokenizer classes of transformers take as ``vocab=`` and
    ``merges=``.
    """
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    suffix = {"end_of_word_suffix": end_of_word_suffix} if end_of_word_suffix else {}
    backend = Tokenizer(models.BPE(**suffix))
    if template.backend_tokenizer.normalizer is not None:
        backend.normalizer = template.backend_tokenizer.normalizer
    backend.pre_tokenizer = template.backend_tokenizer.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet() if byte_level else [],
        show_progress=False,
        **suffix,
    )
    backend.train_from_iterator(_bpe_training_text(), trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    return dict(model["vocab"]), [tuple(pair) for pair in model["merges"]]


def _pad_vocabulary(vocabulary: dict[str, int], size: int, space: str) -> dict[str, int]:
    """Fill ``vocabulary`` up to ``size`` entries with word-like tokens (``{space}w123``).

    The merges never produce them, but a random full-size model generates them and they
    decode to readable text.
    """
    padded = dict(vocabulary)
    index = 0
    while len(padded) < size:
        token = f"{space}w{index}"
        padded.setdefault(token, len(padded))
        index += 1
    return padded


def _shrink_token_embeddings(model, factor: float = 0.1) -> None:
    """Scale down a tiny language model's token embeddings (tied with its output layer).

    Otherwise the last prompt token's own embedding dominates the hidden state that picks the
    next token, and different images often give the same text.
    """
    import torch

    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(factor)


def _greedy_generation_config(model, eos_token_id: int | list[int], pad_token_id: int) -> None:
    """Greedy decoding with the family's stop tokens, saved with the model."""
    generation = model.generation_config
    generation.do_sample = False
    generation.eos_token_id = eos_token_id
    generation.pad_token_id = pad_token_id
    generation.max_new_tokens = 20


def _new_model(config, size: CheckpointSize):
    """A randomly initialised image-text-to-text model in eval mode.

    Full-size models are built and saved in bfloat16: half the memory and disk of float32.
    Loaders pick their own dtype with ``from_pretrained(folder, dtype=...)``.
    """
    import torch
    from transformers import AutoModelForImageTextToText

    dtype = torch.bfloat16 if size is CheckpointSize.FULL else torch.float32
    return AutoModelForImageTextToText.from_config(config, dtype=dtype).eval()


def _save(model, processor, folder: Path) -> None:
    """Save the model and its processor (tokenizer, image processor, chat template)."""
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


@register("blip2")
def build_blip2(folder: Path, size: CheckpointSize) -> None:
    """BLIP-2 with an OPT language model, ``Salesforce/blip2-opt-2.7b`` dimensions when full."""
    from transformers import (
        Blip2Config,
        Blip2Processor,
        BlipImageProcessorPil,
        GPT2Tokenizer,
    )
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    full = size is CheckpointSize.FULL
    vocab, merges = _train_bpe(
        GPT2Tokenizer(), ["<s>", "<pad>", "</s>", "<unk>"], _TINY_BPE_VOCABULARY, byte_level=True
    )
    if full:
        vocab = _pad_vocabulary(vocab, 50265, "Ġ")
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
    num_query_tokens = 32 if full else 4
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
            "hidden_size": 32,
            "ffn_dim": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "word_embed_proj_dim": 32,
            "max_position_embeddings": 256,
            "init_std": 0.2,
        }
        config = Blip2Config(
            vision_config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": image_size,
                "patch_size": 8,
                "initializer_range": 0.5,
            },
            qformer_config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "cross_attention_frequency": 1,
                "max_position_embeddings": 64,
                "initializer_range": 0.2,
            },
            text_config=text_config,
            num_query_tokens=num_query_tokens,
            initializer_range=0.2,
        )
    config.image_token_index = tokenizer.convert_tokens_to_ids(processor.image_token.content)

    model = _new_model(config, size)
    _add_noise_to_zero_matrices(model)
    if not full:
        _shrink_token_embeddings(model)
    _greedy_generation_config(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    _save(model, processor, folder)


@register("gemma3")
def build_gemma3(folder: Path, size: CheckpointSize) -> None:
    """Gemma 3 (``Gemma3ForConditionalGeneration``), ``google/gemma-3-4b-it`` dims when full."""
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
    vocab, merges = _train_bpe(
        GemmaTokenizer(),
        [*names, *turns, *images.values(), *byte_tokens],
        _TINY_BPE_VOCABULARY,
        byte_level=False,
    )
    if full:
        vocab = _pad_vocabulary(vocab, 262144, "▁")
    tokenizer = GemmaTokenizer(
        vocab=vocab, merges=merges, extra_special_tokens=images, model_max_length=8192
    )
    tokenizer.add_special_tokens(
        {"extra_special_tokens": turns}, replace_extra_special_tokens=False
    )
    image_size, mm_tokens = (896, 256) if full else (32, 16)
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
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "sliding_window": 16,
            "layer_types": ["sliding_attention", "full_attention"],
            "max_position_embeddings": 512,
            "initializer_range": 0.2,
        }
        vision_config = {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "patch_size": 4,
        }
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
        initializer_range=0.02 if full else 0.2,
    )

    model = _new_model(config, size)
    _add_noise_to_zero_matrices(model)
    if not full:
        _shrink_token_embeddings(model)
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    _greedy_generation_config(model, [tokenizer.eos_token_id, end_of_turn], tokenizer.pad_token_id)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    _save(model, processor, folder)


@register("internvl")
def build_internvl(folder: Path, size: CheckpointSize) -> None:
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
    vocab, merges = _train_bpe(
        Qwen2Tokenizer(), [*chat, *images.values()], _TINY_BPE_VOCABULARY, byte_level=True
    )
    if full:
        vocab = _pad_vocabulary(vocab, 151674, "Ġ")
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=images,
        model_max_length=8192,
    )
    tokenizer.add_special_tokens({"extra_special_tokens": chat}, replace_extra_special_tokens=False)
    image_size, patch_size = (448, 14) if full else (32, 4)
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
    text_config = {
        "model_type": "qwen2",
        "vocab_size": max(len(tokenizer), 151674 if full else 0),
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": True,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
    }
    if full:
        text_config |= {
            "hidden_size": 896,
            "intermediate_size": 4864,
            "num_hidden_layers": 24,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
        }
        vision_config = {}  # the defaults: InternViT-300M at 448 px
    else:
        text_config |= {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 512,
            "initializer_range": 0.2,
        }
        vision_config = {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": patch_size,
            "initializer_range": 0.2,
        }
    config = InternVLConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=image_seq_length,
        downsample_ratio=0.5,
        tie_word_embeddings=True,
    )

    model = _new_model(config, size)
    _add_noise_to_zero_matrices(model)
    if not full:
        _shrink_token_embeddings(model)
    _greedy_generation_config(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    _save(model, processor, folder)


# The diffusion builders live in their own module and register themselves on import.
from vlgraph import tiny_diffusion  # noqa: E402, F401


def main(argv: list[str] | None = None) -> None:
    """Command line: build checkpoints and print their folders."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "families", nargs="*", help=f"families to build (default all: {families()})"
    )
    parser.add_argument("--cache-dir", default=".cache/vlgraph/checkpoints")
    parser.add_argument("--size", choices=[s.value for s in CheckpointSize], default="tiny")
    args = parser.parse_args(argv)
    for family in args.families or families():
        print(ensure_checkpoint(family, args.cache_dir, args.size))


if __name__ == "__main__":
    main()
