"""Reading image files by path, confined to one image root folder (the routes of BLIP
captioning by path)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from vlgraph.errors import (
    BadRequestError,
    ForbiddenPathError,
    NotFoundError,
    PayloadTooLargeError,
)
from vlgraph.text_inputs import is_blank


def resolve_image_path(raw_path: str, image_root: Path) -> Path:
    """Resolve a client-given path inside ``image_root``, refusing any escape.

    Relative paths are taken relative to the root; absolute paths must lie inside it. Any
    ``..`` component is refused outright, and symlinks are resolved before the containment
    check, so a link pointing out of the root is refused too. A path the OS cannot look up
    (a name or path too long) names no file: 404, like a missing one.
    """
    if "\x00" in raw_path:
        raise BadRequestError("image_path contains a NUL byte", code="invalid_path")
    if is_blank(raw_path):
        raise BadRequestError("image_path is empty", code="invalid_path")
    candidate = Path(raw_path)
    if ".." in candidate.parts:
        raise ForbiddenPathError(
            f"image_path {raw_path!r} contains '..'; give a path inside the image root {image_root}"
        )
    root = Path(os.path.realpath(image_root))
    resolved = Path(os.path.realpath(root / candidate))  # an absolute candidate replaces root
    if not resolved.is_relative_to(root):
        raise ForbiddenPathError(
            f"image_path {raw_path!r} is outside the image root {root}; paths may be relative "
            "to it or absolute inside it"
        )
    try:
        exists = resolved.exists()
    except OSError as error:
        if error.errno not in (errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR):
            raise ForbiddenPathError(
                f"image_path {raw_path!r} cannot be looked up: {error.strerror}"
            ) from None
        raise _not_found(raw_path, error.strerror) from None
    if not exists:
        raise _not_found(raw_path)
    return resolved


def _not_found(raw_path: str, why: str | None = None) -> NotFoundError:
    shown = raw_path if len(raw_path) <= 200 else raw_path[:200] + "..."
    suffix = f" ({why})" if why else ""
    return NotFoundError(f"no file at image_path {shown!r}{suffix}", code="image_not_found")


def _not_a_file(path: Path) -> NotFoundError:
    # 404, not 400: a folder or a special file is no image file at that path.
    return NotFoundError(
        f"{path.name or str(path)!r} is not a regular file (a folder or a special file)",
        code="not_a_file",
    )


def read_image_file(path: Path, max_bytes: int) -> bytes:
    """Read a regular file of at most ``max_bytes``; the size is checked before reading.

    Folders, FIFOs, sockets and devices are refused (404 ``not_a_file``) without blocking:
    the file is opened non-blocking, so a FIFO without a writer cannot hold a thread."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
    try:
        descriptor = os.open(path, flags)
    except FileNotFoundError:
        raise NotFoundError(f"no file at {path.name!r}", code="image_not_found") from None
    except OSError as error:
        if error.errno in (errno.ENXIO, errno.EOPNOTSUPP):  # a socket
            raise _not_a_file(path) from None
        if error.errno == errno.ENAMETOOLONG:
            raise NotFoundError(
                f"no file at {path.name[:200]!r} ({error.strerror})", code="image_not_found"
            ) from None
        raise ForbiddenPathError(f"{path.name!r} cannot be opened: {error.strerror}") from None
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise _not_a_file(path)
        if info.st_size > max_bytes:
            raise PayloadTooLargeError(
                f"{path.name!r} is {info.st_size} bytes; the limit is {max_bytes}",
                code="image_too_large",
            )
        with os.fdopen(descriptor, "rb", closefd=False) as file:
            data = file.read(max_bytes + 1)
    finally:
        os.close(descriptor)
    if len(data) > max_bytes:
        raise PayloadTooLargeError(
            f"{path.name!r} is over the limit of {max_bytes} bytes", code="image_too_large"
        )
    return data
