"""PixArt-Sigma builder (``pixart``), and the T5 text encoder that it shares with ``sd3``.

A ``PixArtSigmaPipeline`` saved with ``save_pretrained``, which
``PixArtSigmaPipeline.from_pretrained(folder)`` and
``AutoPipelineForText2Image.from_pretrained(folder)`` load like a Hub snapshot: a DiT
(``PixArtTransformer2DModel``, adaLN-single, learned variance) cross-attending to a T5 encoder's
hidden states, SDXL's KL autoencoder (4 latent channels, 8x downsampling) and the
DPM-Solver++ scheduler.

T5's upstream tokenizer is a SentencePiece model; transformers 5's ``T5Tokenizer`` is backed by
the ``tokenizers`` library and takes a unigram vocabulary directly (``vocab=[(piece, score),
...]``), so the tiny one is built offline from the tiny word list: T5's layout (``<pad>`` 0,
``</s>`` 1, ``<unk>`` 2, 100 ``<extra_id_*>`` sentinels), cased words as single pieces, single
characters for anything else.

``tiny``: random float32 weights. The transformer's ``sample_size`` is 32 latents (256 px by
default): the pipeline's resolution binning (on by default) only knows sample sizes 32, 64, 128
and 256 and raises ``ValueError("Invalid sample size")`` for any other. Call it with
``use_resolution_binning=False`` for the requested size exactly (64 px take milliseconds);
with binning, any size is drawn at the nearest bin of 256 px and resized. ``full``: the
dimensions of ``PixArt-alpha/PixArt-Sigma-XL-2-1024-MS`` (T5-v1.1-XXL encoder), random weights
in float16.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlgraph.tiny import CheckpointSize, register
from vlgraph.tiny.common import CAPTION_WORDS, PROMPT_WORDS, english_world_words
from vlgraph.tiny.stable_diffusion import _construction_dtype, _finish, _vae

#: T5's sentencepiece vocabulary (without its 100 sentinels) and its embedding rows (32128:
#: padded to a multiple of 128).
_T5_PIECES = 32000
_T5_EMBEDDINGS = 32128
#: Sentinels (``<extra_id_0>``...) that T5's tokenizer appends after its pieces.
_T5_SENTINELS = 100
#: The tokenizer's ``model_max_length`` (``google/t5-v1_1-xxl``'s); the pipelines pad and
#: truncate to their own ``max_sequence_length`` (PixArt-Sigma 300, SD3 256).
T5_MAX_LENGTH = 512
#: Characters the tiny vocabulary holds as single pieces, so that any such text tokenizes.
_CHARACTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-()/&%+=*#@$"
#: T5-v1.1-XXL's encoder.
_FULL_T5 = {
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
}
#: Tiny T5 encoder: two layers of 64, 4 heads of 16. SD3 zero-pads its two CLIP encoders'
#: hidden states (32 + 32 wide when tiny) to T5's width: T5 must be at least as wide.
_TINY_T5 = {"d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_heads": 4}


def t5_tokenizer(size: CheckpointSize) -> Any:
    """A ``T5Tokenizer`` (cased unigram, ``</s>`` appended, ``<pad>`` padding) built offline;
    padded to T5's 32000 pieces when full."""
    from transformers import T5Tokenizer

    words = dict.fromkeys([*english_world_words(), *CAPTION_WORDS, *PROMPT_WORDS])
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -3.0)]
    for word in words:
        pieces += [(f"\u2581{word}", -5.0), (f"\u2581{word.capitalize()}", -6.0)]
    pieces += [(character, -10.0) for character in _CHARACTERS]
    pieces = list(dict(pieces).items())  # each piece once (in its first place)
    index = 0
    while size is CheckpointSize.FULL and len(pieces) < _T5_PIECES:
        pieces.append((f"\u2581w{index}", -20.0))
        index += 1
    return T5Tokenizer(vocab=pieces, extra_ids=_T5_SENTINELS, model_max_length=T5_MAX_LENGTH)


def t5_encoder(tokenizer: Any, size: CheckpointSize) -> Any:
    """A ``T5EncoderModel`` with T5-v1.1's gated-GELU feed-forward: T5-v1.1-XXL's dimensions
    when full, two layers of 64 when tiny. Build it under the caller's construction dtype."""
    from transformers import T5Config, T5EncoderModel

    full = size is CheckpointSize.FULL
    config = T5Config(
        vocab_size=max(len(tokenizer), _T5_EMBEDDINGS if full else 0),
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        **(_FULL_T5 if full else _TINY_T5),
    )
    return T5EncoderModel(config)


#: PixArt-Sigma-XL-2-1024-MS's DiT: 28 blocks of 16 heads of 72 (1152 wide) at 128x128 latents.
_FULL_TRANSFORMER = {
    "sample_size": 128,
    "num_layers": 28,
    "num_attention_heads": 16,
    "attention_head_dim": 72,
    "interpolation_scale": 2,
}
#: Tiny DiT: two blocks of 2 heads of 8; 32x32 latents by default (see the module docstring).
_TINY_TRANSFORMER = {
    "sample_size": 32,
    "num_layers": 2,
    "num_attention_heads": 2,
    "attention_head_dim": 8,
}


@register("pixart", trained=False)
def build_pixart_sigma(folder: Path, size: CheckpointSize, needs: Mapping[str, Path]) -> None:
    """PixArt-Sigma (``PixArtSigmaPipeline``): T5 encoder, DiT with learned variance (8 output
    channels for 4 latent ones), SDXL's autoencoder, DPM-Solver++ (order 2)."""
    from diffusers import (
        DPMSolverMultistepScheduler,
        PixArtSigmaPipeline,
        PixArtTransformer2DModel,
    )

    full = size is CheckpointSize.FULL
    tokenizer = t5_tokenizer(size)
    with _construction_dtype(size):
        text_encoder = t5_encoder(tokenizer, size)
        shape = _FULL_TRANSFORMER if full else _TINY_TRANSFORMER
        transformer = PixArtTransformer2DModel(
            **shape,
            in_channels=4,
            out_channels=8,
            patch_size=2,
            # cross-attention reads the caption projected to the transformer's width
            cross_attention_dim=shape["num_attention_heads"] * shape["attention_head_dim"],
            caption_channels=text_encoder.config.d_model,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=1e-6,
            # Sigma drops Alpha's resolution and aspect-ratio micro-conditions (the
            # constructor turns them on by default at sample size 128).
            use_additional_conditions=False,
        )
        vae = _vae(size, scaling_factor=0.13025, full_sample_size=1024)
    _finish({"transformer": transformer, "vae": vae, "text_encoder": text_encoder}, size)
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type="epsilon",
        algorithm_type="dpmsolver++",
        solver_order=2,
    )
    pipeline = PixArtSigmaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
    )
    pipeline.save_pretrained(folder)
