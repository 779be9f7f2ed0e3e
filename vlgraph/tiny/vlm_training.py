"""Training the instruction-following families (BLIP-2, Gemma 3, InternVL, SmolVLM) on the world.

The prompts come from the family the server derives from the checkpoint
(:func:`vlgraph.vlm_families.derive_family`, through its ``inputs``), exactly as the server
builds them; the answer and the family's end token are appended for teacher forcing, and the
loss reads the answer only. The image side is what the checkpoint's processor gives the model,
in its layout: one entry per image (BLIP-2, Gemma 3, InternVL: ``pixel_values`` of shape
(images, C, H, W)) or one per prompt (Idefics3: ``pixel_values`` of shape
(prompts, images, C, H, W), zero-padded, with its ``pixel_attention_mask``); a check against
the processor's own batch at the start of training holds the assembled batches to it. Each step
mixes three tasks:

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
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
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
    """How one family trains: its name (shown by the progress bars), the instruction of its
    captions in the offline profile, the token that ends an answer, and the optimisation
    settings. The prompt format is not part of it: it is the one the server derives from the
    checkpoint.

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

    family = served_family(model, processor)
    torch.manual_seed(recipe.seed)
    scenes, images = _pool_images(family, processor)
    prompts = _PromptCache(family, processor)
    _check_against_the_processor(family, processor, images, prompts)
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
            batch |= images.batch([row.images for row in rows], model.dtype, 2 * step + group)
            losses.append(_answer_loss(model, batch))
        rows = torch.cat(losses)
        return rows.mean()

    # Dropout stays off: a few hundred steps are too few for it to help.
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    if recipe.image_steps:
        _train_image_path(model, recipe, scenes, images)
    final = train(
        recipe.family, model.parameters(), loss_of_step, recipe.steps, recipe.learning_rate
    )
    model.eval()
    return final


def served_family(model: Any, processor: Any) -> Any:
    """The :class:`~vlgraph.vlm_families.VisionLanguageFamily` the server derives from this
    checkpoint: its config and processor saved into a scratch folder and read back by
    :func:`~vlgraph.vlm_families.derive_family`, as a replica reads the saved checkpoint."""
    from vlgraph.vlm_families import derive_family

    with tempfile.TemporaryDirectory(prefix="vlgraph-family-") as folder:
        model.config.save_pretrained(folder)
        processor.save_pretrained(folder)
        return derive_family(Path(folder), "chat")


#: What the image probe tells apart, in the order of its outputs.
_PROBED = (SHAPES, tuple(COLOURS), tuple(BACKGROUNDS))


def _train_image_path(
    model: Any, recipe: VisionLanguageRecipe, scenes: list[Scene], images: _PoolImages
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
        inputs = images.batch([(index,) for index in drawn], model.dtype, step)
        features = _mean_per_image(model.get_image_features(**inputs).pooler_output)
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


def _mean_per_image(features: Any) -> Any:
    """The mean image feature of each image, from ``get_image_features``' pooled output: a
    tensor (images, tokens, width), or one (tokens, width) tensor per prompt of one image
    (Idefics3)."""
    import torch

    if isinstance(features, list | tuple):
        return torch.stack([image.mean(dim=0) for image in features])
    return features.mean(dim=1)


def _mirrored(tensor: Any, chosen: Any) -> Any:
    """``tensor`` (one entry per image) with the ``chosen`` images mirrored left to right;
    unchanged unless its entries are images or masks (height and width last)."""
    import torch

    if tensor.dim() < 3:
        return tensor
    return torch.where(chosen.view(-1, *[1] * (tensor.dim() - 1)), tensor.flip(-1), tensor)


def _probed(scene: Scene) -> tuple[str, str, str]:
    return scene.shape, scene.colour, scene.background


#: The inputs of a processor's batch that are not the image side.
_TEXT_INPUTS = frozenset({"input_ids", "attention_mask", "token_type_ids"})


class _PoolImages:
    """The image inputs of the training pools, pre-processed once, one entry per image, and
    assembled per batch in the layout of the processor's batches: entries in a row
    (``per_prompt`` false), or grouped by prompt and padded with zeros (``per_prompt``)."""

    def __init__(self, tensors: dict[str, Any], per_prompt: bool) -> None:
        self._tensors = tensors
        self._per_prompt = per_prompt

    def batch(self, prompts: Sequence[tuple[int, ...]], dtype: Any, step: int | None) -> dict:
        """The image inputs of a batch whose prompt ``i`` shows the pool images
        ``prompts[i]``, ``pixel_values`` in ``dtype``. Every shape of the world is symmetric:
        half of the images are mirrored left to right, a different half at every ``step``
        (none when it is None), which doubles the training images for free."""
        import torch

        shown = [index for images in prompts for index in images]
        chosen = None
        if step is not None:
            chosen = torch.rand(len(shown), generator=torch.Generator().manual_seed(step)) < 0.5
        inputs = {}
        for name, tensor in self._tensors.items():
            picked = tensor[shown]
            if chosen is not None:
                picked = _mirrored(picked, chosen)
            if self._per_prompt:
                picked = _grouped(picked, [len(images) for images in prompts])
            inputs[name] = picked
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        return inputs


def _grouped(tensor: Any, counts: list[int]) -> Any:
    """Entries of ``tensor`` grouped ``counts[i]`` to row ``i``, rows padded with zeros."""
    grouped = tensor.new_zeros((len(counts), max(counts), *tensor.shape[1:]))
    start = 0
    for row, count in enumerate(counts):
        grouped[row, :count] = tensor[start : start + count]
        start += count
    return grouped


def _checked_prompts(family: Any) -> list[tuple[int, ...]]:
    """The pool images of the batch that holds training to the processor's own: two images
    and one, or one and one for a family that reads one image per prompt."""
    return [(0, 1), (2,)] if family.multi_image else [(0,), (1,)]


def _processor_batch(family: Any, processor: Any, prompts: list[tuple[int, ...]]) -> Any:
    """What the server gives the model for captions of the first pool's images ``prompts``."""
    images = world_pool(*POOLS[0]).images
    shown = [[images[index] for index in indices] for indices in prompts]
    return family.inputs(processor, shown, [None] * len(shown))


def _pool_images(family: Any, processor: Any) -> tuple[list[Scene], _PoolImages]:
    """The scenes of the training pools and their image inputs, pre-processed once by the
    checkpoint's own image processor (what the server runs on every upload), in the layout
    that the processor's batches have."""
    import torch

    prompts = _checked_prompts(family)
    expected = _processor_batch(family, processor, prompts)
    per_prompt = family.multi_image and len(expected["pixel_values"]) == len(prompts)
    scenes: list[Scene] = []
    parts = []
    for seed, count, side in POOLS:
        pool = world_pool(seed, count, side)
        scenes += pool.scenes
        # A processor that groups images by prompt is given one prompt per image.
        given = [[image] for image in pool.images] if per_prompt else pool.images
        processed = processor.image_processor(given, return_tensors="pt")
        processed = {name: value for name, value in processed.items() if name in expected}
        if per_prompt:
            if processed["pixel_values"].shape[1] != 1:
                raise RuntimeError(
                    f"{family.name}: the image processor splits each image into "
                    f"{processed['pixel_values'].shape[1]} tiles; training mirrors whole "
                    "images and takes one tile each (save it without image splitting)"
                )
            processed = {name: value[:, 0] for name, value in processed.items()}
        parts.append(processed)
    tensors = {name: torch.cat([part[name] for part in parts]) for name in parts[0]}
    return scenes, _PoolImages(tensors, per_prompt)


def _check_against_the_processor(
    family: Any, processor: Any, images: _PoolImages, prompts: _PromptCache
) -> None:
    """Raise unless training assembles a batch of captions exactly as the processor does:
    the same image inputs, the same prompt tokens."""
    import torch

    shown = _checked_prompts(family)
    expected = _processor_batch(family, processor, shown)
    assembled = images.batch(shown, expected["pixel_values"].dtype, None)
    image_inputs = {name for name in expected if name not in _TEXT_INPUTS}
    if set(assembled) != image_inputs or not all(
        torch.equal(assembled[name], expected[name]) for name in image_inputs
    ):
        raise RuntimeError(
            f"{family.name}: training assembles image inputs "
            f"{ {name: tuple(value.shape) for name, value in assembled.items()} } "
            "that differ from the processor's "
            f"{ {name: tuple(expected[name].shape) for name in image_inputs} }"
        )
    for row, indices in enumerate(shown):
        tokens = expected["input_ids"][row][expected["attention_mask"][row].bool()].tolist()
        if tokens != prompts(None, len(indices))["input_ids"]:
            raise RuntimeError(
                f"{family.name}: the processor's prompt for pool images differs from the one "
                "training caches for any image (do its image tokens depend on the size?)"
            )


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
