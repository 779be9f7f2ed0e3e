"""Security, section 10: API keys. Missing, malformed and wrong keys on protected routes of
both API shapes, keys in the URL, near misses of a real key drawn from a fresh seed (printed;
``$VLGRAPH_FUZZ_SEED`` replays one), the admin key as an API key: each a 401 (or 400) with the
standard body and never work done; the right key, the control, is served."""

from __future__ import annotations

import random
import string

import pytest

from tests.support.access import ADMIN_KEY, KEYS, KeyedApp
from tests.support.security import check, tally
from tests.support.seeds import fresh_seed

pytestmark = pytest.mark.integration

KEY = KEYS["fuzz"]
#: Protected routes of both shapes, each with a request that would succeed with a key.
ROUTES = [
    ("GET", "/api/models", {}),
    ("GET", "/v1/models", {}),
    ("POST", "/encode_text", {"json": {"text": "a red circle"}}),
    ("POST", "/v1/embeddings", {"json": {"model": "clip_text", "input": "a red circle"}}),
]
#: (id, headers, code, fragment of the message)
FIXED_CASES = [
    ("no-header", {}, "missing_key", "needs an API key"),
    ("empty-x-api-key", {"X-API-Key": ""}, "malformed_key", "empty"),
    ("bearer-without-key", {"Authorization": "Bearer"}, "malformed_key", "Bearer KEY"),
    ("basic-scheme", {"Authorization": f"Basic {KEY}"}, "malformed_key", "Bearer KEY"),
    ("token-scheme", {"Authorization": f"Token {KEY}"}, "malformed_key", "Bearer KEY"),
    ("key-as-scheme", {"Authorization": KEY}, "malformed_key", "Bearer KEY"),
    ("two-headers", {"Authorization": f"Bearer {KEY}", "X-API-Key": KEY}, "malformed_key", "one"),
    ("key-and-more", {"Authorization": f"Bearer {KEY} {KEY}"}, "invalid_key", "not valid"),
    ("revoked", {"X-API-Key": KEYS["revoked"]}, "invalid_key", "revoked or rotated"),
    ("admin-key", {"X-API-Key": ADMIN_KEY}, "admin_key", "not valid"),
    ("admin-key-bearer", {"Authorization": f"Bearer {ADMIN_KEY}"}, "admin_key", "not valid"),
    ("other-header", {"X-Api-Token": KEY}, "missing_key", "X-API-Key"),
    ("cookie", {"Cookie": f"api_key={KEY}"}, "missing_key", "X-API-Key"),
]
QUERY_NAMES = ["api_key", "apikey", "api-key", "key", "token", "access_token", "API_KEY", "auth"]


def near_misses(rng: random.Random, count: int) -> list[tuple[str, str]]:
    """Values close to the real key (one character changed, cut, added, case flipped) and
    random strings, each with how it was made."""
    alphabet = string.ascii_letters + string.digits + "-_.~+/="
    made: list[tuple[str, str]] = []
    while len(made) < count:
        position = rng.randrange(len(KEY))
        kind = rng.choice(["flip", "cut", "add", "case", "random", "prefix"])
        if kind == "flip":
            value = (
                KEY[:position]
                + rng.choice(alphabet.replace(KEY[position], ""))
                + KEY[position + 1 :]
            )
        elif kind == "cut":
            value = KEY[:position] or "x"
        elif kind == "add":
            value = KEY[:position] + rng.choice(alphabet) + KEY[position:]
        elif kind == "case":
            value = KEY.swapcase()
        elif kind == "prefix":
            value = KEY[: rng.randrange(1, len(KEY))] + "".join(
                rng.choice(alphabet) for _ in range(rng.randrange(1, 40))
            )
        else:
            value = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 2048)))
        if value.strip() != KEY:
            made.append((kind, value))
    return made


@pytest.mark.parametrize(("method", "path", "request_body"), ROUTES, ids=[r[1] for r in ROUTES])
def test_fixed_key_cases_are_refused_before_any_work(
    keyed_app: KeyedApp, method: str, path: str, request_body: dict
) -> None:
    import httpx

    with httpx.Client(base_url=keyed_app.url, timeout=30) as http:
        for case, headers, code, fragment in FIXED_CASES:
            answer = http.request(method, path, headers=headers, **request_body)
            check(answer, 401, code, fragment)
            assert answer.headers["www-authenticate"].startswith("Bearer"), case
        for name in QUERY_NAMES:
            answer = http.request(
                method, path, params={name: KEY}, headers={"X-API-Key": KEY}, **request_body
            )
            check(answer, 400, "key_in_query", "not accepted in the URL")
        served = http.request(method, path, headers={"X-API-Key": KEY}, **request_body)
        check(served, 200, None)
        served = http.request(
            method, path, headers={"Authorization": f"bearer {KEY}"}, **request_body
        )
        check(served, 200, None)


def test_near_misses_of_a_real_key_are_refused(keyed_app: KeyedApp) -> None:
    import httpx

    seed = fresh_seed()
    print(f"API key near misses: seed {seed} (replay with VLGRAPH_FUZZ_SEED={seed})")
    rng = random.Random(seed)
    with httpx.Client(base_url=keyed_app.url, timeout=30) as http:
        for kind, value in near_misses(rng, 120):
            header = rng.choice(["bearer", "x-api-key"])
            headers = (
                {"Authorization": f"Bearer {value}"} if header == "bearer" else {"X-API-Key": value}
            )
            path = rng.choice(["/api/models", "/v1/models"])
            answer = http.get(path, headers=headers)
            assert answer.status_code == 401, (seed, kind, value, answer.text)
            check(answer, 401, "invalid_key", "not valid", count=False)
            if len(value) >= 12:  # never echoed (shorter strings occur in any message)
                assert value not in answer.text, (seed, kind)
            tally(401, "invalid_key")
