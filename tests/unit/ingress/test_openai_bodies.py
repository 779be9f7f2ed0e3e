"""The ``/v1`` bodies read numbers as JSON Schema defines them: an integer field takes ``4`` and
``4.0`` (schemathesis sends both; strict pydantic alone refused ``4.0``), never ``4.5``,
``"4"`` or ``true``; a neutral value is equal by number (``0`` and ``0.0``), never by a
boolean standing in for it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from deployments.ingress.routes.openai.images import image_bodies
from deployments.ingress.routes.openai.protocol import (
    ChatCompletionBody,
    EmbeddingsBody,
    refuse_unsupported_chat,
)
from vlgraph.config import DiffusionConfig
from vlgraph.errors import BadRequestError


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens", "seed", "n"])
def test_chat_integers_take_whole_floats(field: str) -> None:
    body = ChatCompletionBody.model_validate_json(
        f'{{"model": "gemma", "messages": [{{"role": "user", "content": "hi"}}], "{field}": 1.0}}'
    )
    assert getattr(body, field) == 1 and type(getattr(body, field)) is int


@pytest.mark.parametrize("value", ["1.5", '"1"', "true"])
def test_chat_integers_refuse_what_is_no_integer(value: str) -> None:
    with pytest.raises(ValidationError):
        ChatCompletionBody.model_validate_json(
            f'{{"model": "gemma", "messages": [{{"role": "user", "content": "hi"}}], '
            f'"max_tokens": {value}}}'
        )


def test_embedding_dimensions_take_a_whole_float() -> None:
    body = EmbeddingsBody.model_validate_json(
        '{"model": "clip_text", "input": "a", "dimensions": 512.0}'
    )
    assert body.dimensions == 512


def test_image_generation_integers_take_whole_floats() -> None:
    generator = DiffusionConfig(family="sd", source="tiny:sd", device="cpu")
    generation, _ = image_bodies([generator], None)
    body = generation.model_validate_json(
        '{"prompt": "a red circle", "n": 1.0, "partial_images": 1.0, "stream": true, '
        '"num_inference_steps": 4.0, "seed": 27.0}'
    )
    assert (body.n, body.partial_images, body.num_inference_steps, body.seed) == (1, 1, 4, 27)
    with pytest.raises(ValidationError):
        generation.model_validate_json('{"prompt": "a", "partial_images": 1.5}')


@pytest.mark.parametrize("value", ["0", "0.0"])
def test_a_neutral_number_is_accepted_as_int_or_float(value: str) -> None:
    body = ChatCompletionBody.model_validate_json(
        f'{{"model": "gemma", "messages": [{{"role": "user", "content": "hi"}}], '
        f'"top_logprobs": {value}, "frequency_penalty": {value}}}'
    )
    refuse_unsupported_chat(body)


@pytest.mark.parametrize(("field", "value"), [("top_logprobs", "false"), ("logprobs", "0")])
def test_a_boolean_never_stands_for_a_number_nor_a_number_for_a_boolean(
    field: str, value: str
) -> None:
    body = ChatCompletionBody.model_validate_json(
        f'{{"model": "gemma", "messages": [{{"role": "user", "content": "hi"}}], '
        f'"{field}": {value}}}'
    )
    with pytest.raises(BadRequestError) as refused:
        refuse_unsupported_chat(body)
    assert refused.value.param == field


def _bound_keywords_pydantic_leaves_undescribed(schema: object) -> list[str]:
    if isinstance(schema, dict):
        found = [key for key in ("ge", "le", "gt", "lt") if key in schema]
        for value in schema.values():
            found += _bound_keywords_pydantic_leaves_undescribed(value)
        return found
    if isinstance(schema, list):
        return [key for item in schema for key in _bound_keywords_pydantic_leaves_undescribed(item)]
    return []


def test_every_bound_of_the_bodies_is_described_in_json_schema_terms() -> None:
    generation, variation = image_bodies(
        [DiffusionConfig(family="sd", source="tiny:sd", device="cpu")], None
    )
    for body in (ChatCompletionBody, EmbeddingsBody, generation, variation):
        schema = body.model_json_schema()
        assert _bound_keywords_pydantic_leaves_undescribed(schema) == [], body.__name__
    partial = generation.model_json_schema()["properties"]["partial_images"]["anyOf"][0]
    assert (partial["minimum"], partial["maximum"]) == (0, 3)
