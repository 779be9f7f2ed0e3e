"""The model gateway without Ray: lookup errors, and the cache's get, call and put."""

from __future__ import annotations

import asyncio

import pytest

from deployments.ingress.gateway import ModelGateway
from vlgraph.cache import MemoryCache, ResultCache
from vlgraph.errors import BadRequestError, ItemError, ServiceError
from vlgraph.served_models import Capability, ModelCatalog, ServedModel

CAPTION, FLAG, COLLECTIVE = Capability.CAPTION, Capability.FLAG, Capability.COLLECTIVE
KNOWN = {
    "blip": frozenset({CAPTION, FLAG}),
    "gemma": frozenset({CAPTION, FLAG, COLLECTIVE}),
    "intern_vlm": frozenset({CAPTION, FLAG, COLLECTIVE}),
    "sd": frozenset({Capability.GENERATE}),
}


def gateway(cache: ResultCache | None = None, **fingerprints: dict) -> ModelGateway:
    """A profile serving blip and intern_vlm only; handles are stand-ins (lookup only)."""
    served = tuple(
        ServedModel(name, name.upper(), f"{name}_caption", KNOWN[name])
        for name in ("blip", "intern_vlm")
    )
    return ModelGateway(
        {"blip": "blip-handle", "intern_vlm": "intern-handle"},
        ModelCatalog(known=KNOWN, served=served),
        profile="small",
        cache=cache,
        fingerprints=fingerprints,
    )


def test_a_served_model_is_found_by_name_and_capability() -> None:
    assert gateway().handle("intern_vlm", COLLECTIVE) == "intern-handle"
    assert gateway().served(COLLECTIVE) == ("intern_vlm",)
    assert gateway().served() == ("blip", "intern_vlm")


def test_an_unknown_name_is_a_422_listing_the_known_ones() -> None:
    with pytest.raises(ServiceError) as refused:
        gateway().handle("gpt", CAPTION)
    assert refused.value.status == 422 and refused.value.code == "unknown_model"
    assert "blip, gemma, intern_vlm" in refused.value.message


def test_a_model_without_the_capability_is_a_400_naming_the_able_ones() -> None:
    with pytest.raises(BadRequestError) as refused:
        gateway().handle("blip", COLLECTIVE)
    assert refused.value.code == "collective_not_supported"
    assert "model=gemma or model=intern_vlm, not blip" in refused.value.message


def test_a_known_model_the_profile_leaves_out_is_model_not_served() -> None:
    with pytest.raises(BadRequestError) as refused:
        gateway().handle("gemma", CAPTION)
    assert refused.value.code == "model_not_served"
    assert "small profile" in refused.value.message
    assert "blip, intern_vlm" in refused.value.message


def test_no_pipeline_is_a_clear_400() -> None:
    assert not gateway().has_pipeline()
    with pytest.raises(BadRequestError, match="similar-image pipeline"):
        gateway().pipeline()


def run(coroutine):
    return asyncio.run(coroutine)


def test_cached_answers_are_computed_once_per_input_model_settings_and_inputs() -> None:
    cache = ResultCache(backend=MemoryCache(100), ttl_s=60)
    calls: list[str] = []

    def compute(answer: str):
        async def call() -> dict:
            calls.append(answer)
            return {"caption": answer}

        return call

    first = gateway(cache)
    assert run(first.cached("blip", b"image", compute("a"), prompt="p")) == (
        {"caption": "a"},
        False,
    )
    assert run(first.cached("blip", b"image", compute("b"), prompt="p")) == ({"caption": "a"}, True)
    # Another prompt, another image, a set of images, a text, another model: other entries.
    assert run(first.cached("blip", b"image", compute("c"), prompt="q"))[1] is False
    assert run(first.cached("blip", b"other", compute("d"), prompt="p"))[1] is False
    assert run(first.cached("blip", (b"image",), compute("e"), prompt="p"))[1] is False
    assert run(first.cached("blip", "image", compute("f"), prompt="p"))[1] is False
    assert run(first.cached("intern_vlm", b"image", compute("g"), prompt="p"))[1] is False
    # Another setting of the same model (e.g. max_new_tokens) is another entry too.
    changed = gateway(cache, blip={"max_new_tokens": 5})
    assert run(changed.cached("blip", b"image", compute("h"), prompt="p"))[1] is False
    assert calls == ["a", "c", "d", "e", "f", "g", "h"]


def test_errors_are_returned_uncached_and_use_cache_false_always_computes() -> None:
    cache = ResultCache(backend=MemoryCache(100), ttl_s=60)
    error = ItemError(code="inference_failed", message="the model failed", status=500)
    outcomes: list = [error, {"caption": "late"}]

    async def compute() -> dict | ItemError:
        return outcomes.pop(0)

    assert run(gateway(cache).cached("blip", b"x", compute)) == error
    assert run(gateway(cache).cached("blip", b"x", compute)) == ({"caption": "late"}, False)

    fresh: list[int] = []

    async def counted() -> dict:
        fresh.append(1)
        return {"caption": "new"}

    for _ in range(2):
        assert run(gateway(cache).cached("blip", b"y", counted, use_cache=False))[1] is False
    assert len(fresh) == 2
