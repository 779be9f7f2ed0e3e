"""Every torch call of a replica runs on its one model thread (one OpenMP team; see
vlgraph/model_thread.py for why a second thread cost 15% of BLIP's throughput)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

import deployments.replica as replica
from deployments.blip_caption import BlipCaptioner
from tests.support.common import jpeg_bytes, noise_image
from vlgraph.config import BlipCaptionConfig
from vlgraph.messages import CaptionRequest
from vlgraph.model_thread import ModelThread


def test_call_and_run_use_one_thread_that_is_not_the_caller() -> None:
    model_thread = ModelThread("test")
    seen = {model_thread.call(threading.get_ident)}
    seen |= {asyncio.run(model_thread.run(threading.get_ident)) for _ in range(3)}
    seen |= {model_thread.call(threading.get_ident) for _ in range(3)}
    assert len(seen) == 1
    assert seen != {threading.get_ident()}
    model_thread.shutdown()


def test_call_from_the_model_thread_runs_inline_instead_of_deadlocking() -> None:
    model_thread = ModelThread("test")
    nested = model_thread.call(lambda: model_thread.call(threading.get_ident))
    assert nested == model_thread.call(threading.get_ident)
    model_thread.shutdown()


def test_errors_reach_the_caller() -> None:
    model_thread = ModelThread("test")
    with pytest.raises(ZeroDivisionError):
        model_thread.call(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        asyncio.run(model_thread.run(lambda: 1 / 0))
    assert model_thread.call(lambda: 2) == 2  # the thread survives a failed call
    model_thread.shutdown()


def test_an_inline_model_thread_runs_on_the_callers_thread() -> None:
    model_thread = ModelThread("test", inline=True)
    assert model_thread.inline
    assert model_thread.call(threading.get_ident) == threading.get_ident()
    assert asyncio.run(model_thread.run(threading.get_ident)) == threading.get_ident()
    model_thread.shutdown()


def test_blip_loads_warms_up_and_generates_on_its_model_thread(
    checkpoint_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: dict[str, set[int]] = {"load": set(), "generate": set()}
    apply_thread_limit = replica.apply_thread_limit

    def record_load(config: BlipCaptionConfig) -> None:
        threads["load"].add(threading.get_ident())
        apply_thread_limit(config)

    monkeypatch.setattr(replica, "apply_thread_limit", record_load)
    config = BlipCaptionConfig(
        source="tiny:blip-caption", device="cpu", generation={"max_new_tokens": 4}
    )
    captioner = BlipCaptioner(config, str(checkpoint_cache))
    generate = captioner._model.generate

    def record_generate(*args: object, **kwargs: object) -> object:
        threads["generate"].add(threading.get_ident())
        return generate(*args, **kwargs)

    monkeypatch.setattr(captioner._model, "generate", record_generate)
    request = CaptionRequest(image=jpeg_bytes(noise_image(3)))

    # The body of the @serve.batch method (the decorator itself needs a replica context).
    asyncio.run(BlipCaptioner._caption_batch.__wrapped__(captioner, [request] * 3))
    captioner.caption_now([request])
    assert len(threads["load"]) == 1
    assert threads["generate"] == threads["load"]
    assert threads["load"] != {threading.get_ident()}


def test_in_process_replica_loads_and_generates_on_the_callers_thread(
    checkpoint_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The benchmarks' raw model: the replica's own core, no Ray and no second thread."""
    config = BlipCaptionConfig(
        source="tiny:blip-caption", device="cpu", generation={"max_new_tokens": 4}
    )
    captioner = BlipCaptioner.in_process(config, str(checkpoint_cache))
    served = BlipCaptioner(config, str(checkpoint_cache))
    threads: set[int] = set()
    generate = captioner._model.generate

    def record_generate(*args: object, **kwargs: object) -> object:
        threads.add(threading.get_ident())
        return generate(*args, **kwargs)

    monkeypatch.setattr(captioner._model, "generate", record_generate)
    request = CaptionRequest(image=jpeg_bytes(noise_image(3)))
    assert captioner.caption_now([request]) == served.caption_now([request])
    assert threads == {threading.get_ident()}
