"""Chat replies on a text-generating replica: batched generation, token streaming, per-row
limits, stop strings and cancellation.

:class:`ChatEntryPoints` gives a :class:`~deployments.replica.ModelReplica` family two entry
points over one ``@serve.batch`` queue: ``chat`` (the whole reply) and ``chat_stream`` (the
reply as it is generated, token by token), so streamed and whole requests share batches. The
family writes :meth:`ChatEntryPoints.chat_rows`, usually with :func:`reply_rows`.

One ``generate`` call serves a batch: it runs to the longest ``max_tokens`` of its rows, and
:class:`ReplyRows` (a stopping criterion, called after every step with the new tokens) ends
each row on its own: at the end of the model's turn, its own ``max_tokens``, its first stop
string, or when its client has gone away. It decodes each row's text as it grows and
publishes what is certain (text that could still become a stop string, or an unfinished
UTF-8 sequence, waits for the next token).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ray import serve

from vlgraph.messages import ChatDelta, ChatRequest, ChatResult, FinishReason

#: Receives each new piece of a streamed reply, on the model thread.
Publish = Callable[[str], None]

#: What batch-mates must share: greedy or the same sampling settings; a seeded request runs
#: alone so that its seed alone decides its reply.
SamplingKey = tuple[Any, ...]


@dataclass
class ChatCall:
    """A chat request in the replica's batch queue, with where its stream goes (``None``
    for a whole reply) and whether its client has gone away."""

    request: ChatRequest
    publish: Publish | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)


def sampling_key(call: ChatCall) -> SamplingKey:
    """Calls with equal keys may share one ``generate`` call."""
    request = call.request
    if not request.temperature:
        return ("greedy",)
    if request.seed is not None:
        return ("seeded", id(call))
    return ("sampled", request.temperature, request.top_p)


def sampling_kwargs(request: ChatRequest) -> dict[str, Any]:
    """``generate`` keyword arguments for the request's sampling settings."""
    if not request.temperature:
        return {"do_sample": False}
    kwargs: dict[str, Any] = {"do_sample": True, "temperature": request.temperature, "top_k": 0}
    if request.top_p is not None:
        kwargs["top_p"] = request.top_p
    return kwargs


class ChatEntryPoints:
    """``chat`` and ``chat_stream`` over one batch queue; the family writes
    :meth:`chat_rows`."""

    async def chat(self, request: ChatRequest) -> ChatResult:
        """The whole reply to one conversation; concurrent calls are batched together. A
        caller that gives up (cancelled) stops its row at the next token."""
        call = ChatCall(request)
        try:
            return await self._chat_batch(call)
        finally:
            call.cancelled.set()

    async def chat_stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        """The reply as it is generated: a :class:`ChatDelta` per new piece of text, then one
        carrying the result (finish reason and token counts, or the error). Closing the
        iterator stops the generation of this row at its next token."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()

        def publish(text: str) -> None:
            try:
                loop.call_soon_threadsafe(pieces.put_nowait, text)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                call.cancelled.set()

        call = ChatCall(request, publish)
        work = asyncio.ensure_future(self._chat_batch(call))
        # The model thread publishes every piece before the batch's result comes back.
        work.add_done_callback(lambda _: pieces.put_nowait(None))
        try:
            while (piece := await pieces.get()) is not None:
                yield ChatDelta(text=piece)
            yield ChatDelta(result=await work)
        finally:
            call.cancelled.set()

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _chat_batch(self, calls: list[ChatCall]) -> list[ChatResult]:
        return await self.run_batch(ChatResult, self.chat_rows, calls)

    def chat_rows(self, calls: list[ChatCall]) -> list[ChatResult]:
        """One result per call, in order (runs on the model thread)."""
        raise NotImplementedError


def group_calls(calls: Sequence[ChatCall], key: Callable[[ChatCall], Any]) -> list[list[int]]:
    """Indices of ``calls`` grouped by ``key``, groups in order of first appearance."""
    groups: dict[Any, list[int]] = {}
    for index, call in enumerate(calls):
        groups.setdefault(key(call), []).append(index)
    return list(groups.values())


class _Reply:
    """One row's reply as it grows: its tokens, its text, and how much of it is published."""

    def __init__(self, call: ChatCall, max_tokens: int, decode: Callable[[list[int]], str]):
        self.call = call
        self.max_tokens = max_tokens
        self.decode = decode
        self.tokens: list[int] = []
        self.text = ""
        self.published = 0
        self.finish: FinishReason | None = None

    @property
    def done(self) -> bool:
        return self.finish is not None or self.call.cancelled.is_set()

    def add(self, token: int, end_of_turn: bool) -> None:
        """Take the next generated token (or the end of the model's turn)."""
        if end_of_turn:
            self.finish = "stop"
        else:
            self.tokens.append(token)
            self.text = self.decode(self.tokens).lstrip()
            cut = _first_stop(self.text, self.call.request.stop)
            if cut is not None:
                self.text = self.text[:cut]
                self.finish = "stop"
            elif len(self.tokens) >= self.max_tokens:
                self.finish = "length"
        self._publish()

    def _publish(self) -> None:
        if self.call.publish is None:
            return
        certain = len(self.text)
        if self.finish is None:
            certain -= _held_back(self.text, self.call.request.stop)
        if certain > self.published:
            self.call.publish(self.text[self.published : certain])
            self.published = certain


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the first stop string starts in ``text``, or None."""
    found = [index for index in (text.find(stop) for stop in stops if stop) if index >= 0]
    return min(found) if found else None


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of ``text`` must wait: an unfinished UTF-8 sequence
    (decoded as U+FFFD) or the start of a stop string."""
    held = len(text) - len(text.rstrip("\ufffd"))
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:length]):
                held = max(held, length)
                break
    return held


class ReplyRows:
    """A stopping criterion for ``generate`` that follows each row's reply: it takes every
    step's new tokens, publishes the streamed rows' new text, and ends each row on its own."""

    def __init__(
        self,
        calls: Sequence[ChatCall],
        max_tokens: Sequence[int],
        end_of_turn: set[int],
        decode: Callable[[list[int]], str],
    ):
        self.replies = [
            _Reply(call, limit, decode) for call, limit in zip(calls, max_tokens, strict=True)
        ]
        self._end_of_turn = end_of_turn

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        newest = input_ids[:, -1].tolist()
        for reply, token in zip(self.replies, newest, strict=True):
            if not reply.done:
                reply.add(token, token in self._end_of_turn)
        return torch.tensor([reply.done for reply in self.replies], device=input_ids.device)

    def criteria(self) -> Any:
        """This, as ``generate``'s ``stopping_criteria``."""
        from transformers import StoppingCriteriaList

        return StoppingCriteriaList([self])

    def results(self, prompt_tokens: Sequence[int]) -> list[ChatResult]:
        """Each row's result: its text, why it ended and its token counts."""
        return [
            ChatResult(
                text=reply.text,
                finish_reason=reply.finish or "length",
                prompt_tokens=prompt,
                completion_tokens=len(reply.tokens),
            )
            for reply, prompt in zip(self.replies, prompt_tokens, strict=True)
        ]
