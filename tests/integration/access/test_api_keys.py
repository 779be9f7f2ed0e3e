"""API keys and rate limits through a real ``serve.run``: two ingress replicas sharing their
budgets through a real redis-server, every route of the OpenAPI description checked, the
official ``openai`` client with and without a key, streams holding a slot until they end,
Redis stopped and killed under load. (Rotation without a restart needs ``serve deploy``:
tests/cluster/test_cluster_cli.py.)"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import httpx
import openai
import pytest

from tests.support.access import ADMIN_KEY, KEYS, STREAM_SIDE, KeyedApp
from tests.support.common import RedisServer
from tests.support.metrics import series_value
from vlgraph.access_config import hash_key

pytestmark = pytest.mark.integration

#: Answered without a key.
OPEN_ROUTES = {("GET", "/"), ("GET", "/healthz"), ("GET", "/metrics"), ("GET", "/openapi.json")}
OPEN_ROUTES |= {("GET", "/docs"), ("GET", "/static/app.js")}


@pytest.fixture
def keyed(keyed_app: KeyedApp) -> KeyedApp:
    """The session's keyed app."""
    return keyed_app


def error_of(response: httpx.Response) -> dict[str, Any]:
    return response.json()["error"]


# ---------- keys ----------


@pytest.mark.parametrize("header", ["bearer", "x-api-key"])
def test_a_valid_key_in_either_header_is_served(keyed: KeyedApp, header: str) -> None:
    answer = keyed.get("/api/models", KEYS["alice"], header)
    assert answer.status_code == 200, answer.text
    assert "blip" in [model["name"] for model in answer.json()["models"]]
    assert answer.headers["RateLimit-Limit"] == "1000"


@pytest.mark.parametrize(
    ("headers", "code", "says"),
    [
        ({}, "missing_key", "needs an API key"),
        ({"Authorization": "Bearer"}, "malformed_key", "must be 'Bearer KEY'"),
        ({"Authorization": f"Basic {KEYS['alice']}"}, "malformed_key", "must be 'Bearer KEY'"),
        ({"X-API-Key": ""}, "malformed_key", "X-API-Key header is empty"),
        ({"Authorization": "Bearer wrong-key-000000000000000"}, "invalid_key", "not valid"),
        ({"X-API-Key": KEYS["revoked"]}, "invalid_key", "revoked or rotated"),
        ({"X-API-Key": KEYS["alice"][:-1]}, "invalid_key", "not valid"),
        ({"X-API-Key": ADMIN_KEY}, "admin_key", "not valid"),
        (
            {"X-API-Key": KEYS["alice"], "Authorization": f"Bearer {KEYS['alice']}"},
            "malformed_key",
            "one API key in one header",
        ),
    ],
)
def test_refused_keys_get_a_401_that_says_which_header_to_send(
    keyed: KeyedApp, headers: dict[str, str], code: str, says: str
) -> None:
    for path in ("/api/models", "/v1/models"):
        answer = httpx.get(keyed.url + path, headers=headers, timeout=30)
        assert answer.status_code == 401, answer.text
        assert answer.headers["WWW-Authenticate"] == 'Bearer realm="vlgraph"'
        error = error_of(answer)
        assert error["code"] == code and says in error["message"]
        assert "Authorization: Bearer KEY" in error["message"] or code == "malformed_key"
        assert "X-API-Key" in error["message"]
        if path.startswith("/v1"):
            assert error["type"] == "authentication_error"
        for key in (*KEYS.values(), ADMIN_KEY):
            assert key not in answer.text  # never echoed


@pytest.mark.parametrize("name", ["api_key", "key", "access_token", "API_KEY", "token"])
def test_a_key_in_the_query_string_is_refused_even_with_a_good_header(
    keyed: KeyedApp, name: str
) -> None:
    answer = keyed.get("/v1/models", KEYS["alice"], params={name: KEYS["alice"]})
    assert answer.status_code == 400, answer.text
    assert error_of(answer)["code"] == "key_in_query"
    assert "not accepted in the URL" in error_of(answer)["message"]
    assert KEYS["alice"] not in answer.text


def test_every_route_of_the_description_is_protected_unless_listed(
    keyed: KeyedApp, app: Any
) -> None:
    """Every operation of the full application's description, against the keyed app: the
    open list answers without a key, the admin routes answer to the admin key alone, every
    other route is a 401 before any work."""
    described = httpx.get(app.url + "/openapi.json", timeout=30).json()["paths"]
    operations = {
        (method.upper(), path) for path, methods in described.items() for method in methods
    }
    assert len(operations) >= 29
    for method, path in sorted(operations | OPEN_ROUTES):
        concrete = path.replace("{image_id}", "0" * 32).replace("{model_id}", "blip")
        concrete = concrete.replace("{path}", "red.jpg")
        answer = httpx.request(method, keyed.url + concrete, timeout=30)
        if (method, path) in OPEN_ROUTES:
            assert answer.status_code != 401, (method, path)
        elif path.startswith("/api/admin/"):
            assert answer.status_code in (401, 403), (method, path)
            keyed_admin = httpx.request(
                method,
                keyed.url + concrete,
                headers={"X-API-Key": KEYS["alice"]},
                timeout=30,
            )
            assert keyed_admin.status_code == 403, "an API key never opens admin routes"
        else:
            assert answer.status_code == 401, (method, path, answer.status_code)
            assert error_of(answer)["code"] == "missing_key"
    reset = httpx.post(
        keyed.url + "/api/admin/reset-cache", headers={"X-API-Key": ADMIN_KEY}, timeout=30
    )
    assert reset.status_code == 200, reset.text


def test_the_openai_client_works_with_a_key_and_raises_without(keyed: KeyedApp) -> None:
    base_url = keyed.url + "/v1"
    client = openai.OpenAI(base_url=base_url, api_key=KEYS["alice"], max_retries=0)
    assert "clip_text" in [model.id for model in client.models.list()]
    vector = client.embeddings.create(model="clip_text", input="a red circle").data[0]
    assert len(vector.embedding) == 512
    for wrong in ("not-a-key", KEYS["revoked"], ADMIN_KEY):
        stranger = openai.OpenAI(base_url=base_url, api_key=wrong, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as refused:
            stranger.models.list()
        assert refused.value.code in ("invalid_key", "admin_key")


# ---------- limits ----------


def test_one_key_past_its_rate_gets_429_while_another_is_served(keyed: KeyedApp) -> None:
    answers = [keyed.get("/v1/models", KEYS["tight"]) for _ in range(5)]
    statuses = [answer.status_code for answer in answers]
    assert statuses[:3] == [200, 200, 200] and statuses[3:] == [429, 429], statuses
    refused = answers[3]
    error = error_of(refused)
    assert error["code"] == "rate_limited" and error["type"] == "rate_limit_error"
    assert "3 requests per minute" in error["message"]
    assert refused.headers["RateLimit-Limit"] == "3"
    assert refused.headers["RateLimit-Remaining"] == "0"
    reset = int(refused.headers["RateLimit-Reset"])
    assert 1 <= reset <= 60 and int(refused.headers["Retry-After"]) == reset
    # The documents' routes answer in their own shape.
    documents = keyed.get("/api/models", KEYS["tight"])
    assert documents.status_code == 429 and documents.json()["error"]["code"] == "rate_limited"
    assert keyed.get("/v1/models", KEYS["alice"]).status_code == 200


def test_two_ingress_replicas_share_a_keys_budget_through_redis(keyed: KeyedApp) -> None:
    """8 requests a minute for the key, whichever replica answers: 20 requests on fresh
    connections get exactly 8 answers, and both replicas answered some."""
    url = keyed.url
    statuses = [keyed.get("/v1/models", KEYS["shared"]).status_code for _ in range(20)]
    assert statuses.count(200) == 8 and statuses.count(429) == 12, statuses
    deadline = time.monotonic() + 30  # Ray exports metrics every few seconds
    while True:
        text = httpx.get(url + "/metrics", timeout=30).text
        replicas = {
            line.split('replica="')[1].split('"')[0]
            for line in text.splitlines()
            if line.startswith("ray_vlgraph_requests_total")
            and 'key="shared"' in line
            and 'replica="' in line
        }
        if len(replicas) == 2 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(replicas) == 2, f"one replica answered everything: {replicas}"


def generation_stream(url: str, key: str, seed: int) -> Any:
    # The largest, longest generation the tiny model allows: seconds of streaming.
    body = {
        "description": "a red circle",
        "num_inference_steps": 50,
        "height": STREAM_SIDE,
        "width": STREAM_SIDE,
        "seed": seed,  # a new seed each time: a repeat would come from the result cache
    }
    client = httpx.Client(timeout=120, headers={"Authorization": f"Bearer {key}"})
    return client, client.stream("POST", url + "/generate/stream", json=body)


def wait_admitted(keyed: KeyedApp, key: str, timeout_s: float = 10) -> float:
    """Seconds until ``key`` is admitted again (a protected route with no work behind it)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        answer = keyed.get("/v1/models", key)
        if answer.status_code == 200:
            return time.monotonic() - started
        assert error_of(answer)["code"] == "too_many_in_flight"
        time.sleep(0.1)
    raise AssertionError(f"{key} still refused after {timeout_s} s")


def test_a_stream_holds_its_slot_until_it_ends_or_its_client_leaves(keyed: KeyedApp) -> None:
    url, key = keyed.url, KEYS["streamer"]
    client, stream = generation_stream(url, key, random.randrange(2**31))
    with client, stream as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("event:"))
        busy = keyed.get("/v1/models", key)
        assert busy.status_code == 429 and error_of(busy)["code"] == "too_many_in_flight"
        assert busy.headers["Retry-After"] == "1"
        assert "1 request at once" in error_of(busy)["message"]
        assert any(line == "event: image" for line in lines)  # read to its end
    assert wait_admitted(keyed, key) < 2
    # A client that leaves mid-stream gives its slot back.
    client, stream = generation_stream(url, key, random.randrange(2**31))
    with client, stream as response:
        lines = response.iter_lines()
        first = [next(lines), next(lines)]
        busy = keyed.get("/v1/models", key)
        assert busy.status_code == 429, (response.status_code, first, busy.headers)
    assert wait_admitted(keyed, key) < 5


def test_redis_stopped_and_killed_under_load_fails_no_request(
    keyed: KeyedApp, redis_server: RedisServer
) -> None:
    url, key = keyed.url, KEYS["load"]
    metric = "ray_vlgraph_rate_limit_fail_open_total"
    fail_open_before = series_value(httpx.get(url + "/metrics", timeout=30).text, metric)
    statuses: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(timeout=30, headers={"X-API-Key": key}) as client:
            while not stop.is_set():
                statuses.append(client.get(url + "/v1/models").status_code)

    workers = [threading.Thread(target=hammer) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(1)
        redis_server.pause()  # hung: connections accepted, nothing answered
        time.sleep(2)
        redis_server.resume()
        time.sleep(1)
        redis_server.kill()  # gone
        time.sleep(2)
        redis_server.start()
        time.sleep(1)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
        if not _answers(redis_server):  # the session's server stays up for other tests
            redis_server.start()
    assert len(statuses) > 40
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    deadline = time.monotonic() + 30
    while True:
        text = httpx.get(url + "/metrics", timeout=30).text
        if series_value(text, metric) > fail_open_before:
            break
        assert time.monotonic() < deadline, "the fail-open counter did not move"
        time.sleep(1)
    # Back with Redis: limits apply again.
    deadline = time.monotonic() + 15
    while keyed.get("/v1/models", KEYS["recovered"]).status_code != 429:
        assert time.monotonic() < deadline, "limits did not come back with Redis"


def _answers(server: RedisServer) -> bool:
    import redis

    try:
        return bool(redis.Redis(port=server.port, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


# ---------- metrics and logs ----------


def test_metrics_count_requests_refusals_and_tokens_by_key_name(keyed: KeyedApp) -> None:
    url = keyed.url
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEYS["alice"], max_retries=0)
    tokens = client.embeddings.create(model="clip_text", input="a blue star").usage.prompt_tokens
    httpx.get(url + "/v1/models", timeout=30)  # no key
    expected = {
        ("ray_vlgraph_requests_total", (("key", "alice"), ("route", "/v1/embeddings"))): 1,
        ("ray_vlgraph_access_refusals_total", (("reason", "missing_key"),)): 1,
        (
            "ray_vlgraph_tokens_total",
            (("key", "alice"), ("model", "clip_text"), ("kind", "prompt")),
        ): tokens,
    }
    deadline = time.monotonic() + 30
    while True:
        text = httpx.get(url + "/metrics", timeout=30).text
        found = {series: series_value(text, series[0], **dict(series[1])) for series in expected}
        if all(found[series] >= value for series, value in expected.items()):
            break
        assert time.monotonic() < deadline, found
        time.sleep(1)
    for key in KEYS.values():
        assert key not in text and hash_key(key) not in text


def test_images_served_are_counted_by_key_name(keyed: KeyedApp) -> None:
    url = keyed.url
    series = ("ray_vlgraph_images_served_total", {"key": "alice", "model": "sd"})
    before = series_value(httpx.get(url + "/metrics", timeout=30).text, series[0], **series[1])
    answer = httpx.post(
        url + "/generate",
        json={"description": "a red circle", "num_inference_steps": 2, "seed": 3},
        headers={"X-API-Key": KEYS["alice"]},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    deadline = time.monotonic() + 30
    while series_value(httpx.get(url + "/metrics").text, series[0], **series[1]) < before + 1:
        assert time.monotonic() < deadline
        time.sleep(1)


def test_no_log_line_holds_a_key(keyed: KeyedApp) -> None:
    for key in (KEYS["revoked"], KEYS["alice"], ADMIN_KEY):
        keyed.get("/v1/models", key)
        keyed.get("/v1/models", key, params={"api_key": key})
    time.sleep(2)  # the replicas flush their log files
    logs = list(keyed.logs.rglob("*.log"))
    assert logs
    written = "\n".join(path.read_text(errors="replace") for path in logs)
    assert "access refused" in written and "invalid_key" in written
    for key in (*KEYS.values(), ADMIN_KEY):
        assert key not in written


def test_the_description_declares_the_key_where_it_is_needed(keyed: KeyedApp, app) -> None:
    described = httpx.get(keyed.url + "/openapi.json", timeout=30).json()
    schemes = described["components"]["securitySchemes"]
    assert (
        schemes["bearerKey"]["scheme"] == "bearer" and schemes["headerKey"]["name"] == "X-API-Key"
    )
    for path, method in (("/v1/models", "get"), ("/api/caption-images", "post")):
        operation = described["paths"][path][method]
        assert operation["security"] == [{"bearerKey": []}, {"headerKey": []}]
        assert {"401", "429"} <= set(operation["responses"])
    for path in ("/healthz", "/metrics", "/api/admin/reset-cache"):  # open, or the admin key
        for operation in described["paths"][path].values():
            assert {"bearerKey": []} not in operation.get("security", []), path
    # The open app asks for nothing.
    open_schemes = httpx.get(app.url + "/openapi.json").json()["components"]["securitySchemes"]
    assert set(open_schemes).isdisjoint(schemes)  # only the admin key's
