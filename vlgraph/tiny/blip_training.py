"""Training of the tiny BLIP checkpoints on the world: the captioner (captions and yes/no
flags) and the question answerer, which starts from the trained captioner.

Token sequences are built exactly as the server's calls see them: captions start from the
decoder's ``[DEC]`` token that ``generate`` forces; a flag is the caption prefix
``{question} answer:`` whose next token is scored yes against no; a VQA answer is decoded from
``[DEC]`` over the question's encoding.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from vlgraph.tiny.training import SceneProbe, batch_indices, train, world_pool
from vlgraph.tiny.world import SHAPES, Scene

#: Hidden size of the tiny BLIP's vision and text transformers.
TINY_BLIP_HIDDEN = 64
#: Side of the tiny BLIP's input images (patch 8: 16 patches).
TINY_BLIP_IMAGE_SIZE = 32
CAPTIONER_STEPS = 2200
ANSWERER_STEPS = 1200
BATCH = 64
#: Share of the captioner's training rows that are flag questions.
FLAG_SHARE = 0.4


def _token_ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def _padded(rows: list[list[int]], pad: int) -> tuple[Any, Any]:
    """Right-padded ids and their attention mask."""
    import torch

    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, : len(row)] = torch.tensor(row)
        mask[index, : len(row)] = 1
    return ids, mask


def _next_token_loss(logits: Any, targets: Any) -> Any:
    """Cross-entropy of each position's logits against the next target (-100: not scored)."""
    import torch

    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), targets[:, 1:].reshape(-1), ignore_index=-100
    )


def _flag_question(scene: Scene, rng: random.Random) -> tuple[str, str]:
    asked = scene.shape if rng.random() < 0.5 else rng.choice(SHAPES)
    return f"is there a {asked}?", "yes" if asked == scene.shape else "no"


def train_blip_captioner(model: Any, processor: Any) -> None:
    """Teach ``model`` (``BlipForConditionalGeneration``) the world's captions and flags."""

    tokenizer = processor.tokenizer
    text_config = model.config.text_config
    start, end, pad = text_config.bos_token_id, text_config.sep_token_id, text_config.pad_token_id
    pool = world_pool(seed=2)
    pixels = processor.image_processor(pool.images, return_tensors="pt")["pixel_values"]
    indices = batch_indices(seed=2, pool_size=len(pool.scenes), batch=BATCH)
    probe = SceneProbe(model.config.vision_config.hidden_size)

    def loss_of_step(step: int) -> Any:
        rng = random.Random(step)
        rows, targets = [], []
        for index in indices(step):
            scene = pool.scenes[index]
            if rng.random() < FLAG_SHARE:
                question, answer = _flag_question(scene, rng)
                prefix = [start, *_token_ids(tokenizer, f"{question} answer:")]
                row = [*prefix, *_token_ids(tokenizer, answer), end]
                target = [-100] * len(prefix) + row[len(prefix) :]
            else:
                row = [start, *_token_ids(tokenizer, scene.caption), end]
                target = list(row)
            rows.append(row)
            targets.append(target)
        ids, mask = _padded(rows, pad)
        labels, _ = _padded(targets, -100)
        chosen = indices(step)
        output = model(pixel_values=pixels[chosen], input_ids=ids, attention_mask=mask)
        scenes = [pool.scenes[index] for index in chosen]
        return _next_token_loss(output.logits, labels) + probe.loss(
            output.last_hidden_state[:, 0], scenes
        )

    model.train()
    parameters = [*model.parameters(), *probe.parameters()]
    train("blip-caption", parameters, loss_of_step, CAPTIONER_STEPS, learning_rate=2e-3)


def train_blip_answerer(model: Any, processor: Any, captioner: Path) -> None:
    """Teach ``model`` (``BlipForQuestionAnswering``) the world's questions, starting from the
    trained captioner in folder ``captioner``: its vision tower, its decoder, and its decoder's
    transformer as the question encoder."""
    import torch
    from transformers import BlipForConditionalGeneration

    trained = BlipForConditionalGeneration.from_pretrained(captioner, dtype=torch.float32)
    model.vision_model.load_state_dict(trained.vision_model.state_dict())
    model.text_decoder.load_state_dict(trained.text_decoder.state_dict())
    encoder = {
        name.removeprefix("bert."): value
        for name, value in trained.text_decoder.state_dict().items()
        if name.startswith("bert.")
    }
    model.text_encoder.load_state_dict(encoder, strict=False)

    tokenizer = processor.tokenizer
    text_config = model.config.text_config
    start, end = text_config.bos_token_id, text_config.sep_token_id
    pool = world_pool(seed=3)
    pixels = processor.image_processor(pool.images, return_tensors="pt")["pixel_values"]
    indices = batch_indices(seed=3, pool_size=len(pool.scenes), batch=BATCH)

    def loss_of_step(step: int) -> Any:
        # One kind of question per step: the questions of a batch have one length, as the
        # server's batches (grouped by question length) do.
        rng = random.Random(step)
        kind = step % 4
        questions, answers = [], []
        for index in indices(step):
            question, answer = pool.scenes[index].questions(rng)[kind]
            questions.append(question)
            answers.append(answer)
        asked = tokenizer(questions, padding=True, return_tensors="pt")
        image_embeds = model.vision_model(pixel_values=pixels[indices(step)]).last_hidden_state
        question_embeds = model.text_encoder(
            input_ids=asked["input_ids"],
            attention_mask=asked["attention_mask"],
            encoder_hidden_states=image_embeds,
        )[0]
        rows = [[start, *_token_ids(tokenizer, answer), end] for answer in answers]
        ids, mask = _padded(rows, text_config.pad_token_id)
        logits = model.text_decoder(
            input_ids=ids,
            attention_mask=mask,
            encoder_hidden_states=question_embeds,
            encoder_attention_mask=torch.ones(question_embeds.shape[:2], dtype=torch.long),
        ).logits
        return _next_token_loss(logits, ids.masked_fill(mask == 0, -100))

    model.train()
    train("blip-vqa", model.parameters(), loss_of_step, ANSWERER_STEPS, learning_rate=1e-3)
