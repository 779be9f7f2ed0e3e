"""Flags: a yes/no question about an image, answered by the model that captions it.

The model reads the image and the question and is asked for the first token of its answer;
the image is flagged when the best-scoring "yes" token outscores the best "no" token. One
forward pass, no sampling, so the same image and question always get the same flag, and a
batch gets the same flags as single calls.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def answer_token_ids(tokenizer: Any, words: Iterable[str]) -> list[int]:
    """Ids of the single-token spellings of ``words`` that ``tokenizer`` knows."""
    ids: set[int] = set()
    unknown = getattr(tokenizer, "unk_token_id", None)
    for word in words:
        pieces = tokenizer.encode(word, add_special_tokens=False)
        if len(pieces) == 1 and pieces[0] != unknown:
            ids.add(pieces[0])
    return sorted(ids)


YES_WORDS = ("yes", "Yes", " yes", " Yes", "YES")
NO_WORDS = ("no", "No", " no", " No", "NO")


def yes_beats_no(next_token_logits: Any, yes_ids: list[int], no_ids: list[int]) -> list[bool]:
    """Per row of ``next_token_logits`` (batch x vocabulary): does "yes" outscore "no"?"""
    if not yes_ids or not no_ids:
        raise ValueError("the tokenizer has no single-token 'yes' or 'no'; flags cannot be scored")
    yes = next_token_logits[:, yes_ids].max(dim=-1).values
    no = next_token_logits[:, no_ids].max(dim=-1).values
    return (yes > no).tolist()
