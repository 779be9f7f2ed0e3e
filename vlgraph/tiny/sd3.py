"""Stable Diffusion 3 builder (``sd3``): a ``StableDiffusion3Pipeline`` saved with
``save_pretrained``, which ``StableDiffusion3Pipeline.from_pretrained(folder)`` and
``AutoPipelineForText2Image.from_pretrained(folder)`` load like a Hub snapshot.

An MMDiT (``SD3Transformer2DModel``) denoising 16-channel latents of a KL autoencoder by flow
matching (``FlowMatchEulerDiscreteScheduler``), conditioned on two CLIP text encoders with
projection (CLIP-L and OpenCLIP-G) and a T5 encoder (the one of :mod:`vlgraph.tiny.pixart`).

T5 is in the folder as it is in the Hub's: a pipeline saved with ``text_encoder_3=None``
does not load with a plain ``from_pretrained(folder)`` (diffusers wants every non-optional
component named in ``model_index.json``). A server that runs SD3 without T5 (diffusers then
feeds the transformer zeros in place of T5's 256 tokens) loads it with
``from_pretrained(folder, text_encoder_3=None, tokenizer_3=None)``, on this folder and on the
Hub's alike.

``tiny``: random float32 weights; 64x64 images are 8x8x16 latents (8x downsampling, patch 2:
16 image tokens) and take milliseconds per step on a CPU. ``full``: the dimensions of
``stabilityai/stable-diffusion-3.5-medium`` (MMDiT-X: 24 layers, dual attention in the first
13, RMS qk-norm; CLIP-L, OpenCLIP-bigG, T5-v1.1-XXL) from its published configs, random
weights in float16.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlgraph.tiny import CheckpointSize, register
from vlgraph.tiny.pixart import t5_encoder, t5_tokenizer
from vlgraph.tiny.stable_diffusion import (
    _CLIP_BIGG_TEXT,
    _CLIP_L_TEXT,
    TINY_IMAGE_SIZE,
    _clip_tokenizer,
    _construction_dtype,
    _finish,
    _text_config,
)

#: SD3's latent channels (SD 1.5 and SDXL have 4).
_LATENT_CHANNELS = 16
#: The MMDiT-X of ``stable-diffusion-3.5-medium``.
_FULL_TRANSFORMER = {
    "sample_size": 128,
    "patch_size": 2,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "caption_projection_dim": 1536,
    "pos_embed_max_size": 384,
    "dual_attention_layers": tuple(range(13)),
}
#: Tiny MMDiT: two joint blocks of 2 heads of 8 (the first with SD3.5's dual attention), a
#: 32x32 position table (images up to 32 * 2 * 8 = 512 px).
_TINY_TRANSFORMER = {
    "sample_size": TINY_IMAGE_SIZE // 8,
    "patch_size": 2,
    "num_layers": 2,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "caption_projection_dim": 16,
    "pos_embed_max_size": 32,
    "dual_attention_layers": (0,),
}


def _sd3_vae(size: CheckpointSize) -> Any:
    """SD3's KL autoencoder: four blocks (8x downsampling) into 16 channels, latents shifted
    then scaled (``shift_factor``, ``scaling_factor``), no quant convolutions."""
    from diffusers import AutoencoderKL

    full = size is CheckpointSize.FULL
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512) if full else (8, 8, 16, 16),
        layers_per_block=2 if full else 1,
        latent_channels=_LATENT_CHANNELS,
        norm_num_groups=32 if full else 8,
        sample_size=1024 if full else TINY_IMAGE_SIZE,
        scaling_factor=1.5305,
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


@register("sd3", trained=False)
def build_stable_diffusion_3(folder: Path, size: CheckpointSize, needs: Mapping[str, Path]) -> None:
    """Stable Diffusion 3.5 medium (``StableDiffusion3Pipeline``): two CLIP text encoders with
    projection and a T5 encoder, an MMDiT and flow matching (shift 3)."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection as CLIPWithProjection

    full = size is CheckpointSize.FULL
    tokenizer = _clip_tokenizer(size)
    # OpenCLIP's tokenizer pads with "!" (id 0 upstream), as SDXL's and SD3's tokenizer_2 do.
    tokenizer_2 = copy.deepcopy(tokenizer)
    tokenizer_2.pad_token = "!"
    tokenizer_3 = t5_tokenizer(size)
    with _construction_dtype(size):
        text_encoder = CLIPWithProjection(_text_config(tokenizer, **(_CLIP_L_TEXT if full else {})))
        text_encoder_2 = CLIPWithProjection(
            _text_config(tokenizer, **(_CLIP_BIGG_TEXT if full else {}))
        )
        text_encoder_3 = t5_encoder(tokenizer_3, size)
        # The transformer reads the CLIP encoders' penultimate hidden states side by side,
        # zero-padded to T5's width, then T5's; and the CLIP pooled projections side by side.
        pooled = text_encoder.config.projection_dim + text_encoder_2.config.projection_dim
        transformer = SD3Transformer2DModel(
            **(_FULL_TRANSFORMER if full else _TINY_TRANSFORMER),
            in_channels=_LATENT_CHANNELS,
            out_channels=_LATENT_CHANNELS,
            joint_attention_dim=text_encoder_3.config.d_model,
            pooled_projection_dim=pooled,
            qk_norm="rms_norm",
        )
        vae = _sd3_vae(size)
    modules = {
        "transformer": transformer,
        "vae": vae,
        "text": text_encoder,
        "text_2": text_encoder_2,
        "text_3": text_encoder_3,
    }
    _finish(modules, size)
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )
    pipeline.save_pretrained(folder)
