"""The access control as ASGI middleware around a small Starlette app (no Ray): open paths,
anonymous callers limited by address when access is open, the slot of a request held until
its answer ends, and the caller's name seen by the route."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from deployments.ingress.access import AccessControl, needs_key
from deployments.ingress.callers import CALLER, AccessGate
from deployments.ingress.rate_limits import CallerBudgets
from vlgraph.access_config import AccessRules, ApiKey, RateLimit, hash_key

KEY = "vlg-unit-test-key-0123456789"


def served(rules: AccessRules) -> tuple[Starlette, asyncio.Event]:
    release = asyncio.Event()

    async def who(request):
        return JSONResponse({"caller": CALLER.get()})

    async def slow(request):
        async def body():
            yield b"first\n"
            await release.wait()
            yield b"last\n"

        return StreamingResponse(body())

    app = Starlette(routes=[Route("/who", who), Route("/healthz", who), Route("/slow", slow)])
    gate = AccessGate(rules, CallerBudgets(None, lease_s=60))
    return AccessControl(app, gate), release


def client(app, address: str = "10.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def test_open_paths_and_admin_routes_need_no_api_key() -> None:
    for path in ("/", "/healthz", "/metrics", "/openapi.json", "/docs", "/static/app.js"):
        assert not needs_key(path), path
    assert not needs_key("/api/admin/reset-cache")
    for path in ("/api/models", "/v1/models", "/upload", "/static", "/healthz/x", "/nowhere"):
        assert needs_key(path), path


def test_open_access_limits_each_client_address() -> None:
    async def scenario() -> None:
        app, _ = served(AccessRules(mode="open", anonymous=RateLimit(requests_per_minute=2)))
        async with client(app, "10.0.0.1") as one, client(app, "10.0.0.2") as two:
            answers = [await one.get("/who") for _ in range(3)]
            assert [a.status_code for a in answers] == [200, 200, 429]
            assert answers[0].json() == {"caller": "anonymous"}
            assert "this address may make 2 requests per minute" in answers[2].text
            assert (await two.get("/who")).status_code == 200
            assert (await one.get("/healthz")).status_code == 200  # open paths are not counted

    asyncio.run(scenario())


def test_open_access_without_an_anonymous_limit_is_unlimited() -> None:
    async def scenario() -> None:
        app, _ = served(AccessRules(mode="open"))
        async with client(app) as http:
            answers = await asyncio.gather(*(http.get("/who") for _ in range(50)))
            assert {a.status_code for a in answers} == {200}
            assert "ratelimit-limit" not in answers[0].headers

    asyncio.run(scenario())


def test_a_slot_is_held_until_the_streamed_answer_ends() -> None:
    async def scenario() -> None:
        rules = AccessRules(
            mode="keys",
            keys=(ApiKey(name="unit", sha256=hash_key(KEY)),),
            limits={"default": RateLimit(max_in_flight=1)},
        )
        app, release = served(rules)
        headers = {"Authorization": f"Bearer {KEY}"}
        # The stream is driven as raw ASGI (httpx's ASGI transport waits for whole bodies).
        sent: list[dict] = []
        first_chunk = asyncio.Event()

        async def receive() -> dict:
            await asyncio.Event().wait()  # the client never leaves
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and message.get("body"):
                first_chunk.set()

        scope = {
            "type": "http",
            "method": "GET",
            "path": "/slow",
            "raw_path": b"/slow",
            "root_path": "",
            "scheme": "http",
            "query_string": b"",
            "headers": [(b"authorization", f"Bearer {KEY}".encode())],
            "client": ("10.0.0.1", 1),
            "server": ("test", 80),
            "http_version": "1.1",
        }
        streaming = asyncio.create_task(app(scope, receive, send))
        await first_chunk.wait()
        async with client(app) as http:
            busy = await http.get("/who", headers=headers)
            assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
            release.set()
            await streaming
            assert b"".join(m.get("body", b"") for m in sent[1:]) == b"first\nlast\n"
            answer = await http.get("/who", headers=headers)
            assert answer.status_code == 200 and answer.json() == {"caller": "unit"}

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_cors_preflights_pass_without_a_key() -> None:
    async def scenario() -> None:
        app, _ = served(AccessRules(mode="keys", keys=(ApiKey(name="u", sha256=hash_key(KEY)),)))
        async with client(app) as http:
            preflight = await http.options(
                "/who",
                headers={"Origin": "https://a.example", "Access-Control-Request-Method": "GET"},
            )
            assert preflight.status_code != 401  # the CORS layer outside answers it
            plain = await http.options("/who")
            assert plain.status_code == 401

    asyncio.run(scenario())
