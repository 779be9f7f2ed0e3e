"""The JSON Schema patterns the OpenAPI description publishes accept what the routes accept and
refuse what they refuse (schemathesis generates requests from them)."""

from __future__ import annotations

import jsonschema
import pytest

from deployments.ingress.openapi import IMAGE_PATH_PATTERN


def path_is_valid(value: str) -> bool:
    schema = {"type": "string", "pattern": IMAGE_PATH_PATTERN}
    return jsonschema.Draft202012Validator(schema).is_valid(value)


@pytest.mark.parametrize("path", ["example.jpg", "a b/c.png", " x ", "\x10\xe5N"])
def test_paths_with_something_but_white_space_and_no_nul_are_valid(path: str) -> None:
    assert path_is_valid(path)


@pytest.mark.parametrize(
    "path",
    [
        "",
        "   ",
        "\t\n",
        "a\x00b",
        "\x00",
        # found by a fresh schemathesis seed: the one character that is not blank was NUL
        "\x10\xe5\xc3N\xdb\x00",
        " \x00 ",
    ],
)
def test_paths_with_a_nul_byte_or_only_white_space_are_invalid(path: str) -> None:
    assert not path_is_valid(path)
