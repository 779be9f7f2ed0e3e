"""How model replicas on CPU are started: glibc malloc settings in their environment."""

from __future__ import annotations

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
