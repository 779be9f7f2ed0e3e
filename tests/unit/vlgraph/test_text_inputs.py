"""Blank text means the same to the server and to the API description's pattern."""

from __future__ import annotations

import random
import re
import sys

import pytest

from vlgraph.errors import ServiceError
from vlgraph.text_inputs import BLANK_CHARACTERS, NOT_BLANK_PATTERN, checked_text, is_blank

#: ECMA-262's ``\s`` (what JSON Schema patterns mean), which differs from Python's.
ECMA_WHITESPACE = "\t\n\v\f\r \u00a0\u1680\u2028\u2029\u202f\u205f\u3000\ufeff" + "".join(
    chr(code) for code in range(0x2000, 0x200B)
)


def test_blank_is_white_space_in_either_regex_world() -> None:
    python_whitespace = {chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()}
    assert set(BLANK_CHARACTERS) == python_whitespace | set(ECMA_WHITESPACE)


@pytest.mark.parametrize("character", list(BLANK_CHARACTERS), ids=lambda c: f"U+{ord(c):04X}")
def test_every_blank_character_is_refused_as_empty(character: str) -> None:
    text = character * 3
    assert re.search(NOT_BLANK_PATTERN, text) is None
    with pytest.raises(ServiceError) as refused:
        checked_text(text, what="prompt", limit=10, long_code="long", empty_code="empty")
    assert (refused.value.status, refused.value.code) == (422, "empty")
    assert checked_text(text, what="prompt", limit=10, long_code="long") is None


def test_server_and_pattern_agree_on_random_text() -> None:
    seed = random.SystemRandom().randrange(2**32)
    print(f"text seed {seed}")
    rng = random.Random(seed)
    alphabet = BLANK_CHARACTERS + "a\x00\x1b\u200b\u180e\U0001f600"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 6)))
        accepted_by_schema = re.search(NOT_BLANK_PATTERN, text) is not None
        assert accepted_by_schema == (not is_blank(text)), (seed, text)
        if accepted_by_schema:
            cleaned = checked_text(text, what="t", limit=10, long_code="l", empty_code="e")
            assert cleaned and cleaned[0] not in BLANK_CHARACTERS, (seed, text)
