"""How to load, prompt and decode each vision-language model family the server runs.

A :class:`VisionLanguageFamily` hides what differs between BLIP-2 (OPT), Gemma 3 and
InternVL 3: the prompt format, how images are passed, the stop tokens, and which tokens start
a "yes" or a "no" answer. The same code loads a tiny checkpoint from
:mod:`vlgraph.tiny` and a real Hub snapshot.

Usage::

    family = FAMILIES["gemma3"]
    processor, model = family.load(path, torch.float32, torch.device("cpu"))
    inputs = family.inputs(processor, [[image]], ["What is this?"])
    output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    texts = family.decode(processor, output, inputs)

Transformers is imported lazily: importing this module only needs torch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from PIL import Image
    from transformers import BatchFeature

    from vlgraph.messages import ChatTurn

#: A conversation as a family reads it: its messages and its images in order of appearance.
Conversation = tuple[tuple["ChatTurn", ...], list["Image.Image"]]

#: The instruction of an item that has none, for the chat families (plain captioning).
DEFAULT_INSTRUCTION = "Describe this image."


@dataclass(frozen=True)
class VisionLanguageFamily:
    """One model family: loading, batched prompts, decoding and yes/no answer tokens.

    ``multi_image`` tells whether one prompt may show several images.
    """

    name: str
    multi_image: bool

    def load(self, path: Path, dtype: torch.dtype, device: torch.device) -> tuple[Any, Any]:
        """(processor, model) from a checkpoint folder or hub snapshot path.

        The model is in eval mode on ``device``, with a greedy generation config that stops
        on the family's end-of-turn tokens; the tokenizer pads on the left.
        """
        from transformers import AutoModelForImageTextToText

        processor = self._load_processor(Path(path))
        processor.tokenizer.padding_side = "left"
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
        model = model.to(device).eval()
        _make_generation_greedy(model.generation_config, processor.tokenizer, self._stop_tokens())
        return processor, model

    def inputs(
        self,
        processor: Any,
        images: list[list[Image.Image]],
        instructions: list[str | None],
    ) -> BatchFeature:
        """One left-padded batch: item i shows ``images[i]`` and asks ``instructions[i]``.

        ``None`` asks for a plain caption. The prompt ends where the answer starts. Tensors
        are on the CPU; the caller moves them and casts ``pixel_values`` to the model dtype.
        """
        if len(images) != len(instructions):
            raise ValueError(f"{len(images)} image lists for {len(instructions)} instructions")
        if not images:
            raise ValueError("an empty batch")
        for item_images in images:
            if not item_images:
                raise ValueError("every item needs at least one image")
            if len(item_images) > 1 and not self.multi_image:
                raise ValueError(f"{self.name} takes one image per prompt")
        processor.tokenizer.padding_side = "left"
        return self._inputs(processor, images, instructions)

    def chat_inputs(self, processor: Any, conversations: list[Conversation]) -> BatchFeature:
        """One left-padded batch of conversations, each prompt ending where the model's reply
        starts. Every conversation shows at least one image, or none does."""
        if not conversations:
            raise ValueError("an empty batch")
        counts = [len(images) for _, images in conversations]
        if any(counts) and not all(counts):
            raise ValueError("a batch mixes conversations with and without images")
        if not self.multi_image and any(count > 1 for count in counts):
            raise ValueError(f"{self.name} takes one image per conversation")
        processor.tokenizer.padding_side = "left"
        return self._chat_inputs(processor, conversations)

    def decode(self, processor: Any, output_ids: torch.Tensor, inputs: BatchFeature) -> list[str]:
        """Only the newly generated text of each row, special tokens skipped, stripped."""
        output_ids = output_ids.cpu()
        prompt_ids = inputs["input_ids"].cpu().to(output_ids.dtype)
        prompt_length = prompt_ids.shape[1]
        # All three families return the prompt followed by the new tokens; stay correct for
        # a model that returns only the new ones.
        if output_ids.shape[1] >= prompt_length and torch.equal(
            output_ids[:, :prompt_length], prompt_ids
        ):
            output_ids = output_ids[:, prompt_length:]
        texts = processor.tokenizer.batch_decode(output_ids, skip_special_tokens=True)
        return [text.strip() for text in texts]

    def prompt_tokens(self, inputs: BatchFeature) -> list[int]:
        """Per row of :meth:`inputs`, the positions its prompt takes in the language model:
        text and image tokens, padding left out. Generation adds its new tokens after them."""
        return [int(count) for count in inputs["attention_mask"].sum(dim=1).tolist()]

    def answer_token_ids(self, processor: Any) -> tuple[list[int], list[int]]:
        """Token ids that start a "yes" answer and a "no" answer (disjoint, sorted).

        Score yes/no by comparing the logits of these ids at the first answer position.
        """
        from vlgraph.flags import NO_WORDS, YES_WORDS, answer_token_ids

        yes, no = (
            set(answer_token_ids(processor.tokenizer, words)) for words in (YES_WORDS, NO_WORDS)
        )
        shared = yes & no
        return sorted(yes - shared), sorted(no - shared)

    # Family-specific parts, overridden by the subclasses below.

    def _load_processor(self, path: Path) -> Any:
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path)

    def _stop_tokens(self) -> tuple[str, ...]:
        return ()

    def _inputs(
        self, processor: Any, images: list[list[Image.Image]], instructions: list[str | None]
    ) -> BatchFeature:
        raise NotImplementedError

    def _chat_inputs(self, processor: Any, conversations: list[Conversation]) -> BatchFeature:
        raise NotImplementedError


@dataclass(frozen=True)
class _Blip2Family(VisionLanguageFamily):
    """BLIP-2: ``Question: ... Answer:`` prompts, no text at all for captions."""

    def _inputs(
        self, processor: Any, images: list[list[Image.Image]], instructions: list[str | None]
    ) -> BatchFeature:
        # An empty text is just the BOS token: what generate() starts from without a prompt.
        texts = [
            "" if instruction is None else f"Question: {instruction} Answer:"
            for instruction in instructions
        ]
        return processor(
            images=[item_images[0] for item_images in images],
            text=texts,
            padding=True,
            return_tensors="pt",
        )

    def _chat_inputs(self, processor: Any, conversations: list[Conversation]) -> BatchFeature:
        if not all(images for _, images in conversations):
            raise ValueError("BLIP-2 answers about an image: every conversation needs one")
        return processor(
            images=[images[0] for _, images in conversations],
            text=[_blip2_dialogue(turns) for turns, _ in conversations],
            padding=True,
            return_tensors="pt",
        )


def _blip2_dialogue(turns: tuple[ChatTurn, ...]) -> str:
    """BLIP-2's own format for a dialogue: ``Question: ... Answer: ...`` turns, the system
    message first, ending with ``Answer:``; one user message without text is a plain caption."""
    if len(turns) == 1 and turns[0].role == "user" and not turns[0].text.strip():
        return ""
    lines = []
    for turn in turns:
        text = turn.text.strip()
        if turn.role == "user":
            lines.append(f"Question: {text} Answer:")
        elif text:
            lines.append(text)
    return " ".join(lines)


@dataclass(frozen=True)
class _ChatFamily(VisionLanguageFamily):
    """Chat-template families (Gemma 3, InternVL): images first, then the instruction."""

    stop_tokens: tuple[str, ...] = ()

    def _stop_tokens(self) -> tuple[str, ...]:
        return self.stop_tokens

    def _inputs(
        self, processor: Any, images: list[list[Image.Image]], instructions: list[str | None]
    ) -> BatchFeature:
        texts = [
            processor.apply_chat_template(
                [_user_message(len(item_images), instruction)],
                tokenize=False,
                add_generation_prompt=True,
            )
            for item_images, instruction in zip(images, instructions, strict=True)
        ]
        # The chat template writes the BOS token itself where the family has one.
        return processor(
            images=[list(item_images) for item_images in images],
            text=texts,
            padding=True,
            add_special_tokens=False,
            return_tensors="pt",
        )

    def _chat_inputs(self, processor: Any, conversations: list[Conversation]) -> BatchFeature:
        texts = [
            processor.apply_chat_template(
                [_template_message(turn) for turn in turns],
                tokenize=False,
                add_generation_prompt=True,
            )
            for turns, _ in conversations
        ]
        images = [list(images) for _, images in conversations]
        return processor(
            images=images if any(images) else None,
            text=texts,
            padding=True,
            add_special_tokens=False,
            return_tensors="pt",
        )


def _template_message(turn: ChatTurn) -> dict[str, Any]:
    """A message as chat templates read it: typed parts, an image part where each image is."""
    content = [
        {"type": "image"} if part.kind == "image" else {"type": "text", "text": part.text}
        for part in turn.parts
    ]
    return {"role": turn.role, "content": content}


@dataclass(frozen=True)
class _InternVLFamily(_ChatFamily):
    """InternVL: its processor loads without torchvision (no video processor)."""

    def _load_processor(self, path: Path) -> Any:
        return internvl_processor_class().from_pretrained(path)


def _user_message(image_count: int, instruction: str | None) -> dict[str, Any]:
    content: list[dict[str, str]] = [{"type": "image"} for _ in range(image_count)]
    content.append({"type": "text", "text": instruction or DEFAULT_INSTRUCTION})
    return {"role": "user", "content": content}


def _make_generation_greedy(generation: Any, tokenizer: Any, stop_tokens: tuple[str, ...]) -> None:
    """Greedy by default, stopping on EOS and on ``stop_tokens``, padding with the pad token."""
    generation.do_sample = False
    for name in ("temperature", "top_k", "top_p"):
        setattr(generation, name, None)
    eos = generation.eos_token_id
    eos_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if tokenizer.eos_token_id is not None:
        eos_ids.append(tokenizer.eos_token_id)
    vocabulary = tokenizer.get_vocab()
    eos_ids += [vocabulary[token] for token in stop_tokens if token in vocabulary]
    eos_ids = list(dict.fromkeys(eos_ids))
    generation.eos_token_id = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    if generation.pad_token_id is None:
        generation.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
        )


@functools.cache
def internvl_processor_class() -> type:
    """``InternVLProcessor`` without its video processor, which needs torchvision.

    It loads real Hub snapshots and tiny checkpoints alike. It keeps the upstream class name,
    so the configs it saves name ``InternVLProcessor`` and load anywhere.
    """
    from transformers import InternVLProcessor as UpstreamProcessor

    class InternVLProcessor(UpstreamProcessor):
        """An InternVL processor for images only, one tile per image unless configured."""

        def __init__(
            self,
            image_processor: Any = None,
            tokenizer: Any = None,
            image_seq_length: int = 256,
            chat_template: str | None = None,
            **kwargs: Any,
        ) -> None:
            kwargs.pop("video_processor", None)
            # ProcessorMixin pairs positional sub-processors with the attributes of this
            # signature (image_processor, tokenizer), so the video processor is left out.
            super().__init__(
                image_processor,
                tokenizer,
                None,
                image_seq_length=image_seq_length,
                chat_template=chat_template,
                **kwargs,
            )
            # The class default (crop_to_patches=True: up to 13 tiles of 256 tokens each)
            # would override the checkpoint's own image processor setting: honour the latter.
            self.images_kwargs = {
                **UpstreamProcessor.images_kwargs,
                "crop_to_patches": bool(getattr(image_processor, "crop_to_patches", False)),
            }

    return InternVLProcessor


FAMILIES: dict[str, VisionLanguageFamily] = {
    "blip2": _Blip2Family(name="blip2", multi_image=False),
    "gemma3": _ChatFamily(name="gemma3", multi_image=True, stop_tokens=("<end_of_turn>",)),
    "internvl": _InternVLFamily(name="internvl", multi_image=True, stop_tokens=("<|im_end|>",)),
}
