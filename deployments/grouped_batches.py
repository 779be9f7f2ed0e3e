"""Running a batch of model requests in exact groups, with per-item errors.

Batched generation equals single calls only when the rows of one call differ in their pixels
alone (``../shared/notes/offline-models.md``), so a batch is split into groups by
(instruction, image count) and each group is one model call. An image that does not decode
fails alone; a model call that raises fails its group alone.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from vlgraph.errors import BadRequestError, InferenceError, ItemError, ServiceError
from vlgraph.images import decode_image

logger = logging.getLogger("ray.serve")

#: One model call: the decoded images of each row and the group's shared instruction.
GroupRunner = Callable[[list[list[Any]], "str | None"], list[Any]]


def run_in_groups(
    image_sets: list[tuple[bytes, ...]],
    instructions: list[str | None],
    run: GroupRunner,
    *,
    multi_image: bool,
    model_name: str,
    failure_message: str,
) -> list[tuple[Any, ItemError | None]]:
    """Per item, ``(value, None)`` from ``run`` or ``(None, error)``, in request order."""
    outcomes: list[tuple[Any, ItemError | None]] = [(None, None)] * len(image_sets)
    groups: dict[tuple[str | None, int], list[tuple[int, list[Any]]]] = defaultdict(list)
    for index, (images, instruction) in enumerate(zip(image_sets, instructions, strict=True)):
        try:
            if len(images) > 1 and not multi_image:
                raise BadRequestError(f"{model_name} reads one image per prompt")
            decoded = [decode_image(image) for image in images]
        except ServiceError as error:
            outcomes[index] = (None, error.as_item_error())
            continue
        groups[(instruction, len(images))].append((index, decoded))
    for (instruction, _), members in groups.items():
        try:
            values = run([images for _, images in members], instruction)
        except Exception:
            logger.exception("%s failed on a group of %d", model_name, len(members))
            failure = InferenceError(failure_message).as_item_error()
            values = None
        for position, (index, _) in enumerate(members):
            outcomes[index] = (values[position], None) if values is not None else (None, failure)
    return outcomes
