"""Training of the tiny Stable Diffusion pipeline on the world of :mod:`vlgraph.tiny.world`.

Two phases, each a fixed number of steps from fixed seeds:

1. The autoencoder learns to reconstruct world images (random crops, at a quarter of the cost
   of whole images); its ``scaling_factor`` is then set so that the scaled latents of the pool
   have unit variance, as the UNet expects.
2. The UNet learns v-prediction on the latents of the whole images, conditioned on the frozen
   text encoder's states of the images' captions, computed once (the pipeline's own encoding:
   padded to ``model_max_length``, no attention mask). A fraction of the captions are empty so
   that classifier-free guidance has an unconditional prediction to push away from.
"""

from __future__ import annotations

from typing import Any

from vlgraph.tiny.training import batch_indices, train, world_pool
from vlgraph.tiny.world import all_scenes


def world_tensors(seed: int, count: int, size: int) -> tuple[Any, list[int]]:
    """``count`` world images drawn from ``seed`` as a ``(count, 3, size, size)`` tensor in
    [-1, 1], and the index in :func:`all_scenes` of the scene each shows."""
    import numpy as np
    import torch

    pool = world_pool(seed, count, size)
    pixels = np.stack([np.asarray(image, dtype=np.float32) for image in pool.images])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2) / 127.5 - 1
    scene_index = {scene: index for index, scene in enumerate(all_scenes())}
    return images.contiguous(), [scene_index[scene] for scene in pool.scenes]


def train_autoencoder(
    vae: Any,
    images: Any,
    *,
    steps: int,
    batch: int,
    crop: int,
    learning_rate: float,
    kl_weight: float,
    colour_weight: float,
    seed: int,
) -> None:
    """Train ``vae`` to reconstruct random ``crop`` x ``crop`` crops of ``images`` (a multiple
    of the downsampling factor, so crops keep the latent grid's alignment) from its latent
    means, with a light KL penalty."""
    import torch

    indices = batch_indices(seed, len(images), batch)
    generator = torch.Generator().manual_seed(seed)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    positions = (images.shape[-1] - crop) // factor + 1

    def loss_of_step(step: int) -> Any:
        corners = torch.randint(positions, (2,), generator=generator) * factor
        top, left = int(corners[0]), int(corners[1])
        picked = images[indices(step), :, top : top + crop, left : left + crop]
        posterior = vae.encode(picked).latent_dist
        reconstruction = vae.decode(posterior.mode()).sample
        # Patch means weigh flat colour (what the prompts ask for) above edges.
        blurred = [torch.nn.functional.avg_pool2d(x, 4) for x in (reconstruction, picked)]
        return (
            torch.nn.functional.mse_loss(reconstruction, picked)
            + colour_weight * torch.nn.functional.mse_loss(*blurred)
            + kl_weight * posterior.kl().mean() / posterior.mean[0].numel()
        )

    vae.train()
    train("sd", vae.parameters(), loss_of_step, steps, learning_rate, phase="autoencoder")
    vae.eval()


def scaled_latents(vae: Any, images: Any) -> Any:
    """Set ``vae``'s ``scaling_factor`` to the inverse standard deviation of the latent means
    of ``images`` and return those means scaled by it (what the UNet learns to denoise)."""
    import torch

    with torch.no_grad():
        means = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in images.split(256)])
    scale = float(1 / means.std())
    vae.register_to_config(scaling_factor=scale)
    return means * scale


def prompt_states(tokenizer: Any, text_encoder: Any, prompts: list[str]) -> Any:
    """The text encoder's last hidden states of ``prompts``, encoded as
    ``StableDiffusionPipeline.encode_prompt`` does (padded to ``model_max_length``, truncated,
    no attention mask)."""
    import torch

    ids = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        return text_encoder(ids)[0]


def train_denoiser(
    unet: Any,
    latents: Any,
    conditions: list[int],
    states: Any,
    alphas_cumprod: Any,
    *,
    steps: int,
    batch: int,
    learning_rate: float,
    empty_fraction: float,
    seed: int,
) -> None:
    """Train ``unet`` to predict v on ``latents`` noised at uniform timesteps, each latent
    conditioned on ``states[conditions[i]]``, or on the last row of ``states`` (the empty
    prompt's) for an ``empty_fraction`` of the samples."""
    import torch

    indices = batch_indices(seed, len(latents), batch)
    generator = torch.Generator().manual_seed(seed)
    conditions_tensor = torch.tensor(conditions)
    empty = len(states) - 1

    def loss_of_step(step: int) -> Any:
        picked = indices(step)
        clean = latents[picked]
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(len(alphas_cumprod), (len(picked),), generator=generator)
        drop = torch.rand(len(picked), generator=generator) < empty_fraction
        rows = torch.where(drop, empty, conditions_tensor[picked])
        signal = alphas_cumprod[timesteps].sqrt().view(-1, 1, 1, 1)
        sigma = (1 - alphas_cumprod[timesteps]).sqrt().view(-1, 1, 1, 1)
        noisy = signal * clean + sigma * noise
        velocity = signal * noise - sigma * clean
        prediction = unet(noisy, timesteps, states[rows]).sample
        return torch.nn.functional.mse_loss(prediction, velocity)

    unet.train()
    train("sd", unet.parameters(), loss_of_step, steps, learning_rate, phase="denoiser")
    unet.eval()
