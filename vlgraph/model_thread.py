"""One dedicated thread for all of a replica's torch work.

Torch's CPU kernels run on an OpenMP team, and libgomp gives every thread that starts a
parallel region its own team. Once a process manages more OpenMP threads than it has CPUs,
libgomp stops spinning at barriers and puts its threads to sleep instead, which costs a pair of
context switches for every small kernel. A replica that loaded its model on one thread and then
ran ``generate`` on another (``asyncio.to_thread``) had two teams on two cores: BLIP-base ran at
165% CPU with about 900 sleeps a second per thread, and served throughput lost 15% to the same
``generate`` run on one thread (BENCHMARKS.md). Loading, warm-up and every inference call on the
same single thread keep one team, and the event loop stays free while it works.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

ResultT = TypeVar("ResultT")


class ModelThread:
    """Runs callables one at a time on one long-lived thread owned by a model replica."""

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-model")
        self._thread_ident = self._executor.submit(threading.get_ident).result()

    def call(self, function: Callable[..., ResultT], *args: object) -> ResultT:
        """Run ``function(*args)`` on the model thread and wait for it (from any other thread;
        on the model thread itself it just runs)."""
        if threading.get_ident() == self._thread_ident:
            return function(*args)
        return self._executor.submit(function, *args).result()

    async def run(self, function: Callable[..., ResultT], *args: object) -> ResultT:
        """Await ``function(*args)`` on the model thread without blocking the event loop."""
        return await asyncio.wrap_future(self._executor.submit(function, *args))

    def shutdown(self) -> None:
        """Let queued work finish, then end the thread."""
        self._executor.shutdown(wait=True)
