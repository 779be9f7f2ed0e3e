"""Security, section 1: server-side path traversal on ``/caption`` and ``/batch-caption``
items (``..``, absolute paths, symlink escapes, NUL bytes, overlong names, folders, FIFOs)."""

from __future__ import annotations

import pytest

from tests.support.common import RunningApp
from tests.support.security import HostileTree, case_ids, check, check_item, client

pytestmark = pytest.mark.integration

#: (id, path, status, code, message fragment); {root}, {base} and {tree} are filled in.
PATH_CASES = [
    ("dotdot-relative", "../outside.jpg", 403, "path_outside_image_root", "'..'"),
    ("dotdot-nested", "nested/../../outside.jpg", 403, "path_outside_image_root", "'..'"),
    ("dotdot-staying-inside", "nested/../red.jpg", 403, "path_outside_image_root", "'..'"),
    ("dotdot-many", "../" * 20 + "etc/passwd", 403, "path_outside_image_root", "'..'"),
    ("dotdot-in-absolute", "{root}/../outside.jpg", 403, "path_outside_image_root", "'..'"),
    ("dotdot-deep-absolute", "{root}/nested/../../outside.jpg", 403, "path_outside_image_root", ""),
    ("absolute-outside", "{base}/outside.jpg", 403, "path_outside_image_root", "outside"),
    ("etc-passwd", "/etc/passwd", 403, "path_outside_image_root", "outside the image root"),
    ("proc-environ", "/proc/self/environ", 403, "path_outside_image_root", "outside"),
    ("double-slash", "//etc/passwd", 403, "path_outside_image_root", "outside"),
    ("filesystem-root", "/", 403, "path_outside_image_root", "outside"),
    ("root-name-prefix", "{root}2/x.jpg", 403, "path_outside_image_root", "outside"),
    ("symlink-escape", "escape_link.jpg", 403, "path_outside_image_root", "outside"),
    (
        "dir-symlink-escape",
        "{tree}/outside_dir_link/outside.jpg",
        403,
        "path_outside_image_root",
        "",
    ),
    ("dangling-link-out", "{tree}/dangling.jpg", 403, "path_outside_image_root", "outside"),
    ("link-to-dev-null", "{tree}/null.jpg", 403, "path_outside_image_root", "outside"),
    ("nul-byte", "red.jpg\x00.png", 400, "invalid_path", "NUL"),
    ("nul-only", "\x00", 400, "invalid_path", "NUL"),
    ("blank-spaces", "   ", 400, "invalid_path", "empty"),
    ("blank-tab-newline", "\t\n", 400, "invalid_path", "empty"),
    ("url-encoded-dotdot", "%2e%2e/outside.jpg", 404, "image_not_found", "no file"),
    ("url-encoded-slash", "..%2foutside.jpg", 404, "image_not_found", "no file"),
    ("double-encoded", "%252e%252e%252foutside.jpg", 404, "image_not_found", "no file"),
    ("backslash-dotdot", "..\\outside.jpg", 404, "image_not_found", "no file"),
    ("backslash-absolute", "\\etc\\passwd", 404, "image_not_found", "no file"),
    ("windows-drive", "C:\\Windows\\win.ini", 404, "image_not_found", "no file"),
    ("fullwidth-dots", "\uff0e\uff0e/outside.jpg", 404, "image_not_found", "no file"),
    ("fullwidth-solidus", "..\uff0foutside.jpg", 404, "image_not_found", "no file"),
    ("tilde", "~/.ssh/id_rsa", 404, "image_not_found", "no file"),
    ("overlong-component", "a" * 300 + ".jpg", 404, "image_not_found", "too long"),
    ("overlong-path", "a/" * 2040 + "x.jpg", 404, "image_not_found", "too long"),
    ("under-a-file", "red.jpg/x.jpg", 404, "image_not_found", "no file"),
    ("symlink-loop", "{tree}/loop.jpg", 404, "image_not_found", "no file"),
    ("missing", "missing.jpg", 404, "image_not_found", "no file"),
    ("folder", "nested", 404, "not_a_file", "not a regular file"),
    ("folder-slash", "nested/", 404, "not_a_file", "not a regular file"),
    ("folder-dot", "nested/.", 404, "not_a_file", "not a regular file"),
    ("dot", ".", 404, "not_a_file", "not a regular file"),
    ("root-absolute", "{root}", 404, "not_a_file", "not a regular file"),
    ("fifo", "{tree}/pipe.jpg", 404, "not_a_file", "not a regular file"),
    ("unix-socket", "{tree}/sock.jpg", 404, "not_a_file", "not a regular file"),
]
#: Rows only one route answers this way: the single route's schema bounds the path.
CAPTION_ONLY_PATH_CASES = [
    ("empty-string", "", 422, "invalid_request", "image_path"),
    ("over-4096-chars", "a" * 5000, 422, "invalid_request", "image_path"),
]
BATCH_ONLY_PATH_CASES = [
    ("empty-string", "", 400, "invalid_path", "empty"),
    ("over-4096-chars", "a" * 5000, 404, "image_not_found", "too long"),
]


def filled(path: str, app: RunningApp, tree: HostileTree) -> str:
    """A table path with its placeholders filled in."""
    return path.format(root=app.image_root, base=app.image_root.parent, tree=tree.name)


@pytest.mark.parametrize(
    ("case", "path", "status", "code", "fragment"),
    PATH_CASES + CAPTION_ONLY_PATH_CASES,
    ids=case_ids(PATH_CASES + CAPTION_ONLY_PATH_CASES),
)
def test_caption_path_is_confined_to_the_image_root(
    app: RunningApp,
    hostile_tree: HostileTree,
    case: str,
    path: str,
    status: int,
    code: str,
    fragment: str,
) -> None:
    with client(app) as http:
        response = http.post("/caption", json={"image_path": filled(path, app, hostile_tree)})
    check(response, status, code, fragment)


@pytest.mark.parametrize(
    ("case", "path", "status", "code", "fragment"),
    PATH_CASES + BATCH_ONLY_PATH_CASES,
    ids=case_ids(PATH_CASES + BATCH_ONLY_PATH_CASES),
)
def test_batch_caption_item_is_confined_to_the_image_root(
    app: RunningApp,
    hostile_tree: HostileTree,
    case: str,
    path: str,
    status: int,
    code: str,
    fragment: str,
) -> None:
    with client(app) as http:
        response = http.post(
            "/batch-caption", json={"image_paths": [filled(path, app, hostile_tree)]}
        )
    check_item(response, status, code, fragment)
