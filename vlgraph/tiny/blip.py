"""BLIP builders: image captioning (``blip-caption``) and visual question answering
(``blip-vqa``), which share one config, tokenizer and image processor."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from vlgraph.tiny import CheckpointSize, register
from vlgraph.tiny.blip_training import (
    TINY_BLIP_HIDDEN,
    TINY_BLIP_IMAGE_SIZE,
    train_blip_answerer,
    train_blip_captioner,
)
from vlgraph.tiny.common import add_noise_to_zero_matrices, word_vocabulary


def _blip_parts(size: CheckpointSize):
    """The config, tokenizer and image processor that BLIP's captioning and VQA checkpoints
    share: base architecture when full, a few kilobytes of weights when tiny."""
    from transformers import BertTokenizer, BlipConfig, BlipImageProcessor

    vocab_size = 30524 if size is CheckpointSize.FULL else 512
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = word_vocabulary(vocab_size - len(specials) - 2)
    vocabulary = [*specials, *words, "[DEC]", "[ENC]"]
    token_ids = {token: index for index, token in enumerate(vocabulary)}
    tokenizer = BertTokenizer(
        vocab=token_ids, bos_token="[DEC]", extra_special_tokens=["[ENC]"], model_max_length=512
    )

    if size is CheckpointSize.FULL:
        image_size = 384
        config = BlipConfig()
    else:
        image_size = TINY_BLIP_IMAGE_SIZE
        config = BlipConfig(
            vision_config={
                "hidden_size": TINY_BLIP_HIDDEN,
                "intermediate_size": 2 * TINY_BLIP_HIDDEN,
                "num_hidden_layers": 3,
                "num_attention_heads": 4,
                "image_size": image_size,
                "patch_size": 8,
            },
            text_config={
                "hidden_size": TINY_BLIP_HIDDEN,
                "intermediate_size": 2 * TINY_BLIP_HIDDEN,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "encoder_hidden_size": TINY_BLIP_HIDDEN,
                "max_position_embeddings": 64,
            },
            projection_dim=TINY_BLIP_HIDDEN,
        )
        # The vision default (1e-10) starts every image at the same embedding: training from
        # there is slow.
        config.vision_config.initializer_range = 0.02
    config.text_config.vocab_size = len(vocabulary)
    config.text_config.pad_token_id = token_ids["[PAD]"]
    config.text_config.bos_token_id = token_ids["[DEC]"]
    config.text_config.sep_token_id = token_ids["[SEP]"]
    config.text_config.eos_token_id = token_ids["[SEP]"]
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    return config, tokenizer, image_processor


@register("blip-caption")
def build_blip_caption(folder: Path, size: CheckpointSize, needs: Mapping[str, Path]) -> None:
    """BLIP image captioning (``BlipForConditionalGeneration``), base architecture when full;
    tiny: trained on the world's captions and its yes/no questions (flags)."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    config, tokenizer, image_processor = _blip_parts(size)
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model = BlipForConditionalGeneration(config)
    add_noise_to_zero_matrices(model.vision_model)
    if size is CheckpointSize.TINY:
        train_blip_captioner(model, processor)
    model.generation_config.max_new_tokens = 20
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)


@register("blip-vqa", needs=("blip-caption",))
def build_blip_vqa(folder: Path, size: CheckpointSize, needs: Mapping[str, Path]) -> None:
    """BLIP visual question answering (``BlipForQuestionAnswering``, the architecture of
    ``Salesforce/blip-vqa-base``), base architecture when full; tiny: starts from the trained
    captioner's image and text weights and learns the world's questions."""
    from transformers import BlipForQuestionAnswering, BlipProcessor

    config, tokenizer, image_processor = _blip_parts(size)
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model = BlipForQuestionAnswering(config)
    add_noise_to_zero_matrices(model.vision_model)
    if size is CheckpointSize.TINY:
        train_blip_answerer(model, processor, needs["blip-caption"])
    model.generation_config.max_new_tokens = 10
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
