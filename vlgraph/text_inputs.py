"""The one check of every free-text input (prompts, questions, texts to embed): blank means
absent, and the length limit counts the characters as sent, which is what the API
description's ``maxLength`` states."""

from __future__ import annotations

from vlgraph.errors import ServiceError

#: What counts as blank: Python's white space (``str.isspace``, which includes the ASCII
#: separators U+001C..U+001F) and JSON Schema's (ECMA-262 ``\\s``, which adds U+FEFF). One
#: explicit set, so the server and the API description's pattern agree in every regex engine.
BLANK_CHARACTERS = "".join(
    sorted({chr(code) for code in range(0x10000) if chr(code).isspace()} | {"\ufeff"})
)
#: :data:`BLANK_CHARACTERS` as the inside of a regex character class (``\\uXXXX`` escapes).
BLANK_CLASS = "".join(f"\\u{ord(character):04x}" for character in BLANK_CHARACTERS)
#: JSON Schema pattern of a text with something other than blank characters in it.
NOT_BLANK_PATTERN = f"[^{BLANK_CLASS}]"


def is_blank(text: str) -> bool:
    """Whether ``text`` holds nothing but :data:`BLANK_CHARACTERS`."""
    return not text.strip(BLANK_CHARACTERS)


def checked_text(
    text: str | None,
    *,
    what: str,
    limit: int,
    long_code: str,
    empty_code: str | None = None,
    error: type[ServiceError] = ServiceError,
    param: str | None = None,
) -> str | None:
    """``text`` without surrounding whitespace, or None when it is blank and optional (no
    ``empty_code``). A 422 with ``empty_code`` when it is blank and required, with
    ``long_code`` when it has more than ``limit`` characters (both as ``error``)."""
    raw = text or ""
    if len(raw) > limit:
        raise error(
            f"{what} has {len(raw)} characters; the limit is {limit}",
            code=long_code,
            status=422,
            param=param,
        )
    cleaned = raw.strip(BLANK_CHARACTERS)
    if not cleaned and empty_code is not None:
        raise error(f"{what} is empty", code=empty_code, status=422, param=param)
    return cleaned or None
