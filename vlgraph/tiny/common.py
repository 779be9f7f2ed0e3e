"""Helpers that the family builders of :mod:`vlgraph.tiny` share.

Word lists and vocabularies, byte-level BPE training for tiny tokenizers, noise for all-zero
weight matrices, generation settings, model construction and saving. Nothing here registers a
family.
"""

from __future__ import annotations

from pathlib import Path

from vlgraph.tiny import CheckpointSize

#: Caption words: tiny vocabularies list them first so that tiny captions read like text.
CAPTION_WORDS = (
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


def english_world_words() -> list[str]:
    """The words of the world's English captions and questions (see :mod:`vlgraph.tiny.world`)."""
    from vlgraph.tiny.world import all_scenes, collective_caption, world_questions

    texts = [scene.caption for scene in all_scenes()]
    texts += [collective_caption(all_scenes()[:2]), *world_questions(), "answer :"]
    return list(dict.fromkeys(" ".join(texts).replace("?", " ?").split()))


def word_vocabulary(size: int) -> list[str]:
    """Lower-case word pieces: the world's words, then plain words, so captions read like text."""
    vocabulary = list(dict.fromkeys([*english_world_words(), *CAPTION_WORDS]))
    vocabulary += [f"w{i}" for i in range(size - len(vocabulary))]
    return vocabulary[:size]


def add_noise_to_zero_matrices(model) -> None:
    """Refill all-zero weight matrices with noise so that random models do not ignore inputs."""
    import torch

    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2 and not parameter.any():
                parameter.normal_(0.0, 0.2)


def write_json(path: Path, value: object) -> None:
    """Write ``value`` as indented JSON, creating the parent folders."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


#: Words of the families' prompts and of the tests' instructions; tiny BPE tokenizers learn them.
PROMPT_WORDS = (
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
ANSWER_WORDS = ("yes", "no")

#: Tokens in the vocabulary of a tiny byte-level BPE tokenizer (256 of them are single bytes).
TINY_BPE_VOCABULARY = 640


def bpe_training_text() -> list[str]:
    """Short texts for tiny BPE tokenizers: each word bare, after a space, and capitalised.

    Yes and no are the most frequent words, so that every form of them becomes one token; the
    world's captions are there so that its words become single tokens.
    """
    from vlgraph.tiny.world import all_scenes

    texts = []
    for word in (*english_world_words(), *CAPTION_WORDS, *PROMPT_WORDS, *ANSWER_WORDS):
        repeats = 50 if word in ANSWER_WORDS else 5
        for form in (word, word.capitalize()):
            texts += [form, f" {form}"] * repeats
    texts += ["Question: What is this? Answer:", "Describe the colours of this picture in detail."]
    texts += [scene.caption for scene in all_scenes()] * 3
    return texts


def train_bpe(
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
    backend.train_from_iterator(bpe_training_text(), trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    merges = [tuple(pair) for pair in model["merges"]]
    # The trainer's merges are deterministic but the ids of its single characters follow a
    # hash map's order; sorted ids make the checkpoint byte-identical from run to run.
    produced = ["".join(pair) for pair in merges]
    alphabet = sorted(set(model["vocab"]) - set(specials) - set(produced))
    order = dict.fromkeys([*specials, *alphabet, *produced])
    return {token: index for index, token in enumerate(order)}, merges


def pad_vocabulary(vocabulary: dict[str, int], size: int, space: str) -> dict[str, int]:
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


def greedy_generation_config(model, eos_token_id: int | list[int], pad_token_id: int) -> None:
    """Greedy decoding with the family's stop tokens, saved with the model."""
    generation = model.generation_config
    generation.do_sample = False
    generation.eos_token_id = eos_token_id
    generation.pad_token_id = pad_token_id
    generation.max_new_tokens = 20


def new_model(config, size: CheckpointSize):
    """A randomly initialised image-text-to-text model in eval mode.

    Full-size models are built and saved in bfloat16: half the memory and disk of float32.
    Loaders pick their own dtype with ``from_pretrained(folder, dtype=...)``.
    """
    import torch
    from transformers import AutoModelForImageTextToText

    dtype = torch.bfloat16 if size is CheckpointSize.FULL else torch.float32
    return AutoModelForImageTextToText.from_config(config, dtype=dtype).eval()


def save_with_processor(model, processor, folder: Path) -> None:
    """Save the model and its processor (tokenizer, image processor, chat template)."""
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
