"""The skeleton every model replica shares; a family module writes only its own model code.

:class:`ModelReplica` owns what used to be copied into each deployment module: the replica's
one model thread (:mod:`vlgraph.model_thread`), the torch thread limit, device and dtype,
the checkpoint folder (:func:`~vlgraph.model_source.resolve_model_path`), loading and warm-up
on the model thread, ``reconfigure`` of the ``@serve.batch`` methods from ``user_config``,
and per-item errors: a batch never raises, each item gets its value or an
:class:`~vlgraph.errors.ItemError`.

A family subclass declares its batched methods in ``batched_methods`` and writes
:meth:`ModelReplica.load` (the checkpoint into ``self``), :meth:`ModelReplica.warm_up` and its
core batch functions (pre-processing, the model call, post-processing), which run
synchronously on whatever thread calls them. Its ``@serve.batch`` methods hand a core
function to :meth:`ModelReplica.run_batch`; its ``*_now`` methods to
:meth:`ModelReplica.run_now`.

Text-generating families also check each prompt against the model's own context length
(:func:`context_length`) before the call: a prompt that does not fit gets a 422
``prompt_too_long_for_model`` naming both numbers instead of failing inside the model.

Outside Ray, :meth:`ModelReplica.in_process` builds the same replica with no thread of its
own (the benchmarks' raw model and naive server call its core this way).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, TypeVar

from ray import serve

from deployments.grouped_batches import GroupRunner, run_in_groups
from vlgraph.config import BatchingConfig, ModelFamilyConfig
from vlgraph.errors import InferenceError, ItemError, ServiceError
from vlgraph.messages import CaptionRequest, CaptionResult, FlagRequest, FlagResult
from vlgraph.model_source import resolve_model_path
from vlgraph.model_thread import ModelThread
from vlgraph.torch_runtime import apply_thread_limit, select_device, select_dtype

logger = logging.getLogger("ray.serve")

RequestT = TypeVar("RequestT")
ResultT = TypeVar("ResultT", bound="ItemResult")

#: A ``tokenizer.model_max_length`` above this is transformers' "no limit" placeholder.
_SANE_MODEL_MAX_LENGTH = 1_000_000


class ItemResult(Protocol):
    """A per-item result message: built from an error alone (``Result(error=...)``)."""

    error: ItemError | None


class PromptTooLongError(ServiceError):
    """422: the prompt, with its image tokens and the tokens to generate, exceeds the
    positions the model reads."""

    status = 422
    code = "prompt_too_long_for_model"


def context_length(model_config: Any, tokenizer: Any = None) -> int | None:
    """Token positions the model's text side reads, from its own config.

    ``max_position_embeddings`` of the text config (of the config itself for text-only
    models); else the tokenizer's ``model_max_length`` when it is a real limit; else ``None``
    (no limit known, nothing is checked)."""
    text_config = model_config
    get_text_config = getattr(model_config, "get_text_config", None)
    if callable(get_text_config):
        text_config = get_text_config()
    positions = getattr(text_config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        return positions
    longest = getattr(tokenizer, "model_max_length", None)
    if isinstance(longest, int) and 0 < longest <= _SANE_MODEL_MAX_LENGTH:
        return longest
    return None


class ModelReplica:
    """Base class of every model deployment: thread, device, loading, batching, errors.

    Subclasses set ``batched_methods`` (names of their ``@serve.batch`` methods) and
    ``failure_message``, and override :meth:`load` and :meth:`warm_up`. After loading,
    ``self._torch``, ``self._device`` and ``self._dtype`` are set, ``self._config`` is the
    family's config and ``self._name`` the model's key in the app config.
    """

    #: Names of the ``@serve.batch`` methods that :meth:`reconfigure` tunes.
    batched_methods: ClassVar[tuple[str, ...]] = ()
    #: What a client reads when the model call raises (500 ``inference_failed``).
    failure_message: ClassVar[str] = "the model failed on this input"
    #: Set by :meth:`in_process`: every call runs on the caller's thread.
    _inline: bool = False
    #: What identifies the loaded checkpoint, set by families whose outputs are stored (the
    #: encoders: search vectors carry it); see :func:`~vlgraph.model_source.checkpoint_fingerprint`.
    fingerprint: str | None = None

    def __init__(self, config: ModelFamilyConfig, checkpoint_cache_dir: str, name: str) -> None:
        self._config = config
        self._name = name
        self._context: int | None = None
        self._model_thread = ModelThread(name, inline=self._inline)
        self._model_thread.call(self._start, checkpoint_cache_dir)
        self.reconfigure(config.user_config())

    @classmethod
    def in_process(cls, *args: Any, **kwargs: Any) -> Self:
        """This replica built without Ray or a model thread of its own (same arguments as the
        constructor): loading and every ``*_now`` call run on the caller's thread."""
        replica = cls.__new__(cls)
        replica._inline = True
        replica.__init__(*args, **kwargs)  # type: ignore[misc]
        return replica

    def _start(self, checkpoint_cache_dir: str) -> None:
        import torch

        config = self._config
        apply_thread_limit(config)
        path = resolve_model_path(
            self._name, config.source, Path(checkpoint_cache_dir), config.revision
        )
        self._torch = torch
        self._device = select_device(config)
        self._dtype = select_dtype(config, self._device)
        self.load(path)
        self.warm_up()

    async def checkpoint_fingerprint(self) -> str | None:
        """The loaded checkpoint's fingerprint (None for families that do not set one)."""
        return self.fingerprint

    def load(self, path: str) -> None:
        """Load the checkpoint folder ``path`` onto ``self._device`` in ``self._dtype``
        (runs on the model thread)."""
        raise NotImplementedError

    def warm_up(self) -> None:
        """One small call after loading, so the first request does not pay for lazy set-up."""

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply batch size and wait time live (``user_config`` in the Serve config)."""
        methods = [getattr(self, name) for name in self.batched_methods]
        BatchingConfig.model_validate(user_config.get("batching", {})).apply(*methods)

    # ---- running core functions, never raising for an item

    async def run_batch(
        self,
        result_type: Callable[..., ResultT],
        core: Callable[..., list[ResultT]],
        requests: list[Any],
        *extra: Any,
    ) -> list[ResultT]:
        """Await ``core(requests, *extra)`` on the model thread (the body of a
        ``@serve.batch`` method); should it raise anyway, every item gets a 500 result
        instead of the whole batch failing."""
        return await self._model_thread.run(self._guarded, result_type, core, requests, *extra)

    def run_now(
        self,
        result_type: Callable[..., ResultT],
        core: Callable[..., list[ResultT]],
        requests: list[Any],
        *extra: Any,
    ) -> list[ResultT]:
        """``core(requests, *extra)`` on the model thread, waited for, as :meth:`run_batch`."""
        return self._model_thread.call(self._guarded, result_type, core, requests, *extra)

    def _guarded(
        self,
        result_type: Callable[..., ResultT],
        core: Callable[..., list[ResultT]],
        requests: list[Any],
        *extra: Any,
    ) -> list[ResultT]:
        try:
            return core(requests, *extra)
        except ServiceError as error:
            failure = error.as_item_error()
        except Exception:
            logger.exception("%s failed on a batch of %d", self._name, len(requests))
            failure = self.failure()
        return [result_type(error=failure) for _ in requests]

    def failure(self) -> ItemError:
        """The 500 item error of a model call that raised."""
        return InferenceError(self.failure_message).as_item_error()

    def in_groups(
        self,
        result_type: Callable[..., ResultT],
        field: str,
        image_sets: list[tuple[bytes, ...]],
        instructions: list[str | None],
        run: GroupRunner,
        *,
        multi_image: bool = False,
        group_key: Callable[[str | None], Hashable] | None = None,
    ) -> list[ResultT]:
        """Decode each row's images, one ``run`` per group of rows that batch exactly
        (:func:`~deployments.grouped_batches.run_in_groups`), and a ``result_type`` per row:
        its value under ``field``, or its error."""
        options: dict[str, Any] = {} if group_key is None else {"group_key": group_key}
        outcomes = run_in_groups(
            image_sets,
            instructions,
            run,
            multi_image=multi_image,
            model_name=self._name,
            failure_message=self.failure_message,
            **options,
        )
        return [
            result_type(**{field: value}) if error is None else result_type(error=error)
            for value, error in outcomes
        ]

    # ---- prompts against the model's context length

    def set_context_length(self, model: Any, tokenizer: Any = None) -> None:
        """Read the positions the model reads (:func:`context_length`); call from ``load``."""
        self._context = context_length(model.config, tokenizer)

    def context_refusals(
        self,
        prompt_tokens: Sequence[int],
        new_tokens: int,
        *,
        what: str = "the prompt",
        with_image: bool = True,
    ) -> list[ItemError | None]:
        """Per row, ``None`` when ``prompt_tokens`` plus the ``new_tokens`` to generate fit
        the model's context, else a 422 ``prompt_too_long_for_model`` with both numbers."""
        limit = self._context
        if limit is None:
            return [None] * len(prompt_tokens)
        image = " with its image" if with_image else ""
        generated = f" including the {new_tokens} it generates" if new_tokens else ""
        refusals: list[ItemError | None] = []
        for tokens in prompt_tokens:
            if tokens + new_tokens <= limit:
                refusals.append(None)
                continue
            message = (
                f"{what} takes {tokens} tokens{image}; {self._name} reads at most {limit}"
                f"{generated}; shorten it"
            )
            refusals.append(PromptTooLongError(message).as_item_error())
        return refusals

    @staticmethod
    def fitting_rows(
        refusals: list[ItemError | None],
        run: Callable[..., list[Any]],
        *columns: Sequence[Any],
    ) -> list[Any]:
        """``run`` on the rows without a refusal (each of ``columns`` cut to them), and the
        refusal in place of each other row's value."""
        kept = [index for index, refusal in enumerate(refusals) if refusal is None]
        values = iter(run(*[[column[i] for i in kept] for column in columns]) if kept else ())
        return [next(values) if refusal is None else refusal for refusal in refusals]


class CaptionEntryPoints:
    """The captioning entry points of a :class:`ModelReplica` family: ``caption`` (one
    image; concurrent calls batched by ``@serve.batch``) and ``caption_now`` (a list, as one
    batch). The family writes :meth:`caption_rows`."""

    async def caption(self, request: CaptionRequest) -> CaptionResult:
        """Caption one image; concurrent calls are batched together."""
        return await self._caption_batch(request)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _caption_batch(self, requests: list[CaptionRequest]) -> list[CaptionResult]:
        return await self.run_batch(CaptionResult, self.caption_rows, requests)

    def caption_now(self, requests: list[CaptionRequest]) -> list[CaptionResult]:
        """Caption a list of images as one batch, waiting for the model thread."""
        return self.run_now(CaptionResult, self.caption_rows, requests)

    def caption_rows(self, requests: list[CaptionRequest]) -> list[CaptionResult]:
        """One result per request, in order (runs on the model thread)."""
        raise NotImplementedError


class FlagEntryPoints:
    """The yes/no flag entry points of a :class:`ModelReplica` family: ``flag`` (batched)
    and ``flag_now``. The family writes :meth:`flag_rows`."""

    async def flag(self, request: FlagRequest) -> FlagResult:
        """Answer a yes/no question about one image; concurrent calls are batched."""
        return await self._flag_batch(request)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _flag_batch(self, requests: list[FlagRequest]) -> list[FlagResult]:
        return await self.run_batch(FlagResult, self.flag_rows, requests)

    def flag_now(self, requests: list[FlagRequest]) -> list[FlagResult]:
        """Answer a list of flag questions as one batch, waiting for the model thread."""
        return self.run_now(FlagResult, self.flag_rows, requests)

    def flag_rows(self, requests: list[FlagRequest]) -> list[FlagResult]:
        """One result per request, in order (runs on the model thread)."""
        raise NotImplementedError
