"""Chat replies on a replica without Ray: each row's own end (turn, max_tokens, stop string,
cancellation), what a stream publishes and holds back, batching of streamed and whole calls,
and a closed stream that stops its generation."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
import torch

from deployments.chat_replies import ChatCall, ReplyRows, group_calls, sampling_key
from deployments.vlm_caption import VisionLanguageCaptioner
from tests.support.common import jpeg_bytes, tiny_vlm_config, world_image, world_scene
from vlgraph.config import VisionLanguageConfig
from vlgraph.messages import ChatPart, ChatRequest, ChatTurn

WORDS = ["a", " red", " circle", " on", " a", " white", " background", "\u00e9"]
END = 99


def decode(tokens: list[int]) -> str:
    return "".join(WORDS[token] for token in tokens)


def rows_for(*requests: ChatRequest, limits: list[int] | None = None) -> tuple[ReplyRows, list]:
    published: list[list[str]] = [[] for _ in requests]
    calls = [
        ChatCall(request, publish=published[index].append) for index, request in enumerate(requests)
    ]
    rows = ReplyRows(calls, limits or [10] * len(calls), {END}, decode)
    return rows, published


def step(rows: ReplyRows, history: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    history = torch.cat([history, torch.tensor(tokens)[:, None]], dim=1)
    return history, rows(history, None)


def plain(**fields) -> ChatRequest:
    return ChatRequest(turns=(ChatTurn("user", (ChatPart("text", "hi"),)),), **fields)


def test_each_row_ends_on_its_own() -> None:
    rows, published = rows_for(plain(), plain(stop=(" on",)), plain(), limits=[10, 10, 2])
    history = torch.zeros((3, 1), dtype=torch.long)
    history, done = step(rows, history, [0, 0, 0])
    history, done = step(rows, history, [1, 1, 1])
    assert done.tolist() == [False, False, True]  # the third reached its 2 tokens
    history, done = step(rows, history, [2, 2, 0])
    history, done = step(rows, history, [3, 3, 0])
    assert done.tolist() == [False, True, True]  # the second met its stop string
    history, done = step(rows, history, [END, 0, 0])
    assert done.tolist() == [True, True, True]
    results = rows.results([5, 6, 7])
    assert [r.text for r in results] == ["a red circle on", "a red circle", "a red"]
    assert [r.finish_reason for r in results] == ["stop", "stop", "length"]
    assert [r.completion_tokens for r in results] == [4, 4, 2]
    assert [r.prompt_tokens for r in results] == [5, 6, 7]
    assert "".join(published[1]) == "a red circle"
    assert "".join(published[2]) == "a red"


def test_text_that_may_become_a_stop_string_waits() -> None:
    rows, published = rows_for(plain(stop=(" on a black",)))
    history = torch.zeros((1, 1), dtype=torch.long)
    for token in (0, 1, 2, 3, 4):
        history, _ = step(rows, history, [token])
    assert "".join(published[0]) == "a red circle"  # " on a" could start the stop string
    history, done = step(rows, history, [5])
    assert "".join(published[0]) == "a red circle on a white"  # it did not
    assert not done.item()


def test_unfinished_characters_wait_for_the_next_token() -> None:
    rows, published = rows_for(plain())
    text = {"n": "a\ufffd"}
    rows.replies[0].decode = lambda tokens: text["n"]
    history = torch.zeros((1, 1), dtype=torch.long)
    history, _ = step(rows, history, [0])
    assert published[0] == ["a"]
    text["n"] = "a\u00e9"
    history, _ = step(rows, history, [1])
    assert published[0] == ["a", "\u00e9"]


def test_a_cancelled_row_stops() -> None:
    rows, _ = rows_for(plain(), plain())
    history = torch.zeros((2, 1), dtype=torch.long)
    history, done = step(rows, history, [0, 0])
    rows.replies[1].call.cancelled.set()
    history, done = step(rows, history, [1, 1])
    assert done.tolist() == [False, True]
    assert rows.replies[1].tokens == [0]


def test_stop_strings_hold_back_random_texts() -> None:
    """Property: whatever the tokens and stop strings, the published pieces add up to the
    final text, which holds no stop string."""
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    draw = random.Random(seed)
    for _ in range(200):
        stop = tuple(
            "".join(draw.choice(WORDS) for _ in range(draw.randint(1, 2))).lstrip()
            for _ in range(draw.randint(0, 3))
        )
        rows, published = rows_for(plain(stop=stop), limits=[12])
        history = torch.zeros((1, 1), dtype=torch.long)
        for _ in range(12):
            history, done = step(rows, history, [draw.randrange(len(WORDS))])
            if done.item():
                break
        (result,) = rows.results([1])
        assert "".join(published[0]) == result.text, (seed, stop)
        assert not any(s and s in result.text for s in stop), (seed, stop, result.text)


def test_calls_share_a_generate_only_when_sampling_allows() -> None:
    greedy = ChatCall(plain())
    zero = ChatCall(plain(temperature=0.0))
    warm = ChatCall(plain(temperature=0.7, top_p=0.9))
    warm_too = ChatCall(plain(temperature=0.7, top_p=0.9))
    seeded = ChatCall(plain(temperature=0.7, seed=1))
    seeded_too = ChatCall(plain(temperature=0.7, seed=1))
    calls = [greedy, zero, warm, warm_too, seeded, seeded_too]
    assert group_calls(calls, sampling_key) == [[0, 1], [2, 3], [4], [5]]


@pytest.fixture(scope="module")
def gemma(checkpoint_cache: Path) -> VisionLanguageCaptioner:
    config = VisionLanguageConfig.model_validate(tiny_vlm_config("gemma3"))
    return VisionLanguageCaptioner.in_process(config, str(checkpoint_cache), "gemma")


def describe(index: int, **fields) -> ChatRequest:
    turn = ChatTurn("user", (ChatPart("image"), ChatPart("text", "Describe this image.")))
    return ChatRequest(turns=(turn,), images=(jpeg_bytes(world_image(index)),), **fields)


def unbatched(replica: VisionLanguageCaptioner) -> None:
    """Serve's batch queue needs a replica context: outside Ray, each call is its own batch
    on a worker thread (the HTTP tests run the real queue)."""

    async def one_call(call: ChatCall):
        return (await asyncio.to_thread(replica.chat_rows, [call]))[0]

    replica._chat_batch = one_call


def test_streamed_and_whole_rows_share_one_generate(gemma: VisionLanguageCaptioner) -> None:
    pieces: list[str] = []
    calls = [
        ChatCall(describe(1)),
        ChatCall(describe(2), publish=pieces.append),
        ChatCall(describe(1), publish=lambda _: None),
    ]
    together = gemma.chat_rows(calls)
    alone = [gemma.chat_rows([ChatCall(describe(index))])[0] for index in (1, 2)]
    assert together == [alone[0], alone[1], alone[0]]
    assert "".join(pieces) == alone[1].text
    for index, result in zip((1, 2), alone, strict=True):
        assert world_scene(index).colour in result.text


def test_chat_stream_yields_pieces_then_the_result(gemma: VisionLanguageCaptioner) -> None:
    unbatched(gemma)

    async def run() -> list:
        return [delta async for delta in gemma.chat_stream(describe(4))]

    deltas = asyncio.run(run())
    whole = gemma.chat_rows([ChatCall(describe(4))])[0]
    assert "".join(delta.text for delta in deltas[:-1]) == whole.text
    assert len(deltas) - 1 == whole.completion_tokens and deltas[-1].result == whole


def test_closing_a_stream_stops_its_generation(gemma: VisionLanguageCaptioner) -> None:
    """A long sampled reply (temperature 2 rarely ends the turn) closed after its first
    piece stops within a few tokens, far before its max_tokens."""
    unbatched(gemma)
    seen: list = []
    original = gemma.chat_rows

    def spying(calls):
        seen.extend(original(calls))
        return seen

    async def run() -> None:
        stream = gemma.chat_stream(describe(3, temperature=2.0, max_tokens=400))
        await anext(stream)
        await stream.aclose()
        for _ in range(400):
            if seen:
                return
            await asyncio.sleep(0.05)

    gemma.chat_rows = spying
    try:
        asyncio.run(run())
    finally:
        del gemma.chat_rows
    (result,) = seen
    assert result.completion_tokens < 20, result
    unlimited = original([ChatCall(describe(3, temperature=2.0, max_tokens=400, seed=5))])
    assert unlimited[0].completion_tokens > 100, unlimited  # what it would have run to
