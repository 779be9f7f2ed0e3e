"""Security, section 8: the admin route needs the exact key, in the header only."""

from __future__ import annotations

import pytest

from tests.support.common import TEST_ADMIN_KEY, RunningApp
from tests.support.security import case_ids, check, client

pytestmark = pytest.mark.integration

#: (id, headers, status, code, fragment)
ADMIN_CASES = [
    ("no-key", {}, 401, "missing_api_key", "X-API-Key"),
    ("empty-key", {"X-API-Key": ""}, 401, "missing_api_key", "X-API-Key"),
    ("wrong-key", {"X-API-Key": "not-the-key"}, 403, "invalid_api_key", "does not match"),
    ("upper-case", {"X-API-Key": TEST_ADMIN_KEY.upper()}, 403, "invalid_api_key", ""),
    ("title-case", {"X-API-Key": TEST_ADMIN_KEY.title()}, 403, "invalid_api_key", ""),
    ("one-short", {"X-API-Key": TEST_ADMIN_KEY[:-1]}, 403, "invalid_api_key", ""),
    ("one-long", {"X-API-Key": TEST_ADMIN_KEY + "y"}, 403, "invalid_api_key", ""),
    ("doubled", {"X-API-Key": TEST_ADMIN_KEY * 2}, 403, "invalid_api_key", ""),
    ("inner-space", {"X-API-Key": TEST_ADMIN_KEY.replace("-", " ")}, 403, "invalid_api_key", ""),
    (
        "latin-1",
        {"X-API-Key": TEST_ADMIN_KEY.replace("a", "\xe4").encode("latin-1")},
        403,
        "invalid_api_key",
        "",
    ),
    ("bearer-instead", {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}, 401, "missing_api_key", ""),
    ("other-header", {"X-Api-Token": TEST_ADMIN_KEY}, 401, "missing_api_key", ""),
    # controls: the right key (header names are case-insensitive) is accepted
    ("right-key", {"X-API-Key": TEST_ADMIN_KEY}, 200, None, ""),
    ("right-key-lower-name", {"x-api-key": TEST_ADMIN_KEY}, 200, None, ""),
]


@pytest.mark.parametrize(
    ("case", "headers", "status", "code", "fragment"), ADMIN_CASES, ids=case_ids(ADMIN_CASES)
)
def test_admin_route_needs_the_exact_key(
    app: RunningApp, case: str, headers: dict, status: int, code: str | None, fragment: str
) -> None:
    with client(app) as http:
        response = http.post("/api/admin/reset-cache", headers=headers)
    body = check(response, status, code, fragment)
    if code is None:
        assert body == {"removed": 0, "backend": "none", "scope": "service"}, body


def test_admin_key_in_the_query_string_is_refused(app: RunningApp) -> None:
    """Not read, and refused outright: a key in a URL ends up in logs (docs/access.md)."""
    with client(app) as http:
        response = http.post("/api/admin/reset-cache", params={"api_key": TEST_ADMIN_KEY})
    check(response, 400, "key_in_query", "not accepted in the URL")
    assert TEST_ADMIN_KEY not in response.text
