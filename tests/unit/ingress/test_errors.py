"""The error mapper on a plain FastAPI app: shapes, statuses, and no internals in 500s."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from ray.serve.exceptions import BackPressureError

from deployments.ingress.errors import install_error_handlers
from vlgraph.errors import NotFoundError, UnsupportedMediaTypeError


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/missing")
    async def missing():
        raise NotFoundError("no file at image_path 'x.jpg'", code="image_not_found")

    @app.get("/wrong-type")
    async def wrong_type():
        raise UnsupportedMediaTypeError("expected JPEG")

    @app.get("/crash")
    async def crash():
        raise RuntimeError("password=hunter2 at /srv/secret/path.py line 3")

    @app.get("/overload")
    async def overload():
        raise BackPressureError(num_queued_requests=10, max_queued_requests=10)

    @app.get("/number/{value}")
    async def number(value: int):
        return {"value": value}

    return TestClient(app, raise_server_exceptions=False)


def test_service_errors_keep_status_code_and_message(client: TestClient) -> None:
    response = client.get("/missing", headers={"x-request-id": "rid-1"})
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "code": "image_not_found",
            "message": "no file at image_path 'x.jpg'",
            "request_id": "rid-1",
        },
        "detail": "no file at image_path 'x.jpg'",
    }
    assert client.get("/wrong-type").status_code == 415


def test_unexpected_errors_are_500_without_internals(client: TestClient) -> None:
    response = client.get("/crash", headers={"x-request-id": "rid-2"})
    assert response.status_code == 500
    assert "hunter2" not in response.text and "secret" not in response.text
    assert response.json()["error"] == {
        "code": "internal_error",
        "message": "internal error; quote the request id when reporting it",
        "request_id": "rid-2",
    }


def test_backpressure_is_503_with_retry_after(client: TestClient) -> None:
    response = client.get("/overload")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "overloaded"


def test_validation_errors_name_the_field(client: TestClient) -> None:
    response = client.get("/number/abc")
    assert response.status_code == 422
    body = response.json()
    assert body["error"]["code"] == "invalid_request"
    assert "value" in body["error"]["message"]
    assert body["detail"][0]["loc"] == ["path", "value"]


def test_request_id_is_generated_when_absent(client: TestClient) -> None:
    assert len(client.get("/missing").json()["error"]["request_id"]) == 32
