"""The tag rule and the yes/no flag rule, exactly as docs/api.md defines them."""

from __future__ import annotations

import pytest
import torch

from vlgraph.flags import answer_token_ids, yes_beats_no
from vlgraph.tags import caption_tags


def test_tags_are_content_words_in_caption_order_without_repeats() -> None:
    caption = "A photo of a brown dog and a brown cat on the beach, the dog's ball"
    assert caption_tags(caption, 5) == ["brown", "dog", "cat", "beach", "dog's"]


def test_tags_drop_prompt_words_short_words_and_respect_the_limit() -> None:
    caption = "a picture of ox herd grazing in green fields near hills"
    assert caption_tags(caption, 3, prompt="a picture of green") == ["herd", "grazing", "fields"]
    assert caption_tags(caption, 0) == []
    assert caption_tags("", 5) == []


class _Tokenizer:
    unk_token_id = 0
    vocabulary = {"yes": 5, "Yes": 6, "no": 7, "No": 8}

    def encode(self, word: str, add_special_tokens: bool = False) -> list[int]:
        return [self.vocabulary.get(piece, 0) for piece in word.split()] or [0]


def test_answer_token_ids_keep_known_single_tokens_only() -> None:
    assert answer_token_ids(_Tokenizer(), ["yes", "Yes", "YES", "yes please"]) == [5, 6]


def test_yes_beats_no_compares_the_best_of_each() -> None:
    logits = torch.zeros(3, 10)
    logits[0, 6] = 2.0  # "Yes" wins
    logits[1, 7] = 2.0  # "no" wins
    logits[2, 5], logits[2, 8] = 1.0, 1.0  # tie: not flagged
    assert yes_beats_no(logits, [5, 6], [7, 8]) == [True, False, False]


def test_a_tokenizer_without_yes_or_no_is_an_error_not_a_silent_false() -> None:
    with pytest.raises(ValueError, match="yes"):
        yes_beats_no(torch.zeros(1, 4), [], [1])
