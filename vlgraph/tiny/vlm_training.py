"""Training the instruction-following families (BLIP-2, Gemma 3, InternVL) on the world.

The prompts come from the family adapters of :mod:`vlgraph.vlm_families`, exactly as the server
builds them; the answer and the family's end token are appended for teacher forcing, and the
loss reads the answer only. Each step mixes three tasks:

- captions: an instruction (the offline profile's, others, or a random string of words) and one
  image, answered by ``Scene.caption``;
- flags: the world's ``is there a circle?`` followed by the server's ``Answer yes or no.``,
  answered ``yes`` or ``no``, the first answer token that the server scores;
- collective captions (families that read several images in one prompt): two or three images
  and a set instruction, answered by :func:`~vlgraph.tiny.world.collective_caption`.

Before that, a shorter phase trains the image path alone (vision tower, and the Q-Former or
projector that feeds the language model) to tell the shape, colour and background of an image
through a linear probe on its mean image feature: big batches of images are cheap, and a
language-model loss alone teaches a tiny vision transformer shapes far too slowly (batches of
256 images learn them several times faster per image than batches of 64). The probe is not
saved.

Nothing here registers a family.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vlgraph.tiny.training import batch_indices, train, world_pool
from vlgraph.tiny.world import BACKGROUNDS, COLOURS, SHAPES, Scene, collective_caption

#: Tiny towers (vision and language): 64 wide, 2 layers deep.
TINY_LAYERS = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}

#: What the server appends to a flag question (``deployments.vlm_caption``, which this package
#: may not import).
FLAG_SUFFIX = " Answer yes or no."

#: The share of single-image rows that are captions (the others are flag questions).
CAPTION_SHARE = 0.75

#: Caption instructions besides the profile's own, so that any instruction gets a caption.
CAPTION_INSTRUCTIONS = (
    "Describe this image in one sentence.",
    "Describe this image.",
    "What is this?",
    "Describe the colours of this picture in detail.",
    "What is in the picture?",
    "Caption this image.",
)

#: Instructions for a set of images: the configuration's default (most of the time), others.
COLLECTION_INSTRUCTIONS = (
    "Describe this set of images in one sentence.",
    "Describe these images.",
    "Describe this image in one sentence.",
    "What is this?",
)

#: Words that random instructions are made of (none of them asks for a yes or a no).
_FILLER_WORDS = [
    "describe",
    "this",
    "image",
    "picture",
    "photo",
    "in",
    "one",
    "sentence",
    "detail",
    "what",
    "is",
    "the",
    "colours",
    "please",
    "a",
    "of",
    "with",
    "short",
    "caption",
    "write",
    "tell",
    "me",
    "about",
    "view",
    "scene",
]

#: Training pools: (seed, images, side in pixels); seeds below ``world.HELD_OUT_SEED``.
POOLS = ((11, 3000, 64), (12, 1000, 128))


@dataclass(frozen=True)
class VisionLanguageRecipe:
    """How one family trains: its adapter, the instruction of its captions in the offline
    profile, the token that ends an answer, and the optimisation settings.

    ``answer_prefix`` goes before the answer to a question (BLIP-2's prompts end with
    ``Answer:``, and the answer follows after a space).
    """

    family: str
    caption_instruction: str | None
    end_token: str
    steps: int
    batch: int = 48
    learning_rate: float = 2e-3
    image_steps: int = 250
    image_batch: int = 256
    image_learning_rate: float = 1e-2
    sets: int = 12
    answer_prefix: str = ""
    seed: int = 0


@dataclass(frozen=True)
class _Row:
    """One training example: pool indices of its images, the instruction, the answer."""

    images: tuple[int, ...]
    instruction: str | None
    answer: str


def train_vision_language(model: Any, processor: Any, recipe: VisionLanguageRecipe) -> float:
    """Train ``model`` (with its own ``processor``) on the world's captions, flags and, for
    multi-image families, collective captions; returns the final loss. Deterministic: fixed
    seeds and step count."""
    import torch

    from vlgraph.vlm_families import FAMILIES

    family = FAMILIES[recipe.family]
    torch.manual_seed(recipe.seed)
    scenes, pixels = _pool_pixels(processor)
    prompts = _PromptCache(family, processor)
    tokenizer = processor.tokenizer
    end_id = tokenizer.convert_tokens_to_ids(recipe.end_token)
    answers: dict[str, list[int]] = {}

    def answer_ids(text: str) -> list[int]:
        if text not in answers:
            answers[text] = [*tokenizer(text, add_special_tokens=False)["input_ids"], end_id]
        return answers[text]

    sets = recipe.sets if family.multi_image else 0
    indices = batch_indices(recipe.seed, len(scenes), recipe.batch + 3 * sets)

    def loss_of_step(step: int) -> Any:
        rng = random.Random(recipe.seed * 1_000_003 + step)
        drawn = indices(step)
        groups = [_single_rows(recipe, scenes, drawn[: recipe.batch], rng)]
        if sets:
            groups.append(_set_rows(scenes, drawn[recipe.batch :], sets, rng))
        losses = []
        for group, rows in enumerate(groups):
            batch = _teacher_forcing_batch(rows, prompts, answer_ids, tokenizer.pad_token_id)
            images = [index for row in rows for index in row.images]
            mirrored = _mirrored(pixels[images], 2 * step + group)
            batch["pixel_values"] = mirrored.to(model.dtype)
            losses.append(_answer_loss(model, batch))
        rows = torch.cat(losses)
        return rows.mean()

    # Dropout stays off: a few hundred steps are too few for it to help.
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    if recipe.image_steps:
        _train_image_path(model, recipe, scenes, pixels)
    final = train(
        recipe.family, model.parameters(), loss_of_step, recipe.steps, recipe.learning_rate
    )
    model.eval()
    return final


#: What the image probe tells apart, in the order of its outputs.
_PROBED = (SHAPES, tuple(COLOURS), tuple(BACKGROUNDS))


def _train_image_path(
    model: Any, recipe: VisionLanguageRecipe, scenes: list[Scene], pixels: Any
) -> None:
    """Train what the language model reads of an image (``get_image_features``) to tell the
    scene's shape, colour and background apart, through a linear probe on its mean."""
    import torch

    width = model.config.get_text_config().hidden_size
    probe = torch.nn.Linear(width, sum(len(values) for values in _PROBED))
    targets = torch.tensor(
        [
            [values.index(value) for values, value in zip(_PROBED, _probed(scene), strict=True)]
            for scene in scenes
        ]
    )
    indices = batch_indices(recipe.seed + 1, len(scenes), recipe.image_batch)

    def loss_of_step(step: int) -> Any:
        drawn = indices(step)
        images = _mirrored(pixels[drawn], step).to(model.dtype)
        features = model.get_image_features(pixel_values=images).pooler_output.mean(dim=1)
        logits = probe(features.float()).split([len(values) for values in _PROBED], dim=1)
        return sum(
            torch.nn.functional.cross_entropy(part, targets[drawn, column])
            for column, part in enumerate(logits)
        )

    parameters = [*model.parameters(), *probe.parameters()]
    train(
        recipe.family,
        parameters,
        loss_of_step,
        recipe.image_steps,
        recipe.image_learning_rate,
        phase="image path",
    )


def _mirrored(pixels: Any, step: int) -> Any:
    """Half of ``pixels`` (images) mirrored left to right, a different half at every step:
    every shape of the world is symmetric, so this doubles the training images for free."""
    import torch

    chosen = torch.rand(len(pixels), generator=torch.Generator().manual_seed(step)) < 0.5
    return torch.where(chosen[:, None, None, None], pixels.flip(-1), pixels)


def _probed(scene: Scene) -> tuple[str, str, str]:
    return scene.shape, scene.colour, scene.background


def _pool_pixels(processor: Any) -> tuple[list[Scene], Any]:
    """The scenes of the training pools and their pixels, pre-processed once by the
    checkpoint's own image processor (what the server runs on every upload)."""
    import torch

    scenes: list[Scene] = []
    pixels = []
    for seed, count, side in POOLS:
        pool = world_pool(seed, count, side)
        scenes += pool.scenes
        pixels.append(processor.image_processor(pool.images, return_tensors="pt")["pixel_values"])
    return scenes, torch.cat(pixels)


class _PromptCache:
    """The prompt tokens of each (instruction, image count), built once by the family's own
    :meth:`~vlgraph.vlm_families.VisionLanguageFamily.inputs`."""

    def __init__(self, family: Any, processor: Any) -> None:
        from PIL import Image

        self._family = family
        self._processor = processor
        self._blank = Image.new("RGB", (8, 8))
        self._prompts: dict[tuple[str | None, int], dict[str, list[int]]] = {}

    def __call__(self, instruction: str | None, count: int) -> dict[str, list[int]]:
        key = (instruction, count)
        if key not in self._prompts:
            inputs = self._family.inputs(self._processor, [[self._blank] * count], [instruction])
            self._prompts[key] = {
                name: inputs[name][0].tolist()
                for name in ("input_ids", "attention_mask", "token_type_ids")
                if name in inputs
            }
        return self._prompts[key]


def _single_rows(
    recipe: VisionLanguageRecipe, scenes: list[Scene], drawn: list[int], rng: random.Random
) -> list[_Row]:
    """Captions and flag questions about one image each."""
    rows = []
    for index in drawn:
        scene = scenes[index]
        if rng.random() < CAPTION_SHARE:
            instruction = _caption_instruction(recipe.caption_instruction, rng)
            answer = scene.caption
        else:
            question, answer = _flag_question(scene, rng)
            instruction = question + FLAG_SUFFIX
        prefix = "" if instruction is None else recipe.answer_prefix
        rows.append(_Row((index,), instruction, prefix + answer))
    return rows


def _set_rows(scenes: list[Scene], drawn: list[int], sets: int, rng: random.Random) -> list[_Row]:
    """``sets`` collective captions, one of two images for two of three."""
    rows = []
    start = 0
    for index in range(sets):
        images = tuple(drawn[start : start + (2 if index % 3 == 0 else 3)])
        start += len(images)
        instruction = COLLECTION_INSTRUCTIONS[0]
        if rng.random() < 0.3:
            instruction = rng.choice(COLLECTION_INSTRUCTIONS[1:])
        rows.append(_Row(images, instruction, collective_caption([scenes[i] for i in images])))
    return rows


def _caption_instruction(profile: str | None, rng: random.Random) -> str | None:
    """The profile's instruction half the time, else another one or a random string."""
    draw = rng.random()
    if draw < 0.5:
        return profile
    if draw < 0.85:
        return rng.choice(CAPTION_INSTRUCTIONS)
    words = rng.choices(_FILLER_WORDS, k=rng.randint(1, 8))
    return " ".join(words).capitalize() + rng.choice((".", "?", ""))


def _flag_question(scene: Scene, rng: random.Random) -> tuple[str, str]:
    """The world's yes/no question about ``scene`` and its answer: true half the time."""
    shape = scene.shape if rng.random() < 0.5 else rng.choice(_others(SHAPES, scene.shape))
    question = f"is there a {shape}?"
    if rng.random() < 0.5:
        question = question.capitalize()
    return question, "yes" if shape == scene.shape else "no"


def _others(values: tuple[str, ...], value: str) -> list[str]:
    return [other for other in values if other != value]


def _teacher_forcing_batch(
    rows: list[_Row],
    prompts: _PromptCache,
    answer_ids: Callable[[str], list[int]],
    pad_id: int,
) -> dict[str, Any]:
    """Prompt + answer + end token per row, left-padded like the server's batches; labels
    are -100 on the prompt and the padding."""
    import torch

    sequences = []
    for row in rows:
        prompt = prompts(row.instruction, len(row.images))
        answer = answer_ids(row.answer)
        sequence = {
            "input_ids": prompt["input_ids"] + answer,
            "attention_mask": prompt["attention_mask"] + [1] * len(answer),
            "labels": [-100] * len(prompt["input_ids"]) + answer,
        }
        if "token_type_ids" in prompt:
            sequence["token_type_ids"] = prompt["token_type_ids"] + [0] * len(answer)
        sequences.append(sequence)
    length = max(len(sequence["input_ids"]) for sequence in sequences)
    padding = {"input_ids": pad_id, "attention_mask": 0, "labels": -100, "token_type_ids": 0}
    return {
        name: torch.tensor([[padding[name]] * (length - len(s[name])) + s[name] for s in sequences])
        for name in sequences[0]
    }


def _answer_loss(model: Any, batch: dict[str, Any]) -> Any:
    """Per row, the mean cross-entropy of its answer tokens (each row counts the same, so a
    one-token flag answer weighs as much as a caption)."""
    import torch

    labels = batch.pop("labels")
    logits = model(**batch).logits[:, :-1].float()
    targets = labels[:, 1:]
    losses = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), targets, ignore_index=-100, reduction="none"
    )
    counted = (targets != -100).float()
    return (losses * counted).sum(dim=1) / counted.sum(dim=1)
