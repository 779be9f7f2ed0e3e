"""Running a batch of model requests in exact groups, with per-item errors.

Batched generation equals single calls only when the rows of one call differ in their pixels
alone (``../shared/notes/offline-models.md``), so a batch is split into groups by
(instruction, image count), or by a coarser key of the instruction where rows with different
instructions still batch exactly (BLIP VQA: questions of one token length), and each group is
one model call. An image that does not decode fails alone; a model call that raises fails its
group alone (a :class:`~vlgraph.errors.ServiceError` with its own status, anything else as
500 ``inference_failed``), and a call may answer an :class:`~vlgraph.errors.ItemError` in place
of one row's value (a prompt too long for the model) to fail that row alone.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Hashable
from typing import Any

from vlgraph.errors import BadRequestError, InferenceError, ItemError, ServiceError
from vlgraph.images import decode_image

logger = logging.getLogger("ray.serve")

#: One model call: the decoded images of each row and each row's instruction; per row a value
#: or an :class:`ItemError`.
GroupRunner = Callable[[list[list[Any]], list["str | None"]], list[Any]]


def _same_instruction(instruction: str | None) -> Hashable:
    return instruction


def run_in_groups(
    image_sets: list[tuple[bytes, ...]],
    instructions: list[str | None],
    run: GroupRunner,
    *,
    multi_image: bool,
    model_name: str,
    failure_message: str,
    group_key: Callable[[str | None], Hashable] = _same_instruction,
) -> list[tuple[Any, ItemError | None]]:
    """Per item, ``(value, None)`` from ``run`` or ``(None, error)``, in request order. Rows
    whose instructions have the same ``group_key`` (by default: the same instruction) and the
    same image count share one ``run`` call. Never raises for a row or a group."""
    outcomes: list[tuple[Any, ItemError | None]] = [(None, None)] * len(image_sets)
    groups: dict[tuple[Hashable, int], list[tuple[int, list[Any], str | None]]] = defaultdict(list)
    for index, (images, instruction) in enumerate(zip(image_sets, instructions, strict=True)):
        try:
            if len(images) > 1 and not multi_image:
                raise BadRequestError(f"{model_name} reads one image per prompt")
            decoded = [decode_image(image) for image in images]
        except ServiceError as error:
            outcomes[index] = (None, error.as_item_error())
            continue
        groups[(group_key(instruction), len(images))].append((index, decoded, instruction))
    for members in groups.values():
        try:
            values = run(
                [images for _, images, _ in members],
                [instruction for _, _, instruction in members],
            )
        except ServiceError as error:
            failure = error.as_item_error()
            values = None
        except Exception:
            logger.exception("%s failed on a group of %d", model_name, len(members))
            failure = InferenceError(failure_message).as_item_error()
            values = None
        for position, (index, _, _) in enumerate(members):
            value = values[position] if values is not None else failure
            outcomes[index] = (None, value) if isinstance(value, ItemError) else (value, None)
    return outcomes
