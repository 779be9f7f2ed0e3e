"""Family adapters on tiny checkpoints: load, prompt, batch, decode and yes/no answer tokens."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from deployments.vlm_caption import VisionLanguageCaptioner
from tests.support.common import jpeg_bytes, noise_image, world_image, world_scene
from vlgraph.config import VisionLanguageConfig
from vlgraph.messages import CaptionRequest, FlagRequest
from vlgraph.tiny import ensure_checkpoint
from vlgraph.vlm_families import (
    FAMILIES,
    UnsupportedModelError,
    VisionLanguageFamily,
    checked_family,
    derive_family,
)

INSTRUCTIONS = [None, "What is this?", "Describe the colours of this picture in detail."]
#: The offline profile's instruction for a set of images.
SET_INSTRUCTION = VisionLanguageConfig.model_fields["collection_instruction"].default


@dataclass(frozen=True)
class Loaded:
    """A family with its tiny checkpoint loaded."""

    family: VisionLanguageFamily
    folder: Path
    processor: Any
    model: Any

    def generate(self, images: list[list[Any]], instructions: list[str | None]) -> list[str]:
        """Greedy texts of one batch."""
        inputs = self.family.inputs(self.processor, images, instructions)
        assert inputs["input_ids"].device.type == "cpu"
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=8, do_sample=False)
        texts = self.family.decode(self.processor, output, inputs)
        assert len(texts) == len(instructions)
        return texts


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def loaded(request: pytest.FixtureRequest, checkpoint_cache: Path) -> Loaded:
    family = FAMILIES[request.param]
    folder = ensure_checkpoint(family.name, checkpoint_cache)
    processor, model = family.load(folder, torch.float32, torch.device("cpu"))
    return Loaded(family, folder, processor, model)


def test_families_and_their_image_arity() -> None:
    assert set(FAMILIES) == {"blip2", "gemma3", "internvl"}
    assert {name: family.multi_image for name, family in FAMILIES.items()} == {
        "blip2": False,
        "gemma3": True,
        "internvl": True,
    }
    assert all(name == family.name for name, family in FAMILIES.items())


def test_the_family_derived_from_the_checkpoint_is_the_dedicated_one(loaded: Loaded) -> None:
    """Stop tokens from the chat template, the image arity from the architecture: what the
    dedicated adapters spelled out by hand."""
    assert derive_family(loaded.folder) == loaded.family
    assert checked_family(loaded.folder, "auto", "m") == loaded.family
    assert checked_family(loaded.folder, loaded.family.name, "m") == loaded.family


def test_a_family_the_checkpoint_is_not_is_refused_naming_both(checkpoint_cache: Path) -> None:
    folder = ensure_checkpoint("gemma3", checkpoint_cache)
    with pytest.raises(UnsupportedModelError, match=r"says family 'internvl'.*'gemma3' checkpoint"):
        checked_family(folder, "internvl", "mine")


def test_a_checkpoint_without_a_chat_template_cannot_chat(checkpoint_cache: Path) -> None:
    folder = ensure_checkpoint("blip-caption", checkpoint_cache)
    with pytest.raises(UnsupportedModelError, match="'blip' checkpoint has no chat template"):
        derive_family(folder)


def test_an_architecture_auto_classes_do_not_load_as_saved_is_refused(
    tmp_path: Path, checkpoint_cache: Path
) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UnsupportedModelError, match=r"'bert' checkpoint.*image-text-to-text"):
        derive_family(tmp_path)
    vqa = ensure_checkpoint("blip-vqa", checkpoint_cache)
    with pytest.raises(UnsupportedModelError, match=r"BlipForQuestionAnswering \(blip\)"):
        derive_family(vqa, "caption")
    with pytest.raises(UnsupportedModelError, match=r"config\.json cannot be read"):
        derive_family(tmp_path / "missing")


def test_tiny_checkpoint_has_the_standard_layout(loaded: Loaded) -> None:
    names = {path.name for path in loaded.folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= names
    assert ("chat_template.jinja" in names) == loaded.family.multi_image
    generation = json.loads((loaded.folder / "generation_config.json").read_text())
    assert generation["do_sample"] is False
    assert sum(path.stat().st_size for path in loaded.folder.iterdir()) < 2_000_000
    assert not loaded.model.training
    assert loaded.model.dtype == torch.float32
    assert loaded.processor.tokenizer.padding_side == "left"


def test_greedy_generation_decodes_text(loaded: Loaded) -> None:
    (text,) = loaded.generate([[noise_image(0)]], [None])
    assert isinstance(text, str)
    assert text == text.strip()


def test_different_images_give_different_text(loaded: Loaded) -> None:
    first = loaded.generate([[world_image(0)]], [None])
    second = loaded.generate([[world_image(1)]], [None])
    assert first != second


def test_left_padded_batch_equals_single_items(loaded: Loaded) -> None:
    images = [[noise_image(seed)] for seed in range(len(INSTRUCTIONS))]
    inputs = loaded.family.inputs(loaded.processor, images, INSTRUCTIONS)
    # BLIP-2's processor puts the query-token placeholders before the (left) padding.
    assert (inputs["attention_mask"] == 0).any(), "prompts of different lengths pad"
    assert (inputs["attention_mask"][:, -1] == 1).all(), "padding is on the left"
    batched = loaded.generate(images, INSTRUCTIONS)
    singles = [
        loaded.generate([item], [instruction])[0]
        for item, instruction in zip(images, INSTRUCTIONS, strict=True)
    ]
    assert batched == singles


def test_first_answer_token_logits_do_not_depend_on_the_batch(loaded: Loaded) -> None:
    images = [[noise_image(seed)] for seed in range(len(INSTRUCTIONS))]
    yes, no = loaded.family.answer_token_ids(loaded.processor)

    def last_logits(items: list[list[Any]], instructions: list[str | None]) -> torch.Tensor:
        inputs = loaded.family.inputs(loaded.processor, items, instructions)
        with torch.inference_mode():
            return loaded.model(**inputs).logits[:, -1, :][:, yes + no]

    batched = last_logits(images, INSTRUCTIONS)
    for row, (item, instruction) in enumerate(zip(images, INSTRUCTIONS, strict=True)):
        torch.testing.assert_close(batched[row], last_logits([item], [instruction])[0])


def test_several_images_in_one_prompt(loaded: Loaded) -> None:
    """Both images reach the model: asked about the set, it names the colour of each (a purple
    circle and a blue star), where one image gets one colour."""
    two = [[world_image(0), world_image(1)]]
    if not loaded.family.multi_image:
        with pytest.raises(ValueError, match="one image"):
            loaded.family.inputs(loaded.processor, two, [None])
        return
    inputs = loaded.family.inputs(loaded.processor, two, [None])
    assert inputs["pixel_values"].shape[0] == 2, "one tile per image"
    one = [[world_image(0)]]
    [together] = loaded.generate(two, [SET_INSTRUCTION])
    colours = [world_scene(index).colour for index in (0, 1)]
    assert all(colour in together.split() for colour in colours), together
    assert colours[1] not in loaded.generate(one, [SET_INSTRUCTION])[0].split()
    mixed = loaded.generate([*two, *one], ["What is this?", None])
    assert mixed == [*loaded.generate(two, ["What is this?"]), *loaded.generate(one, [None])]


def test_answer_tokens_are_disjoint_and_single_tokens(loaded: Loaded) -> None:
    yes, no = loaded.family.answer_token_ids(loaded.processor)
    assert yes
    assert no
    assert not set(yes) & set(no)
    tokenizer = loaded.processor.tokenizer
    for word in ("yes", "Yes", "no", "No"):
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, word
        assert ids[0] in (yes if word.lower() == "yes" else no)


def test_generation_stops_at_the_end_of_a_turn(loaded: Loaded) -> None:
    eos = loaded.model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else eos
    vocabulary = loaded.processor.tokenizer.get_vocab()
    stop = {"gemma3": "<end_of_turn>", "internvl": "<|im_end|>"}.get(loaded.family.name)
    if stop is not None:
        assert vocabulary[stop] in eos
    assert loaded.model.generation_config.pad_token_id is not None


def test_blip2_prompts_question_and_answer(checkpoint_cache: Path) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(ensure_checkpoint("blip2", checkpoint_cache))
    inputs = FAMILIES["blip2"].inputs(
        processor, [[noise_image(0)], [noise_image(1)]], ["Is it red?", None]
    )
    prompts = processor.tokenizer.batch_decode(inputs["input_ids"], skip_special_tokens=True)
    assert prompts[0].strip() == "Question: Is it red? Answer:"
    assert prompts[1].strip() == ""


def test_builder_is_deterministic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Gemma 3's recipe, cut to a few steps, gives the same bytes twice."""
    import dataclasses

    import vlgraph.tiny.gemma3 as gemma3

    short = dataclasses.replace(gemma3.TRAINING, steps=6, image_steps=6)
    monkeypatch.setattr(gemma3, "TRAINING", short)
    first = ensure_checkpoint("gemma3", tmp_path / "first")
    second = ensure_checkpoint("gemma3", tmp_path / "second")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_prompt_past_the_context_length_fails_alone_with_both_numbers(
    name: str, checkpoint_cache: Path
) -> None:
    """The limit is the language model's ``max_position_embeddings`` less the tokens to
    generate; the prompt counts its image tokens. A prompt exactly at the limit captions; one
    token more gets a 422 naming both numbers, and its neighbours still get captions."""
    new_tokens = 4
    config = VisionLanguageConfig(
        family=name,
        source=f"tiny:{name}",
        device="cpu",
        generation={"max_new_tokens": new_tokens},
    )
    captioner = VisionLanguageCaptioner(config, str(checkpoint_cache), name)
    family, processor = FAMILIES[name], captioner._processor
    limit = captioner._model.config.get_text_config().max_position_embeddings
    image = noise_image(1)

    def words(count: int) -> str:
        return " ".join(["red"] * count)

    def prompt_tokens(count: int) -> int:
        inputs = family.inputs(processor, [[image]], [words(count)])
        return family.prompt_tokens(inputs)[0]

    low, high = 1, limit  # the largest word count whose prompt leaves room for the answer
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (
            (middle, high) if prompt_tokens(middle) + new_tokens <= limit else (low, middle - 1)
        )
    assert prompt_tokens(low) + new_tokens == limit, "one token per word reaches the limit"
    data = jpeg_bytes(image)
    within, too_long, plain = captioner.caption_now(
        [
            CaptionRequest(image=data, prompt=words(low)),
            CaptionRequest(image=data, prompt=words(low + 1)),
            CaptionRequest(image=data),
        ]
    )
    assert within.error is None and isinstance(within.caption, str)
    assert plain.error is None and isinstance(plain.caption, str)
    assert too_long.caption is None
    assert (too_long.error.status, too_long.error.code) == (422, "prompt_too_long_for_model")
    assert too_long.error.message == (
        f"the prompt takes {prompt_tokens(low + 1)} tokens with its image; {name} reads at most "
        f"{limit} including the {new_tokens} it generates; shorten it"
    )
    [flag] = captioner.flag_now([FlagRequest(images=(data,), question=words(limit))])
    assert flag.flagged is None and flag.error.status == 422
    assert f"{name} reads at most {limit};" in flag.error.message
