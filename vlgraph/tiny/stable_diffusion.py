"""Factory builders of text-to-image pipelines: Stable Diffusion 1.5 (``sd``) and SDXL (``sdxl``).

Importing this module registers both with :mod:`vlgraph.tiny`. Each builder writes a
whole diffusers pipeline with ``save_pretrained`` (``model_index.json`` and one folder per
component), which ``StableDiffusionPipeline.from_pretrained(folder)`` and
``StableDiffusionXLPipeline.from_pretrained(folder)`` load like a Hub snapshot.

``tiny``: a few hundred kilobytes of float32 weights whose 64x64 images take milliseconds on a
CPU. The tiny SD is trained at build time on the world of :mod:`vlgraph.tiny.world` (see
:mod:`vlgraph.tiny.diffusion_training`): ``a red circle on a white background`` draws a red blob
on white. It reuses the frozen text tower and tokenizer of the tiny ``clip`` checkpoint, and its
autoencoder downsamples by 4 (64 px images are 16x16x4 latents). The tiny SDXL is random, with
the real latent layout (4 channels, 8x downsampling). ``full``: the architecture of
``stable-diffusion-v1-5`` (with its safety checker) or of ``stable-diffusion-xl-base-1.0`` from
their published configs, random weights saved in float16 as the Hub's ``fp16`` variants are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from vlgraph.tiny import CheckpointSize, register
from vlgraph.tiny.common import (
    TINY_BPE_VOCABULARY,
    add_noise_to_zero_matrices,
    pad_vocabulary,
    train_bpe,
)

#: CLIP's context: prompts are padded and truncated to 77 tokens at both sizes.
_CLIP_CONTEXT = 77
#: The vocabulary size of the CLIP tokenizers of SD 1.5 and SDXL.
_CLIP_VOCABULARY = 49408
#: ``scaled_linear`` betas that SD 1.5 and SDXL were trained with.
_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}

#: Tiny image side: the side the tiny SD is trained at and both tiny pipelines default to.
TINY_IMAGE_SIZE = 64
#: Cosine similarity an image embedding must reach to a concept embedding for the random safety
#: checkers to flag it. Their concepts are random directions in 32 (tiny) or 768 (full)
#: dimensions, where a cosine over 0.9 has a chance under 1e-11: the checker runs for real and
#: flags nothing.
SAFETY_THRESHOLD = 0.9


def _clip_tokenizer(size: CheckpointSize) -> Any:
    """CLIP's lower-casing byte-level BPE (``</w>`` word ends), trained on the tiny word list;
    padded to CLIP's 49408 tokens when full."""
    from transformers import CLIPTokenizer

    vocab, merges = train_bpe(
        CLIPTokenizer(),
        ["<|startoftext|>", "<|endoftext|>"],
        TINY_BPE_VOCABULARY,
        byte_level=True,
        end_of_word_suffix="</w>",
    )
    if size is CheckpointSize.FULL:
        vocab = pad_vocabulary(vocab, _CLIP_VOCABULARY, "")
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=_CLIP_CONTEXT)


def _text_config(tokenizer: Any, **dimensions: Any) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=max(len(tokenizer), _CLIP_VOCABULARY if dimensions else 0),
        max_position_embeddings=_CLIP_CONTEXT,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **(dimensions or _TINY_TEXT),
    )


#: Tiny CLIP text encoders: two layers, so SDXL's penultimate hidden state exists.
_TINY_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "projection_dim": 32,
    # A stronger text signal than the default 0.02, so that the prompt visibly steers the
    # image through the tiny UNet's cross-attention.
    "initializer_range": 0.2,
}
#: CLIP ViT-L/14's text tower: SD 1.5's encoder and SDXL's first one.
_CLIP_L_TEXT = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}
#: OpenCLIP ViT-bigG/14's text tower: SDXL's second encoder.
_CLIP_BIGG_TEXT = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "projection_dim": 1280,
    "hidden_act": "gelu",
}


def _vae(size: CheckpointSize, scaling_factor: float, full_sample_size: int) -> Any:
    """SD's KL autoencoder: four blocks, so 8x downsampling into 4 latent channels."""
    from diffusers import AutoencoderKL

    full = size is CheckpointSize.FULL
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512) if full else (8, 8, 16, 16),
        layers_per_block=2 if full else 1,
        latent_channels=4,
        norm_num_groups=32 if full else 8,
        sample_size=full_sample_size if full else TINY_IMAGE_SIZE,
        scaling_factor=scaling_factor,
    )


@contextlib.contextmanager
def _construction_dtype(size: CheckpointSize) -> Iterator[None]:
    """Build full-size models directly in float16: SDXL's 3.5 billion parameters would take
    14 GB in float32 before a conversion."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16 if size is CheckpointSize.FULL else torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _finish(modules: dict[str, Any], size: CheckpointSize) -> None:
    """Eval mode; tiny models get noise in any all-zero matrix."""
    for module in modules.values():
        module.eval()
        if size is CheckpointSize.TINY:
            add_noise_to_zero_matrices(module)


def _with_random_concepts(checker: Any) -> Any:
    """Random concept directions and :data:`SAFETY_THRESHOLD` (the constructor's all-ones
    concepts would make every image score the same)."""
    import torch

    with torch.no_grad():
        checker.concept_embeds.normal_()
        checker.special_care_embeds.normal_()
        checker.concept_embeds_weights.fill_(SAFETY_THRESHOLD)
        checker.special_care_embeds_weights.fill_(SAFETY_THRESHOLD)
    return checker


def _tiny_safety_checker() -> tuple[Any, Any]:
    """A tiny ``StableDiffusionSafetyChecker`` and its CLIP image processor (32 px)."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    layers = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    }
    config = CLIPConfig(
        text_config=layers,
        vision_config={**layers, "image_size": 32, "patch_size": 8},
        projection_dim=32,
    )
    checker = _with_random_concepts(StableDiffusionSafetyChecker(config))
    processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    return checker, processor


def _full_safety_checker() -> tuple[Any, Any]:
    """SD 1.5's safety checker architecture: a CLIP ViT-L/14 image tower at 224 px.

    Its concept embeddings are random, like the tiny checker's: the compute is real, the
    verdicts are not.
    """
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    config = CLIPConfig(
        text_config=_CLIP_L_TEXT,
        vision_config={
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "image_size": 224,
            "patch_size": 14,
            "hidden_act": "quick_gelu",
        },
        projection_dim=768,
    )
    checker = _with_random_concepts(StableDiffusionSafetyChecker(config))
    processor = CLIPImageProcessor(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
    )
    return checker, processor


@register("sd", needs=("clip",))
def build_stable_diffusion(folder: Path, size: CheckpointSize, needs: Mapping[str, Path]) -> None:
    """Stable Diffusion 1.5 (``StableDiffusionPipeline``) with its safety checker and PNDM
    scheduler: trained on the world under the frozen text tower of the tiny ``clip``
    checkpoint when tiny, ``stable-diffusion-v1-5`` dimensions with random weights when full."""
    if size is CheckpointSize.TINY:
        pipeline = _tiny_stable_diffusion(needs["clip"] / "0_CLIPModel")
    else:
        pipeline = _full_stable_diffusion()
    pipeline.save_pretrained(folder)


def _full_stable_diffusion() -> Any:
    """SD 1.5's architecture with random float16 weights and the full safety checker."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    size = CheckpointSize.FULL
    tokenizer = _clip_tokenizer(size)
    with _construction_dtype(size):
        text_encoder = CLIPTextModel(_text_config(tokenizer, **_CLIP_L_TEXT))
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
        safety_checker, feature_extractor = _full_safety_checker()
        vae = _vae(size, scaling_factor=0.18215, full_sample_size=512)
    modules = {"unet": unet, "vae": vae, "text_encoder": text_encoder, "checker": safety_checker}
    _finish(modules, size)
    return _pipeline(
        _pndm_scheduler(), vae, text_encoder, tokenizer, unet, safety_checker, feature_extractor
    )


def _pndm_scheduler(**overrides: Any) -> Any:
    """SD 1.5's PNDM scheduler (``overrides``: e.g. the prediction type)."""
    from diffusers import PNDMScheduler

    return PNDMScheduler(
        num_train_timesteps=1000,
        **_BETAS,
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
        **overrides,
    )


def _pipeline(
    scheduler: Any,
    vae: Any,
    text_encoder: Any,
    tokenizer: Any,
    unet: Any,
    safety_checker: Any,
    feature_extractor: Any,
) -> Any:
    """The SD 1.5 pipeline of these parts, safety checker required."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=safety_checker,
        feature_extractor=feature_extractor,
        requires_safety_checker=True,
    )


#: Tiny SD's autoencoder: three blocks, so 4x downsampling (64 px images are 16x16x4 latents).
#: One normalisation group: with one channel per group, GroupNorm erases the colour of flat
#: regions, which is what the prompts ask for.
_TINY_SD_VAE = {
    "block_out_channels": (16, 16, 16),
    "layers_per_block": 1,
    "norm_num_groups": 1,
    "mid_block_add_attention": False,
}
#: Tiny SD's UNet: SD's block pattern in two levels, cross-attention at the coarser one only
#: (at 16x16 it would cost several times more per step), no middle block (as good, and a
#: quarter cheaper); the attention-pooled prompt also joins the time embedding, which reaches
#: every ResNet block.
_TINY_SD_UNET = {
    "block_out_channels": (16, 32),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "mid_block_type": None,
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": 2,
    "norm_num_groups": 4,
    "addition_embed_type": "text",
    "addition_embed_type_num_heads": 2,
}
#: Training pool (seed, images), steps, batches and learning rates of the tiny SD.
_POOL_SEED = 2
_POOL_IMAGES = 3000
_VAE_STEPS = 400
_VAE_BATCH = 32
_VAE_CROP = 32
_VAE_LEARNING_RATE = 5e-3
#: Weights of the VAE's KL penalty and of its patch-mean colour term (next to plain MSE).
_VAE_KL_WEIGHT = 1e-4
_VAE_COLOUR_WEIGHT = 4.0
_UNET_STEPS = 700
_UNET_BATCH = 64
_UNET_LEARNING_RATE = 5e-3
#: Share of training captions replaced by the empty prompt, for classifier-free guidance.
_EMPTY_PROMPTS = 0.1


def _tiny_stable_diffusion(clip_folder: Path) -> Any:
    """The tiny SD pipeline trained on the world, with ``clip_folder``'s text tower and
    tokenizer (frozen) and the tiny random safety checker."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

    from vlgraph.tiny.diffusion_training import (
        prompt_states,
        scaled_latents,
        train_autoencoder,
        train_denoiser,
        world_tensors,
    )
    from vlgraph.tiny.world import all_scenes

    clip = CLIPModel.from_pretrained(clip_folder, dtype=torch.float32)
    text_encoder = CLIPTextModel(clip.config.text_config)
    text_encoder.load_state_dict(clip.text_model.state_dict())
    text_encoder.eval().requires_grad_(False)
    # The pipeline pads every prompt to model_max_length: it must fit the position table.
    tokenizer = CLIPTokenizer.from_pretrained(
        clip_folder, model_max_length=text_encoder.config.max_position_embeddings
    )
    # Each model starts from its own seed, whatever randomness loading the CLIP used up.
    torch.manual_seed(_POOL_SEED)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(_TINY_SD_VAE["block_out_channels"]),
        up_block_types=("UpDecoderBlock2D",) * len(_TINY_SD_VAE["block_out_channels"]),
        latent_channels=4,
        sample_size=TINY_IMAGE_SIZE,
        **_TINY_SD_VAE,
    )
    downsampling = 2 ** (len(_TINY_SD_VAE["block_out_channels"]) - 1)
    torch.manual_seed(_POOL_SEED + 1)
    unet = UNet2DConditionModel(
        sample_size=TINY_IMAGE_SIZE // downsampling,
        cross_attention_dim=text_encoder.config.hidden_size,
        **_TINY_SD_UNET,
    )
    scheduler = _pndm_scheduler(prediction_type="v_prediction")
    images, scene_rows = world_tensors(_POOL_SEED, _POOL_IMAGES, TINY_IMAGE_SIZE)
    train_autoencoder(
        vae,
        images,
        steps=_VAE_STEPS,
        batch=_VAE_BATCH,
        crop=_VAE_CROP,
        learning_rate=_VAE_LEARNING_RATE,
        kl_weight=_VAE_KL_WEIGHT,
        colour_weight=_VAE_COLOUR_WEIGHT,
        seed=_POOL_SEED,
    )
    captions = [scene.caption for scene in all_scenes()]
    train_denoiser(
        unet,
        scaled_latents(vae, images),
        scene_rows,
        prompt_states(tokenizer, text_encoder, [*captions, ""]),
        scheduler.alphas_cumprod,
        steps=_UNET_STEPS,
        batch=_UNET_BATCH,
        learning_rate=_UNET_LEARNING_RATE,
        empty_fraction=_EMPTY_PROMPTS,
        seed=_POOL_SEED + 1,
    )
    safety_checker, feature_extractor = _tiny_safety_checker()
    safety_checker.eval()
    add_noise_to_zero_matrices(safety_checker)
    return _pipeline(
        scheduler, vae, text_encoder, tokenizer, unet, safety_checker, feature_extractor
    )


@register("sdxl", trained=False)
def build_stable_diffusion_xl(
    folder: Path, size: CheckpointSize, needs: Mapping[str, Path]
) -> None:
    """SDXL base (``StableDiffusionXLPipeline``): two CLIP text encoders, a ``text_time``
    conditioned UNet, Euler scheduler, no safety checker; ``stable-diffusion-xl-base-1.0``
    dimensions when full."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    full = size is CheckpointSize.FULL
    tokenizer = _clip_tokenizer(size)
    with _construction_dtype(size):
        text_encoder = CLIPTextModel(_text_config(tokenizer, **(_CLIP_L_TEXT if full else {})))
        text_encoder_2 = CLIPTextModelWithProjection(
            _text_config(tokenizer, **(_CLIP_BIGG_TEXT if full else {}))
        )
        # The UNet reads both encoders' penultimate hidden states side by side, and is conditioned
        # on the second one's pooled projection plus six size numbers (original size, crop, target).
        cross_attention_dim = text_encoder.config.hidden_size + text_encoder_2.config.hidden_size
        time_embed_dim = 256 if full else 8
        unet_shape: dict[str, Any] = (
            {
                "sample_size": 128,
                "block_out_channels": (320, 640, 1280),
                "layers_per_block": 2,
                "transformer_layers_per_block": (1, 2, 10),
                "attention_head_dim": (5, 10, 20),
                "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            }
            if full
            else {
                "sample_size": TINY_IMAGE_SIZE // 8,
                "block_out_channels": (16, 32),
                "layers_per_block": 1,
                "transformer_layers_per_block": 1,
                "attention_head_dim": (2, 4),
                "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
                "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
                "norm_num_groups": 8,
            }
        )
        unet = UNet2DConditionModel(
            **unet_shape,
            cross_attention_dim=cross_attention_dim,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=time_embed_dim,
            projection_class_embeddings_input_dim=6 * time_embed_dim
            + text_encoder_2.config.projection_dim,
        )
        vae = _vae(size, scaling_factor=0.13025, full_sample_size=1024)
    modules = {"unet": unet, "vae": vae, "text": text_encoder, "text_2": text_encoder_2}
    _finish(modules, size)
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        **_BETAS,
        steps_offset=1,
        timestep_spacing="leading",
        interpolation_type="linear",
        prediction_type="epsilon",
        use_karras_sigmas=False,
    )
    pipeline = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipeline.save_pretrained(folder)
