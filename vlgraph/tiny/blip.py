"""BLIP builders: image captioning (``blip-caption``) and visual question answering
(``blip-vqa``), which share one config, tokenizer and image processor."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from vlgraph.tiny import CheckpointSize, register
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
def build_blip_caption(folder: Path, size: CheckpointSize, needs: Mapping[str, Path]) -> None:
    """BLIP image captioning (``BlipForConditionalGeneration``), base architecture when full."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    config, tokenizer, image_processor = _blip_parts(size)
    model = BlipForConditionalGeneration(config).eval()
    add_noise_to_zero_matrices(model.vision_model)
    model.generation_config.max_new_tokens = 20
    model.save_pretrained(folder)
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)


@register("blip-vqa")
def build_blip_vqa(folder: Path, size: CheckpointSize, needs: Mapping[str, Path]) -> None:
    """BLIP visual question answering (``BlipForQuestionAnswering``, the architecture of
    ``Salesforce/blip-vqa-base``), base architecture when full."""
    from transformers import BlipForQuestionAnswering, BlipProcessor

    config, tokenizer, image_processor = _blip_parts(size)
    model = BlipForQuestionAnswering(config).eval()
    add_noise_to_zero_matrices(model.vision_model)
    model.generation_config.max_new_tokens = 10
    model.save_pretrained(folder)
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
