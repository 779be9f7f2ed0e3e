"""Architectures no code of vlgraph names, served through the family derived from their
checkpoints (tiny): Qwen2.5-VL, SmolVLM (Idefics3) and LLaVA-OneVision through their chat
templates, PaliGemma (no chat template) through its caption prefix. What is checked here is how
they are prompted, batched and stopped, on noise images; what SmolVLM's checkpoint (trained on
the world, the others are random) says is checked in tests/semantic/test_named_chat_meaning.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support.common import noise_image
from vlgraph.messages import ChatPart, ChatTurn
from vlgraph.tiny import ensure_checkpoint
from vlgraph.vlm_families import (
    ChatTemplateFamily,
    PrefixFamily,
    UnsupportedModelError,
    VisionLanguageFamily,
    derive_family,
)

#: Tiny builder -> (model type, the token that ends an assistant's turn).
CHAT_ARCHITECTURES = {
    "qwen2_5_vl": ("qwen2_5_vl", "<|im_end|>"),
    "smolvlm": ("idefics3", "<end_of_utterance>"),
    "llava_onevision": ("llava_onevision", "<|im_end|>"),
}
INSTRUCTIONS = [None, "What is this?", "Describe the colours of this picture in detail."]


@dataclass(frozen=True)
class Loaded:
    """A derived family with its checkpoint loaded."""

    family: VisionLanguageFamily
    processor: Any
    model: Any

    def generate(self, images: list[list[Any]], instructions: list[str | None]) -> list[str]:
        inputs = self.family.inputs(self.processor, images, instructions)
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=6, do_sample=False)
        return self.family.decode(self.processor, output, inputs)

    def chat(self, conversations: list[Any]) -> list[str]:
        inputs = self.family.chat_inputs(self.processor, conversations)
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=6, do_sample=False)
        return self.family.decode(self.processor, output, inputs)


def turn(role: Any, text: str) -> ChatTurn:
    return ChatTurn(role, (ChatPart("text", text),))


def load(name: str, task: str, cache: Path) -> Loaded:
    folder = ensure_checkpoint(name, cache)
    family = derive_family(folder, task)
    processor, model = family.load(folder, torch.float32, torch.device("cpu"))
    return Loaded(family, processor, model)


@pytest.fixture(scope="module", params=sorted(CHAT_ARCHITECTURES))
def chat_model(request: pytest.FixtureRequest, checkpoint_cache: Path) -> Loaded:
    return load(request.param, "chat", checkpoint_cache)


def test_the_family_comes_from_the_checkpoint(chat_model: Loaded) -> None:
    family = chat_model.family
    stop = dict(CHAT_ARCHITECTURES.values())[family.name]
    assert isinstance(family, ChatTemplateFamily) and family.multi_image
    assert family.stop_tokens == (stop,)
    eos = chat_model.model.generation_config.eos_token_id
    stop_id = chat_model.processor.tokenizer.convert_tokens_to_ids(stop)
    assert stop_id in (eos if isinstance(eos, list) else [eos])
    assert chat_model.processor.tokenizer.padding_side == "left"


def test_a_batch_equals_its_items_alone(chat_model: Loaded) -> None:
    images = [[noise_image(seed)] for seed in range(len(INSTRUCTIONS))]
    batched = chat_model.generate(images, INSTRUCTIONS)
    singles = [
        chat_model.generate([item], [instruction])[0]
        for item, instruction in zip(images, INSTRUCTIONS, strict=True)
    ]
    assert batched == singles


def test_several_images_in_one_prompt_batch_with_one(chat_model: Loaded) -> None:
    two, one = [noise_image(3), noise_image(4)], [noise_image(5)]
    mixed = chat_model.generate([two, one], ["What is this?", None])
    assert mixed == [
        *chat_model.generate([two], ["What is this?"]),
        *chat_model.generate([one], [None]),
    ]
    swapped = chat_model.generate([[two[1], two[0]]], ["What is this?"])
    inputs = chat_model.family.inputs(chat_model.processor, [two], ["What is this?"])
    swapped_inputs = chat_model.family.inputs(
        chat_model.processor, [[two[1], two[0]]], ["What is this?"]
    )
    assert not torch.equal(inputs["pixel_values"], swapped_inputs["pixel_values"])
    assert isinstance(swapped[0], str)


def test_conversations_with_turns_and_without_images(chat_model: Loaded) -> None:
    turns = (
        turn("system", "You answer briefly."),
        ChatTurn("user", (ChatPart("image"), ChatPart("text", "What is this?"))),
        turn("assistant", "a shape"),
        turn("user", "And its colour?"),
    )
    with_image = chat_model.chat([(turns, [noise_image(6)])])
    assert isinstance(with_image[0], str)
    text_only = (turn("user", "hello"),)
    assert (
        chat_model.chat([(text_only, []), (text_only, [])])
        == chat_model.chat([(text_only, [])]) * 2
    )


def test_paligemma_captions_after_its_prefix_and_cannot_chat(checkpoint_cache: Path) -> None:
    folder = ensure_checkpoint("paligemma", checkpoint_cache)
    with pytest.raises(UnsupportedModelError, match="no chat template, so it cannot chat"):
        derive_family(folder, "chat")
    loaded = load("paligemma", "caption", checkpoint_cache)
    assert isinstance(loaded.family, PrefixFamily) and not loaded.family.chats
    images = [[noise_image(seed)] for seed in range(3)]
    prefixes = ["caption en", "caption en", "answer en what colour is it?"]
    batched = loaded.generate(images, prefixes)
    assert batched == [
        loaded.generate([item], [prefix])[0] for item, prefix in zip(images, prefixes, strict=True)
    ]
    with pytest.raises(ValueError, match="one image"):
        loaded.family.inputs(loaded.processor, [[noise_image(1), noise_image(2)]], [None])
