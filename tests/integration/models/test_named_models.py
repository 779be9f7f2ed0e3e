"""Models a profile names itself, of architectures no code of vlgraph names: served side by
side with BLIP, listed with the capabilities their checkpoints give them, and reached through
every route their task allows: for chat models the documents' captioning and flag routes,
collective captions and ``/v1/chat/completions`` whole and streamed through the official
client, with the model's own limits refused with a 422 that names them; for an embedding
model (SigLIP) the documents' ``/encode_text`` and ``/encode_image`` and ``/v1/embeddings``,
texts and images in one space. Batches equal single calls."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from tests.support.common import jpeg_bytes, noise_image
from tests.support.named_apps import named_model, served_named_models
from tests.support.openai_api import data_uri, image_message

pytestmark = pytest.mark.integration

#: Named model -> its tiny checkpoint: one per architecture the registry does not name.
NAMED = {"qwen": "tiny:qwen2_5_vl", "smol": "tiny:smolvlm"}
#: Model types the checkpoints derive to (SmolVLM's checkpoints are Idefics3).
MODEL_TYPES = {"qwen": "qwen2_5_vl", "smol": "idefics3"}
#: Named models whose tiny checkpoints are trained on the world (the others are random).
TRAINED_ON_WORLD = {"smol"}


@pytest.fixture(scope="module")
def named_url(ray_instance: int, checkpoint_cache: Path, image_root: Path) -> Iterator[str]:
    """BLIP and the named chat models, nothing else."""
    chat = {
        "generation": {"max_new_tokens": 6},
        "batching": {"max_batch_size": 4, "batch_wait_timeout_s": 0.05},
    }
    named = {name: named_model("chat", source, **chat) for name, source in NAMED.items()}
    named["sig"] = named_model("embed", "tiny:siglip", label="SigLIP")
    with served_named_models(ray_instance, checkpoint_cache, image_root, "named", named) as url:
        yield url


def upload(url: str, model: str, count: int, route: str = "caption-images", **params):
    files = [
        ("images", (f"{i}.jpg", jpeg_bytes(noise_image(70 + i)), "image/jpeg"))
        for i in range(count)
    ]
    return httpx.post(
        f"{url}/api/{route}", params={"model": model, **params}, files=files, timeout=60
    )


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_named_models_are_listed_with_what_their_checkpoints_can_do(named_url: str) -> None:
    models = httpx.get(f"{named_url}/api/models", timeout=30).json()["models"]
    assert [model["name"] for model in models] == ["blip", *NAMED, "sig"]
    sig = models[-1]
    assert set(sig["capabilities"]) == {"embed_image", "embed_text"}, sig
    assert (sig["label"], sig["deployment"]) == ("SigLIP", "sig_embed")
    for model in models[1:-1]:
        assert set(model["capabilities"]) == {"caption", "flag", "collective", "chat"}, model
        assert model["deployment"] == f"{model['name']}_chat" and model["label"] == model["name"]
        assert model["random_weights"] is (model["name"] not in TRAINED_ON_WORLD)
    listed = {model.id: model for model in client(named_url).models.list()}
    for name in NAMED:
        chat = listed[name].model_extra["chat"]
        assert chat["mode"] == "conversation" and chat["multi_turn"] is True, chat
    health = httpx.get(f"{named_url}/healthz", timeout=30).json()["models"]
    assert all(health[name]["reachable"] is True for name in NAMED)


@pytest.mark.parametrize("name", list(NAMED))
def test_captions_through_the_documents_route_batch_as_they_answer_alone(
    named_url: str, name: str
) -> None:
    batched = upload(named_url, name, 3)
    assert batched.status_code == 200, batched.text
    results = batched.json()["results"]
    assert len(results) == 3 and all(item["error"] is None for item in results), results
    singles = [upload(named_url, name, 1).json()["results"][0]["caption"] for _ in range(1)]
    assert results[0]["caption"] == singles[0]
    question = {"flag_caption_prompt": "is there a circle?"}
    flagged = upload(named_url, name, 2, **question)
    assert flagged.status_code == 200, flagged.text
    flags = [item["flagged"] for item in flagged.json()["results"]]
    assert all(isinstance(flag, bool) for flag in flags)
    assert upload(named_url, name, 1, **question).json()["results"][0]["flagged"] == flags[0]
    together = upload(named_url, name, 2, route="caption-collective-images")
    assert together.status_code == 200, together.text
    assert together.json()["count"] == 2


@pytest.mark.parametrize("name", list(NAMED))
def test_chat_whole_and_streamed_through_the_openai_client(named_url: str, name: str) -> None:
    messages = [
        {"role": "system", "content": "You answer briefly."},
        image_message("What is this?", data_uri(noise_image(80)), data_uri(noise_image(81))),
    ]
    whole = client(named_url).chat.completions.create(model=name, messages=messages, max_tokens=5)
    assert whole.model == name and whole.choices[0].finish_reason in ("stop", "length")
    assert 0 < whole.usage.completion_tokens <= 5 and whole.usage.prompt_tokens > 0
    stream = client(named_url).chat.completions.create(
        model=name,
        messages=messages,
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_a_conversation_past_the_models_context_is_a_422_with_the_numbers(
    named_url: str,
) -> None:
    long_text = " ".join(["describe the colours of this picture in detail"] * 80)
    response = httpx.post(
        f"{named_url}/v1/chat/completions",
        json={
            "model": "qwen",
            "messages": [image_message(long_text, data_uri(noise_image(82)))],
            "max_tokens": 5,
        },
        timeout=60,
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "prompt_too_long_for_model", error
    assert "reads at most 512" in error["message"], error


def test_an_embedding_model_embeds_texts_and_images_through_every_route(named_url: str) -> None:
    texts = ["a red circle", "ein blauer Stern"]
    images = [jpeg_bytes(noise_image(90)), jpeg_bytes(noise_image(91))]
    encoded_texts = httpx.post(
        f"{named_url}/encode_text", json={"text": texts, "model": "sig", "normalize": True}
    ).json()
    assert (encoded_texts["model"], encoded_texts["dimension"]) == ("sig", 32)
    b64 = [base64.b64encode(data).decode("ascii") for data in images]
    encoded_images = httpx.post(
        f"{named_url}/encode_image", json={"image_b64": b64, "model": "sig", "normalize": True}
    ).json()
    assert len(encoded_images["embeddings"]) == 2
    one = httpx.post(f"{named_url}/encode_text", json={"text": texts[1], "model": "sig"}).json()
    assert len(one["embedding"]) == 32 and one["normalized"] is False

    by_text = client(named_url).embeddings.create(model="sig", input=texts)
    assert by_text.model == "sig" and by_text.usage.prompt_tokens > 0
    np.testing.assert_allclose(
        [row.embedding for row in by_text.data], encoded_texts["embeddings"], atol=1e-5
    )
    by_image = client(named_url).embeddings.create(
        model="sig",
        input=[data_uri(data) for data in images],
        extra_body={"modality": "image"},
    )
    np.testing.assert_allclose(
        [row.embedding for row in by_image.data], encoded_images["embeddings"], atol=1e-5
    )
    assert by_image.usage.prompt_tokens == 0


def test_the_embedding_routes_offer_the_named_model_and_refuse_others(named_url: str) -> None:
    spec = httpx.get(f"{named_url}/openapi.json", timeout=30).json()
    schemas = spec["components"]["schemas"]
    assert schemas["EncodeTextRequest"]["properties"]["model"]["enum"] == ["sig"]
    assert schemas["EncodeImageRequest"]["properties"]["model"]["enum"] == ["sig"]
    refused = httpx.post(f"{named_url}/encode_text", json={"text": "a", "model": "qwen"})
    assert refused.status_code in (400, 422), refused.text
    assert "qwen" in refused.json()["detail"]
    not_embedding = httpx.post(
        f"{named_url}/v1/embeddings", json={"model": "qwen", "input": "a red circle"}
    )
    assert not_embedding.status_code == 400, not_embedding.text
    error = not_embedding.json()["error"]
    assert error["code"] == "embeddings_not_supported" and "sig" in error["message"], error
