"""POST /v1/chat/completions through the official ``openai`` client (sync and async,
streamed and whole) and langchain-openai, against the session's live serve.run on the offline
world's trained checkpoints: replies that name what the image shows, token-by-token streams
that add up to the whole reply, usage, limits, restricted chat models and refusals."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from tests.support.common import (
    TEST_IMAGE_HOST,
    RunningApp,
    jpeg_bytes,
    serving_image,
    world_image,
    world_scene,
)
from tests.support.openai_api import (
    async_client,
    check_openai_error,
    image_message,
    sync_client,
    world_uri,
)

pytestmark = pytest.mark.integration

DESCRIBE = "Describe this image in one sentence."
CHAT_MODELS = ["gemma", "intern_vlm", "blip2"]


def chat(app: RunningApp, **body) -> httpx.Response:
    with app.client() as http:
        return http.post("/v1/chat/completions", json=body)


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_reply_names_what_the_image_shows(app: RunningApp, model: str) -> None:
    scene = world_scene(21)
    reply = sync_client(app).chat.completions.create(
        model=model, messages=[image_message(DESCRIBE, world_uri(21))]
    )
    assert reply.object == "chat.completion" and reply.model == model
    (choice,) = reply.choices
    text = choice.message.content
    assert choice.message.role == "assistant" and choice.finish_reason == "stop"
    assert scene.colour in text and scene.background in text, (scene, text)
    usage = reply.usage
    assert usage.prompt_tokens > 10 and 3 <= usage.completion_tokens <= 16, usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@pytest.mark.parametrize("model", ["gemma", "blip2"])
def test_stream_adds_up_to_the_whole_reply_token_by_token(app: RunningApp, model: str) -> None:
    client = sync_client(app)
    messages = [image_message(DESCRIBE, world_uri(22))]
    whole = client.chat.completions.create(model=model, messages=messages)
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert "".join(pieces) == whole.choices[0].message.content
    assert len(pieces) == whole.usage.completion_tokens  # one event per word-sized token
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_async_client_streams_and_answers_concurrently(app: RunningApp) -> None:
    async def run() -> tuple[list[str], list[str]]:
        client = async_client(app)

        async def whole(index: int) -> str:
            reply = await client.chat.completions.create(
                model="intern_vlm", messages=[image_message(DESCRIBE, world_uri(index))]
            )
            return reply.choices[0].message.content

        async def streamed(index: int) -> str:
            stream = await client.chat.completions.create(
                model="intern_vlm",
                messages=[image_message(DESCRIBE, world_uri(index))],
                stream=True,
            )
            return "".join(
                [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
            )

        indices = range(30, 34)
        wholes = await asyncio.gather(*(whole(i) for i in indices))
        streams = await asyncio.gather(*(streamed(i) for i in indices))
        return wholes, streams

    wholes, streams = asyncio.run(run())
    assert wholes == streams
    for index, text in zip(range(30, 34), wholes, strict=True):
        assert world_scene(index).colour in text, (world_scene(index), text)


def test_max_tokens_and_stop_end_the_reply(app: RunningApp) -> None:
    client = sync_client(app)
    messages = [image_message(DESCRIBE, world_uri(23))]
    full = client.chat.completions.create(model="gemma", messages=messages)
    words = full.choices[0].message.content.split()
    short = client.chat.completions.create(model="gemma", messages=messages, max_tokens=2)
    assert short.choices[0].finish_reason == "length"
    assert short.usage.completion_tokens == 2
    assert short.choices[0].message.content == " ".join(words[:2])
    newer = client.chat.completions.create(
        model="gemma", messages=messages, max_completion_tokens=3
    )
    assert newer.usage.completion_tokens == 3
    stopped = client.chat.completions.create(model="gemma", messages=messages, stop=[" on "])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == full.choices[0].message.content.split(" on ")[0]
    chunks = client.chat.completions.create(
        model="gemma", messages=messages, stop=" on ", stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == stopped.choices[0].message.content


def test_seeded_sampling_repeats_and_greedy_is_the_default(app: RunningApp) -> None:
    client = sync_client(app)
    messages = [image_message(DESCRIBE, world_uri(24))]
    greedy = client.chat.completions.create(model="gemma", messages=messages)
    zero = client.chat.completions.create(model="gemma", messages=messages, temperature=0)
    assert greedy.choices[0].message.content == zero.choices[0].message.content
    sampled = [
        client.chat.completions.create(
            model="gemma", messages=messages, temperature=2.0, top_p=1.0, seed=11, max_tokens=12
        )
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]


def test_conversation_history_and_several_images(app: RunningApp) -> None:
    client = sync_client(app)
    first, second = world_scene(25), world_scene(26)
    one = client.chat.completions.create(
        model="gemma", messages=[image_message(DESCRIBE, world_uri(25))]
    )
    history = client.chat.completions.create(
        model="gemma",
        messages=[
            {"role": "system", "content": "You describe images."},
            image_message(DESCRIBE, world_uri(25)),
            {"role": "assistant", "content": one.choices[0].message.content},
            image_message(DESCRIBE, world_uri(26)),
        ],
    )
    assert history.usage.prompt_tokens > 2 * one.usage.prompt_tokens
    assert history.choices[0].message.content
    both = client.chat.completions.create(
        model="intern_vlm",
        messages=[image_message("Describe these images.", world_uri(25), world_uri(26))],
    )
    text = both.choices[0].message.content
    assert first.colour in text and second.colour in text, (first, second, text)


def test_restricted_models_answer_one_image(app: RunningApp) -> None:
    client = sync_client(app)
    scene = world_scene(27)
    answer = client.chat.completions.create(
        model="vqa",
        messages=[image_message(f"what color is the {scene.shape}?", world_uri(27))],
    )
    assert answer.choices[0].message.content == scene.colour
    assert answer.usage is None  # the answerer does not count tokens
    caption = client.chat.completions.create(
        model="blip", messages=[image_message(None, world_uri(27))]
    )
    assert scene.colour in caption.choices[0].message.content
    streamed = client.chat.completions.create(
        model="vqa",
        messages=[image_message("what color is the background?", world_uri(27))],
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == scene.background


def test_images_by_http_url(app: RunningApp) -> None:
    with serving_image(jpeg_bytes(world_image(28))) as base:
        assert TEST_IMAGE_HOST in base
        reply = sync_client(app).chat.completions.create(
            model="gemma", messages=[image_message(DESCRIBE, f"{base}/shape.jpg")]
        )
    assert world_scene(28).colour in reply.choices[0].message.content


def test_langchain_chat_model_sends_an_image(app: RunningApp) -> None:
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI

    model = ChatOpenAI(
        model="gemma", base_url=f"{app.url}/v1", api_key="unused", max_retries=0, temperature=0
    )
    message = HumanMessage(
        content=[
            {"type": "text", "text": DESCRIBE},
            {"type": "image_url", "image_url": {"url": world_uri(29)}},
        ]
    )
    reply = model.invoke([message])
    assert world_scene(29).colour in reply.content, reply
    streamed = "".join(chunk.content for chunk in model.stream([message]))
    assert streamed == reply.content


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n", 2),
        ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
        ("logprobs", True),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("modalities", ["text", "audio"]),
        ("frequency_penalty", 0.5),
        ("response_format", {"type": "json_object"}),
        ("top_k", 5),
    ],
)
def test_fields_that_would_change_the_reply_are_refused(
    app: RunningApp, field: str, value: object
) -> None:
    body = {"model": "gemma", "messages": [image_message(DESCRIBE, world_uri(1))], field: value}
    check_openai_error(chat(app, **body), 400, "unsupported_field", field, field)


def test_neutral_values_of_unsupported_fields_are_accepted(app: RunningApp) -> None:
    reply = sync_client(app).chat.completions.create(
        model="gemma",
        messages=[image_message(DESCRIBE, world_uri(2))],
        n=1,
        logprobs=False,
        frequency_penalty=0,
        presence_penalty=0.0,
        user="someone",
        metadata={"team": "vision"},
        store=False,
    )
    assert reply.choices[0].message.content


def test_refusals_name_the_field(app: RunningApp) -> None:
    uri = world_uri(3)
    client = sync_client(app)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="blip2", messages=[image_message(DESCRIBE, uri, uri)])
    assert refused.value.body["code"] == "one_image_per_conversation"
    cases = [
        ({"model": "clip_image"}, 400, "chat_not_supported", "model"),
        ({"model": "nope"}, 422, "unknown_model", None),
        (
            {"messages": [image_message("what color?", uri), {"role": "user", "content": "x"}]},
            400,
            "restricted_chat_model",
            "messages",
        ),
        (
            {"messages": [{"role": "assistant", "content": "hi"}]},
            400,
            "last_message_not_user",
            "messages",
        ),
        ({"temperature": 0.7}, 400, "unsupported_field", "temperature"),
        ({"max_tokens": 3}, 400, "unsupported_field", "max_tokens"),
        ({"messages": [image_message("", uri)]}, 400, "empty_question", "messages[0].content"),
    ]
    for change, status, code, param in cases:
        body = {"model": "vqa", "messages": [image_message("what color?", uri)], **change}
        check_openai_error(chat(app, **body), status, code, param)
    check_openai_error(
        chat(app, model="gemma", messages=[image_message(DESCRIBE, uri)], stop=list("abcde")),
        400,
        "too_many_stop_strings",
        "stop",
    )
    check_openai_error(
        chat(app, model="gemma", messages=[{"role": "user", "content": "hi"}], temperature="1"),
        422,
        "invalid_request",
        "temperature",
    )


def test_prompts_past_the_models_context_get_422_with_the_numbers(app: RunningApp) -> None:
    uri = world_uri(4)
    long_text = " ".join(["circle"] * 700)
    for body, fragments in (
        (
            {"messages": [image_message(long_text, uri)]},
            ("the conversation takes", "gemma reads at most 512"),
        ),
        (
            {"messages": [image_message(DESCRIBE, uri)], "max_tokens": 5000},
            ("including the 5000 it generates", "reads at most 512"),
        ),
    ):
        error = check_openai_error(
            chat(app, model="gemma", **body), 422, "prompt_too_long_for_model", None, *fragments
        )
        assert error["type"] == "invalid_request_error"
    with app.client() as http:
        response = http.post(
            "/v1/chat/completions",
            json={"model": "gemma", "messages": [image_message(long_text, uri)], "stream": True},
        )
    check_openai_error(response, 422, "prompt_too_long_for_model")


def test_stream_is_server_sent_events_ending_with_done(app: RunningApp) -> None:
    body = {"model": "gemma", "messages": [image_message(DESCRIBE, world_uri(5))], "stream": True}
    with app.client() as http, http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines), lines
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert len({event["id"] for event in events}) == 1


def test_a_client_that_disconnects_stops_its_generation(app: RunningApp) -> None:
    """A long sampled reply (temperature 2 rarely ends the turn) abandoned after its first
    chunk frees the replica at once: a short request sent right after is answered far sooner
    than the abandoned reply would have taken."""
    short = {"model": "gemma", "messages": [image_message(DESCRIBE, world_uri(7))]}
    with app.client() as http:
        for seed in range(8):  # a seed whose reply runs long (each seed's reply is fixed)
            long = {
                "model": "gemma",
                "messages": [image_message(DESCRIBE, world_uri(6))],
                "temperature": 2.0,
                "seed": seed,
                "max_tokens": 400,
            }
            started = time.perf_counter()
            whole = http.post("/v1/chat/completions", json=long).json()
            whole_s = time.perf_counter() - started
            if whole["usage"]["completion_tokens"] > 200:
                break
        assert whole["usage"]["completion_tokens"] > 200, whole["usage"]
        http.post("/v1/chat/completions", json=short).raise_for_status()  # warm
        started = time.perf_counter()
        http.post("/v1/chat/completions", json=short).raise_for_status()
        alone_s = time.perf_counter() - started
        with http.stream("POST", "/v1/chat/completions", json={**long, "stream": True}) as stream:
            next(stream.iter_lines())  # the first chunk: generation has started
        started = time.perf_counter()
        http.post("/v1/chat/completions", json=short).raise_for_status()
        after_s = time.perf_counter() - started
    # Had the abandoned reply run on, the short one would have waited for most of it.
    assert after_s < alone_s + 0.5 * whole_s, (after_s, alone_s, whole_s)
