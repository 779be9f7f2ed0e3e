"""Training loop, data pools and progress bars that the family builders share.

A family trains a fixed number of steps from fixed seeds, on images drawn from
:mod:`vlgraph.tiny.world` and pre-processed once by the checkpoint's own processor (what the
server will run), so the same recipe always gives the same weights on a given machine.
"""

from __future__ import annotations

import functools
import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from vlgraph.tiny.world import BACKGROUNDS, COLOURS, SHAPES, Scene, draw, random_scene

#: Images in a training pool: each of the 72 scenes about 40 times, at random places and sizes.
POOL_SIZE = 3000


@dataclass(frozen=True)
class Pool:
    """Training images with the scene each shows."""

    scenes: list[Scene]
    images: list[Any]


@functools.cache
def world_pool(seed: int, count: int = POOL_SIZE, size: int = 64) -> Pool:
    """``count`` images drawn from ``seed`` (cached per process: families share pools)."""
    rng = random.Random(seed)
    scenes = [random_scene(rng) for _ in range(count)]
    return Pool(scenes, [draw(scene, rng, size) for scene in scenes])


def progress(family: str, total: int, phase: str = "training") -> Any:
    """A progress bar on stderr that names the family and shows the time left."""
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(
        total=total,
        desc=f"vlgraph-tiny {family}: {phase}",
        unit="step",
        file=sys.stderr,
        mininterval=0.5 if interactive else 30.0,
        bar_format="{desc} {percentage:3.0f}% |{bar:20}| {n}/{total} steps, "
        "{elapsed} elapsed, {remaining} left",
        dynamic_ncols=interactive,
    )


def train(
    family: str,
    parameters: Iterator[Any] | list[Any],
    loss_of_step: Callable[[int], Any],
    steps: int,
    learning_rate: float = 1e-3,
    phase: str = "training",
    warmup: int = 50,
) -> float:
    """Run ``steps`` AdamW steps on ``loss_of_step(step)`` (a scalar tensor) with a linear
    warm-up and cosine decay; returns the mean loss of the last tenth of the steps."""
    import torch

    trainable = [parameter for parameter in parameters if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.01)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    tail: list[float] = []
    started = time.monotonic()
    with progress(family, steps, phase) as bar:
        for step in range(steps):
            loss = loss_of_step(step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            scheduler.step()
            if step >= steps - max(1, steps // 10):
                tail.append(loss.item())
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix_str(f"loss {loss.item():.3f}", refresh=False)
    final = sum(tail) / len(tail)
    print(
        f"vlgraph-tiny {family}: {phase} done in {time.monotonic() - started:.0f} s "
        f"({steps} steps, final loss {final:.3f})",
        file=sys.stderr,
    )
    return final


class SceneProbe:
    """Linear read-outs of a scene's shape, colour and background from an image vector, used
    only while training (never saved): their loss gives the vision tower a direct signal for
    what the captions need, which a caption decoder alone passes back slowly."""

    def __init__(self, width: int) -> None:
        import torch

        self._heads = [
            torch.nn.Linear(width, len(values)) for values in (SHAPES, COLOURS, BACKGROUNDS)
        ]

    def parameters(self) -> list[Any]:
        """The heads' weights, to train with the model's."""
        return [parameter for head in self._heads for parameter in head.parameters()]

    def loss(self, vectors: Any, scenes: list[Scene]) -> Any:
        """Cross-entropy of the three read-outs of ``vectors`` (one per scene)."""
        import torch

        targets = (
            [SHAPES.index(scene.shape) for scene in scenes],
            [list(COLOURS).index(scene.colour) for scene in scenes],
            [list(BACKGROUNDS).index(scene.background) for scene in scenes],
        )
        return sum(
            torch.nn.functional.cross_entropy(head(vectors), torch.tensor(target))
            for head, target in zip(self._heads, targets, strict=True)
        )


def batch_indices(seed: int, pool_size: int, batch: int) -> Callable[[int], list[int]]:
    """Per step, ``batch`` indices into a pool, the same for the same seed and step."""

    def indices(step: int) -> list[int]:
        return random.Random(seed * 1_000_003 + step).sample(range(pool_size), batch)

    return indices
