"""Device and dtype choice for model replicas, from a family's config."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from vlgraph.config import ModelFamilyConfig


def select_device(config: ModelFamilyConfig) -> torch.device:
    """``auto`` picks CUDA when this replica sees a GPU (Ray sets CUDA_VISIBLE_DEVICES)."""
    import torch

    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device is 'cuda' but this replica sees no GPU; give it num_gpus > 0")
    return torch.device(config.device)


def select_dtype(config: ModelFamilyConfig, device: torch.device) -> torch.dtype:
    """``auto`` is float16 on CUDA and float32 on CPU (half precision is slow or absent there)."""
    import torch

    if config.dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, config.dtype)


def apply_thread_limit(config: ModelFamilyConfig) -> None:
    """Cap torch's intra-op threads when the config asks, so packed replicas do not fight."""
    import torch

    if config.torch_threads is not None:
        torch.set_num_threads(config.torch_threads)
