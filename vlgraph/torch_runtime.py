"""Device and dtype choice for model replicas, from a family's config."""

from __future__ import annotations

from typing import TYPE_CHECKING

#: glibc malloc settings for model replicas on CPU. Torch frees and re-allocates activation
#: buffers of tens of MB at every generation step; by default glibc hands them back to the
#: kernel each time (mmap/trim), and worker threads use arenas whose 64 MB heaps force large
#: buffers to mmap. The page faults cost BLIP-base generate about 15% of its time on 2 cores
#: (docs/benchmarks.md). One arena and no trimming keep the memory in the process; RSS stays at
#: its peak, which is a model server's steady state anyway.
CPU_ALLOCATOR_ENV: dict[str, str] = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_THRESHOLD_": "4294967296",
    "MALLOC_TRIM_THRESHOLD_": "68719476736",
    "MALLOC_TOP_PAD_": "1073741824",
}

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
