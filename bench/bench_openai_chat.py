"""Streamed chat against the whole reply through ``POST /v1/chat/completions``: time to the
first token and total time, on the same conversations, in one run.

    python bench/bench_openai_chat.py              # InternVL3-1B size, random weights
    python bench/bench_openai_chat.py --smoke      # tiny checkpoint, CI: proves it runs

The app is ``bench/paths.py``'s ``vlm`` path (``configs/local.yaml`` with only InternVL, one
replica up from the start) on a full-size random-weight checkpoint. Every request is one
photo-sized JPEG (a data: URI) and the caption instruction, ``max_tokens`` tokens (random
weights rarely end a turn: replies run to ``max_tokens``). At each concurrency level the
same requests go whole and streamed, alternating in an order that flips every round (ABBA);
figures are medians over the rounds of each round's median: the whole reply's latency, and
the stream's time to its first content chunk and to its end. Printed with the command and
written to ``bench/results/openai_chat.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from bench.harness import RESULTS_DIR, ServedApp, machine
from bench.paths import PATHS, photo_jpegs, shared_app_config
from vlgraph.tiny import ensure_checkpoint

INSTRUCTION = "Describe this image in one sentence."


def chat_body(image: bytes, max_tokens: int, stream: bool) -> dict[str, Any]:
    """One conversation: the image as a data: URI and the caption instruction."""
    uri = "data:image/jpeg;base64," + base64.b64encode(image).decode("ascii")
    content = [
        {"type": "image_url", "image_url": {"url": uri}},
        {"type": "text", "text": INSTRUCTION},
    ]
    return {
        "model": "intern_vlm",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


async def whole(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, float]:
    """The whole reply's latency and token count."""
    started = time.perf_counter()
    response = await client.post("/v1/chat/completions", json=body)
    response.raise_for_status()
    tokens = response.json()["usage"]["completion_tokens"]
    return {"total_s": time.perf_counter() - started, "tokens": tokens}


async def streamed(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, float]:
    """The stream's time to its first content chunk and to its end."""
    started = time.perf_counter()
    first = None
    pieces = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            choices = json.loads(line.removeprefix("data: "))["choices"]
            if choices and choices[0]["delta"].get("content"):
                pieces += 1
                first = first or time.perf_counter() - started
    return {
        "first_token_s": first or 0.0,
        "total_s": time.perf_counter() - started,
        "tokens": pieces,
    }


async def level(url: str, bodies: list[dict], concurrency: int, stream: bool) -> list[dict]:
    """Every body once, ``concurrency`` at a time."""
    pending = list(bodies)
    results: list[dict] = []
    limits = httpx.Limits(max_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, timeout=1800, limits=limits) as client:

        async def worker() -> None:
            while pending:
                body = pending.pop()
                results.append(await (streamed if stream else whole)(client, body))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def median_of(rounds: list[list[dict]], key: str) -> float:
    """The median over rounds of each round's median of ``key``."""
    return round(statistics.median(statistics.median(r[key] for r in one) for one in rounds), 4)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--requests", type=int, default=8, help="per level and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", default=".cache/vlgraph/checkpoints")
    parser.add_argument("--output-dir", default=str(RESULTS_DIR))
    parser.add_argument("--smoke", action="store_true", help="tiny checkpoint, one round")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    command = "python bench/bench_openai_chat.py " + shlex.join(argv or sys.argv[1:])
    if args.smoke:
        args.concurrency, args.requests, args.rounds, args.max_tokens = [1, 2], 2, 1, 4
    path = PATHS["vlm"]
    size = "tiny" if args.smoke else "full"
    checkpoints = {
        key: ensure_checkpoint(family, args.cache_dir, size)
        for key, family in path.checkpoints.items()
    }
    with tempfile.TemporaryDirectory() as folder:
        images = photo_jpegs(args.requests, Path(folder))
        config = shared_app_config([path], checkpoints, Path(folder), args.threads)
        served = ServedApp()
        url = served.run(_application(config), "chat-bench")
        levels = []
        for concurrency in args.concurrency:
            rounds: dict[bool, list[list[dict]]] = {False: [], True: []}
            for index in range(args.rounds):
                order = (False, True) if index % 2 == 0 else (True, False)
                for stream in order:
                    bodies = [chat_body(image, args.max_tokens, stream) for image in images]
                    rounds[stream].append(asyncio.run(level(url, bodies, concurrency, stream)))
            levels.append(
                {
                    "concurrency": concurrency,
                    "whole_total_p50_s": median_of(rounds[False], "total_s"),
                    "stream_first_token_p50_s": median_of(rounds[True], "first_token_s"),
                    "stream_total_p50_s": median_of(rounds[True], "total_s"),
                    "tokens_p50": median_of(rounds[False], "tokens"),
                }
            )
    report = {"command": command, "machine": machine(), "levels": levels, "smoke": args.smoke}
    print(f"$ {command}")
    for row in levels:
        whole_s = row["whole_total_p50_s"]
        print(
            f"c={row['concurrency']:>3}  whole {whole_s:.3f} s  stream: first token "
            f"{row['stream_first_token_p50_s']:.3f} s "
            f"({row['stream_first_token_p50_s'] / whole_s:.2f} x whole), "
            f"end {row['stream_total_p50_s']:.3f} s "
            f"({row['stream_total_p50_s'] / whole_s:.2f} x), "
            f"{row['tokens_p50']:.0f} tokens"
        )
    output = Path(args.output_dir) / "openai_chat.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {output}")
    return report


def _application(config: Any) -> Any:
    from graphs.app import build_app

    return build_app(config)


if __name__ == "__main__":
    main()
