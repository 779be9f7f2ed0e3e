"""Security, section 9: CORS closed by default on the shared app, and opened for exactly the
configured origin by a second, small app."""

from __future__ import annotations

import httpx
import pytest

from tests.support.common import RunningApp
from tests.support.security import ALLOWED_ORIGIN, BackgroundApp, case_ids, check, client, tally

pytestmark = pytest.mark.integration

EVIL_ORIGIN = "https://evil.example"


def cors_headers(response: httpx.Response) -> dict[str, str]:
    """The answer's ``Access-Control-*`` headers."""
    return {
        name: value
        for name, value in response.headers.items()
        if name.lower().startswith("access-control-")
    }


def preflight(url: str, route: str, origin: str, method: str = "POST") -> httpx.Response:
    """A browser's CORS preflight for ``method`` on ``route`` from ``origin``."""
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "content-type, x-api-key",
    }
    return httpx.request("OPTIONS", url + route, headers=headers, timeout=30)


@pytest.mark.parametrize(
    "route", ["/caption", "/upload", "/encode_image", "/api/admin/reset-cache", "/generate"]
)
@pytest.mark.parametrize("origin", [EVIL_ORIGIN, ALLOWED_ORIGIN])
def test_cors_preflight_is_refused_by_default(app: RunningApp, route: str, origin: str) -> None:
    response = preflight(app.url, route, origin)
    check(response, 405, "method_not_allowed")
    assert cors_headers(response) == {}, response.headers


#: (id, method, route, request keywords, status, code): simple cross-origin requests.
SIMPLE_CORS_CASES = [
    ("health", "GET", "/", {}, 200, None),
    ("caption", "POST", "/caption", {"json": {"image_path": "red.jpg"}}, 200, None),
    (
        "caption-missing",
        "POST",
        "/caption",
        {"json": {"image_path": "no.jpg"}},
        404,
        "image_not_found",
    ),
    ("admin-no-key", "POST", "/api/admin/reset-cache", {}, 401, "missing_api_key"),
]


@pytest.mark.parametrize(
    ("case", "method", "route", "keywords", "status", "code"),
    SIMPLE_CORS_CASES,
    ids=case_ids(SIMPLE_CORS_CASES),
)
def test_cross_origin_requests_get_no_cors_headers_by_default(
    app: RunningApp, case: str, method: str, route: str, keywords: dict, status: int, code: str
) -> None:
    with client(app) as http:
        response = http.request(method, route, headers={"Origin": EVIL_ORIGIN}, **keywords)
    check(response, status, code)
    assert cors_headers(response) == {}, response.headers


def test_cors_preflight_from_the_allowed_origin_is_answered(strict_app: BackgroundApp) -> None:
    response = preflight(strict_app.url(), "/caption", ALLOWED_ORIGIN)
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "X-API-Key" in response.headers["access-control-allow-headers"]
    assert "Authorization" in response.headers["access-control-allow-headers"]
    assert "Origin" in response.headers["vary"]
    assert response.headers["x-content-type-options"] == "nosniff"
    tally(200, None)


#: (id, origin, method, requested headers, what the refusal names)
REFUSED_PREFLIGHTS = [
    ("other-origin", EVIL_ORIGIN, "POST", "content-type", "origin"),
    ("other-scheme", "http://app.example", "POST", "content-type", "origin"),
    ("suffix-domain", "https://app.example.evil.example", "POST", "content-type", "origin"),
    ("prefix-domain", "https://evil-app.example", "POST", "content-type", "origin"),
    ("other-port", "https://app.example:8443", "POST", "content-type", "origin"),
    ("null-origin", "null", "POST", "content-type", "origin"),
    ("allowed-origin-put", ALLOWED_ORIGIN, "PUT", "content-type", "method"),
    ("allowed-origin-delete", ALLOWED_ORIGIN, "DELETE", "content-type", "method"),
    ("allowed-origin-odd-header", ALLOWED_ORIGIN, "POST", "x-evil", "headers"),
]


@pytest.mark.parametrize(
    ("case", "origin", "method", "requested", "refused"),
    REFUSED_PREFLIGHTS,
    ids=case_ids(REFUSED_PREFLIGHTS),
)
def test_cors_preflight_outside_the_configuration_gets_nothing(
    strict_app: BackgroundApp, case: str, origin: str, method: str, requested: str, refused: str
) -> None:
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": requested,
    }
    response = httpx.request("OPTIONS", strict_app.url() + "/caption", headers=headers, timeout=30)
    check(response, 400, "cors_not_allowed", f"Disallowed CORS {refused}")
    assert cors_headers(response) == {}, response.headers


@pytest.mark.parametrize(
    ("case", "method", "route", "keywords", "status", "code"),
    SIMPLE_CORS_CASES,
    ids=case_ids(SIMPLE_CORS_CASES),
)
@pytest.mark.parametrize("origin", [ALLOWED_ORIGIN, EVIL_ORIGIN])
def test_cors_simple_requests_open_only_to_the_allowed_origin(
    strict_app: BackgroundApp,
    origin: str,
    case: str,
    method: str,
    route: str,
    keywords: dict,
    status: int,
    code: str,
) -> None:
    url = strict_app.url()
    response = httpx.request(
        method, url + route, headers={"Origin": origin}, timeout=30, **keywords
    )
    check(response, status, code)
    if origin == ALLOWED_ORIGIN:
        assert cors_headers(response) == {
            "access-control-allow-origin": ALLOWED_ORIGIN,
            "access-control-expose-headers": "X-Request-ID, Retry-After, RateLimit-Limit, "
            "RateLimit-Remaining, RateLimit-Reset",
        }, response.headers
    else:
        assert cors_headers(response) == {}, response.headers
