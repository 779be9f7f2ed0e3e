"""One dedicated thread for all of a replica's torch work.

Torch's CPU kernels run on an OpenMP team, and libgomp gives every thread that starts a
parallel region its own team. Once a process manages more OpenMP threads than it has CPUs,
libgomp stops spinning at barriers and puts its threads to sleep instead, which costs a pair of
context switches for every small kernel. A replica that loaded its model on one thread and then
ran ``generate`` on another (``asyncio.to_thread``) had two teams on two cores: BLIP-base ran at
165% CPU with about 900 sleeps a second per thread, and served throughput lost 15% to the same
``generate`` run on one thread (docs/benchmarks.md). Loading, warm-up and every inference call
on the same single thread keep one team, and the event loop stays free while it works.

Outside a replica (benchmarks' raw model, tests), ``ModelThread(name, inline=True)`` runs
every call on the caller's own thread instead: the same code path without a second thread.
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

    def __init__(self, name: str, *, inline: bool = False) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._thread_ident: int | None = None
        if not inline:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-model")
            self._thread_ident = self._executor.submit(threading.get_ident).result()

    @property
    def inline(self) -> bool:
        """Whether calls run on the caller's thread (no thread of its own)."""
        return self._executor is None

    def call(self, function: Callable[..., ResultT], *args: object) -> ResultT:
        """Run ``function(*args)`` on the model thread and wait for it (from any other thread;
        on the model thread itself, or inline, it just runs)."""
        if self._executor is None or threading.get_ident() == self._thread_ident:
            return function(*args)
        return self._executor.submit(function, *args).result()

    async def run(self, function: Callable[..., ResultT], *args: object) -> ResultT:
        """Await ``function(*args)`` on the model thread without blocking the event loop
        (inline: it runs at once, blocking the loop)."""
        if self._executor is None:
            return function(*args)
        return await asyncio.wrap_future(self._executor.submit(function, *args))

    def shutdown(self) -> None:
        """Let queued work finish, then end the thread."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
