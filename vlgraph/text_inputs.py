"""The one check of every free-text input (prompts, questions, texts to embed): blank means
absent, and the length limit counts the characters as sent, which is what the API
description's ``maxLength`` states."""

from __future__ import annotations

from vlgraph.errors import ServiceError


def checked_text(
    text: str | None,
    *,
    what: str,
    limit: int,
    long_code: str,
    empty_code: str | None = None,
    error: type[ServiceError] = ServiceError,
) -> str | None:
    """``text`` without surrounding whitespace, or None when it is blank and optional (no
    ``empty_code``). A 422 with ``empty_code`` when it is blank and required, with
    ``long_code`` when it has more than ``limit`` characters (both as ``error``)."""
    raw = text or ""
    if len(raw) > limit:
        raise error(
            f"{what} has {len(raw)} characters; the limit is {limit}", code=long_code, status=422
        )
    cleaned = raw.strip()
    if not cleaned and empty_code is not None:
        raise error(f"{what} is empty", code=empty_code, status=422)
    return cleaned or None
