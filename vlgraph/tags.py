"""Tags: the short keyword list returned with every caption.

A tag is a content word of the caption: the caption is lower-cased and split into runs of
letters (apostrophes and hyphens kept inside a word); words of one or two letters, English
function words, the words of the request's own prompt and repeats are dropped; the first
``limit`` that remain are the tags, in the caption's order. Tags are therefore a pure function
of the caption, cost no model call, and agree with the caption the user sees.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z]+(?:['-][a-z]+)*")

STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "on",
        "in",
        "into",
        "onto",
        "at",
        "by",
        "for",
        "from",
        "to",
        "with",
        "without",
        "near",
        "over",
        "under",
        "above",
        "below",
        "and",
        "or",
        "but",
        "nor",
        "so",
        "yet",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "am",
        "has",
        "have",
        "had",
        "do",
        "does",
        "did",
        "this",
        "that",
        "these",
        "those",
        "there",
        "here",
        "it",
        "its",
        "it's",
        "they",
        "them",
        "their",
        "he",
        "she",
        "his",
        "her",
        "him",
        "we",
        "our",
        "you",
        "your",
        "i",
        "me",
        "my",
        "some",
        "any",
        "each",
        "every",
        "all",
        "both",
        "few",
        "more",
        "most",
        "other",
        "such",
        "no",
        "not",
        "only",
        "own",
        "same",
        "than",
        "too",
        "very",
        "can",
        "will",
        "just",
        "one",
        "two",
        "three",
        "four",
        "five",
        "very",
        "while",
        "who",
        "whom",
        "which",
        "what",
        "when",
        "where",
        "why",
        "how",
        "up",
        "down",
        "out",
        "off",
        "again",
        "further",
        "then",
        "once",
        "about",
        "against",
        "between",
        "through",
        "during",
        "before",
        "after",
        "image",
        "images",
        "picture",
        "photo",
        "photograph",
        "shows",
        "showing",
        "shown",
        "set",
    ]
)


def caption_tags(caption: str, limit: int, prompt: str | None = None) -> list[str]:
    """Up to ``limit`` keywords of ``caption`` (see the module docstring for the rule)."""
    if limit <= 0:
        return []
    excluded = STOPWORDS | set(_WORD.findall((prompt or "").lower()))
    tags: list[str] = []
    for word in _WORD.findall(caption.lower()):
        if len(word) > 2 and word not in excluded and word not in tags:
            tags.append(word)
            if len(tags) == limit:
                break
    return tags
